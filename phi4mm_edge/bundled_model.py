"""The bundled reference model: the tiny trained Phi-4-multimodal (the real architecture and
on-disk layout, weights shipped in export/data/trained_reference/), written and exported once
under a cache folder, for every command run without an artifact. Only the CLI imports this
module: it is where the export side and the runtime meet."""

import os
import sys
from pathlib import Path

from .errors import Phi4MMError


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "phi4mm-edge"


def bundled_artifact(cache_dir: Path | None = None) -> Path:
    """The default (int4) artifact of the trained reference model under `cache_dir`, made (checkpoint, then export)
    if it is missing or damaged. Progress goes to stderr: stdout stays the command's own."""
    try:
        from .export.convert import export
        from .export.trained_reference import write_trained_reference
        from .runtime.verify import verify_artifact
    except ImportError as error:  # onnx / tqdm: the export extra
        raise Phi4MMError(f"making the reference model needs the export extra ({error}): "
                          "pip install -e \".[export]\", or pass an exported ARTIFACT folder") from None
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    checkpoint, artifact = cache_dir / "trained-checkpoint", cache_dir / "trained-int4"
    if not (checkpoint / "config.json").is_file():
        print(f"making the reference checkpoint in {checkpoint} ...", file=sys.stderr, flush=True)
        write_trained_reference(checkpoint)
    try:
        verify_artifact(artifact)
    except Phi4MMError:
        print(f"exporting it to {artifact} (int4) ...", file=sys.stderr, flush=True)
        export(checkpoint, artifact, show_progress=False)
    return artifact
