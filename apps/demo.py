"""`phi4mm-edge demo`: the whole pipeline on the bundled reference model, in seconds.

The CLI makes the tiny random-weight checkpoint and exports it at int4 (once, cached); this
answers one prompt with no adapter, the vision adapter and the speech adapter.
"""

from ..artifact import ADAPTERS, NO_ADAPTER
from ..runtime import Phi4MMEdge
from .startup import RANDOM_WEIGHTS_NOTE, generation_options


def add_arguments(parser) -> None:
    parser.add_argument("--cache-dir",
                        help="where the reference checkpoint and artifact go (default ~/.cache/phi4mm-edge)")
    parser.add_argument("--prompt", default="Describe what an on-device assistant can do.")
    parser.add_argument("--max-new-tokens", type=int, default=24)


def main(args) -> None:
    model = Phi4MMEdge.load(args.artifact)
    print(f"\nloaded {args.artifact} in {model.load_ms:.0f} ms")
    print(RANDOM_WEIGHTS_NOTE + "\n")
    print(f"prompt: {args.prompt}\n")
    options = generation_options(args)
    for adapter in (NO_ADAPTER, *ADAPTERS):
        generation = model.generate(args.prompt, options=options.but(adapter=adapter))
        print(f"[adapter: {adapter}] ", end="", flush=True)
        for piece in generation:
            print(piece, end="", flush=True)
        timings = generation.result.timings
        print(f"\n    ttft {timings.ttft_ms:.1f} ms, decode {timings.decode_tokens_per_s} tokens/s, "
              f"{len(generation.result.token_ids)} tokens\n")
