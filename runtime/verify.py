"""Check an artifact folder against its manifest before any session touches it.

Hashing a multi-GB artifact on every load would cost seconds, so a successful check is
remembered in `.verified.json` (size, mtime and sha256 per file); a later load re-hashes only
files whose size or mtime changed. `full=True` re-hashes everything.
"""

import json
from pathlib import Path

from ..artifact import sha256_of
from ..manifest import Manifest, read_manifest
from ..errors import Phi4MMError

STAMP = ".verified.json"


def verify_artifact(folder, full: bool = False) -> Manifest:
    """Return the manifest of a complete, unmodified artifact; raise Phi4MMError otherwise."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    stamp_path = folder / STAMP
    try:
        stamp = {} if full else json.loads(stamp_path.read_text())
    except (OSError, json.JSONDecodeError):
        stamp = {}
    fresh = {}
    for name, expected in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise Phi4MMError(f"artifact file {path} is missing: re-export the artifact or copy the whole folder")
        info = path.stat()
        if info.st_size != expected.size:
            raise Phi4MMError(
                f"artifact file {path} has {info.st_size} bytes, the manifest says {expected.size}: "
                f"the file is truncated or was replaced; re-export the artifact"
            )
        key = [info.st_size, info.st_mtime_ns, expected.sha256]
        if stamp.get(name) != key:
            if sha256_of(path) != expected.sha256:
                raise Phi4MMError(
                    f"artifact file {path} no longer matches the sha256 in manifest.json: it was modified or "
                    f"corrupted; re-export the artifact"
                )
        fresh[name] = key
    if fresh == stamp:
        return manifest  # nothing changed since the last check: no write on every load
    try:
        stamp_path.write_text(json.dumps(fresh))
    except OSError:
        pass  # a read-only artifact is checked in full each time
    return manifest
