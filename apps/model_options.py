"""What every app (chat, transcribe, camera) takes: an optional artifact folder, the bundled
reference model when it is left out, and the load and sampling options.

The CLI imports this module to build its parser, so the runtime is imported only on load."""

import contextlib
import sys
from pathlib import Path

from ..errors import Phi4MMError


def add_model_options(parser, max_new_tokens: int = 256) -> None:
    """ARTIFACT (optional) and --cache-dir, --threads, --context, --max-new-tokens, --temperature."""
    parser.add_argument("artifact", nargs="?",
                        help="an exported artifact folder; default: the bundled reference model (random weights)")
    parser.add_argument("--cache-dir", help="where the reference model is made once (default ~/.cache/phi4mm-edge)")
    parser.add_argument("--threads", type=int, help="intra-op threads; default one per physical core")
    parser.add_argument("--context", type=int, help="tokens of KV cache (prompt + answer); default 4096")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")


def load_model(args, status=None) -> "Phi4MMEdge":  # noqa: F821
    """Load args.artifact, or make (once) and load the reference model; say which, and how long it
    took, on `status` (default stdout)."""
    from ..runtime import Phi4MMEdge
    from .demo import RANDOM_WEIGHTS_NOTE, default_cache_dir, prepare_reference_artifact

    artifact = args.artifact
    if artifact is None:
        try:
            with contextlib.redirect_stdout(status or sys.stdout):
                artifact = prepare_reference_artifact(Path(args.cache_dir) if args.cache_dir else default_cache_dir())
        except ImportError as error:  # onnx / tqdm: the export extra
            raise Phi4MMError(f"making the reference model needs the export extra ({error}): "
                              "pip install 'phi4mm-edge[export]', or pass an exported ARTIFACT folder") from None
    model = Phi4MMEdge.load(artifact, threads=args.threads, context_length=args.context)
    print(f"loaded {artifact} in {model.load_ms:.0f} ms", file=status or sys.stdout)
    if args.artifact is None:
        print(RANDOM_WEIGHTS_NOTE, file=status or sys.stdout)
    return model


def sampling(args) -> dict:
    """The generate() keywords the options set."""
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}


def timing_line(result: dict) -> str:
    """'adapter: vision, ttft 12.3 ms, 210.5 tokens/s, 24 tokens' for a finished generation."""
    timings = result["timings"]
    return (f"adapter: {result['adapter']}, ttft {timings['ttft_ms']:.1f} ms, "
            f"{timings['decode_tokens_per_s'] or '-'} tokens/s, {len(result['token_ids'])} tokens")
