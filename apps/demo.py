"""`phi4mm-edge demo`: the whole pipeline on the bundled reference model, in seconds.

Makes the tiny random-weight checkpoint (once, cached), exports it at int4, then answers one
prompt with no adapter, the vision adapter and the speech adapter.
"""

import os
from pathlib import Path

from ..runtime import Phi4MMEdge
from ..runtime.verify import verify_artifact

RANDOM_WEIGHTS_NOTE = ("NOTE: the reference model has RANDOM weights: its words mean nothing. It proves the pipeline "
                       "(export, int4, adapter swapping, streaming); point `phi4mm-edge export` at the real checkpoint for real answers.")


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "phi4mm-edge"


def prepare_reference_artifact(cache_dir: Path) -> Path:
    """Checkpoint and int4 artifact of the reference model under `cache_dir`, made if missing."""
    from ..errors import Phi4MMError
    from ..export.convert import export
    from ..export.reference import write_reference

    checkpoint, artifact = cache_dir / "reference-checkpoint", cache_dir / "reference-int4"
    if not (checkpoint / "config.json").is_file():
        print(f"making the reference checkpoint in {checkpoint} ...")
        write_reference(checkpoint)
    try:
        verify_artifact(artifact)
    except Phi4MMError:
        print(f"exporting it to {artifact} (int4) ...")
        export(checkpoint, artifact)
    return artifact


def demo(args) -> None:
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    artifact = prepare_reference_artifact(cache_dir)
    model = Phi4MMEdge.load(artifact)
    print(f"\nloaded {artifact} in {model.load_ms:.0f} ms")
    print(RANDOM_WEIGHTS_NOTE + "\n")
    print(f"prompt: {args.prompt}\n")
    for adapter in ("none", "vision", "speech"):
        generation = model.generate(args.prompt, max_new_tokens=args.max_new_tokens, adapter=adapter)
        print(f"[adapter: {adapter}] ", end="", flush=True)
        for piece in generation:
            print(piece, end="", flush=True)
        t = generation.result["timings"]
        print(f"\n    ttft {t['ttft_ms']:.1f} ms, decode {t['decode_tokens_per_s']} tokens/s, "
              f"{len(generation.result['token_ids'])} tokens\n")
