"""Check an artifact folder against its manifest before any session touches it.

What is checked: every file the runtime will open is listed in the manifest (the graphs, the data
files each graph reads, the adapters, and the tokenizer and chat-template files it opens by name),
lies inside the folder (no path or symlink leads out), and has the listed size and sha256. Which
data files a graph reads is read from the graph itself (graph_references.py), not taken from the
manifest: a manifest edited to leave a data file out cannot leave that file unchecked.

Hashing a multi-GB artifact on every load would cost seconds, so a successful check is
remembered in `.verified.json` (size, mtime and sha256 per file): a later load re-hashes only
files whose size or mtime changed. That cache trusts that a file with the same size and mtime
has the same bytes; a change that keeps both (a deliberate one, or some disk faults) is caught
by a full check, which `verify="full"` forces and which runs by itself when the last one is
older than FULL_CHECK_DAYS.
"""

import json
import time
from pathlib import Path

from ..artifact import READ_BY_NAME, sha256_of
from ..errors import Phi4MMError
from ..manifest import Manifest, is_plain_file_name, read_manifest
from .graph_references import external_data_files

STAMP = ".verified.json"
FULL_CHECK_DAYS = 7
VERIFY_MODES = ("cached", "full", "off")


def files_read(manifest: Manifest, folder: Path) -> list[str]:
    """The files the runtime opens by the manifest's word: graphs, adapters, the tokenizer files
    present (the graphs' data files are checked from the graphs: check_graph_data)."""
    adapters = [entry.file for entry in manifest.adapters.values()]
    by_name = [name for name in READ_BY_NAME if (folder / name).exists() or name == READ_BY_NAME[0]]
    return list(dict.fromkeys([*manifest.graph_files(), *adapters, *by_name]))


def check_graph_data(manifest: Manifest, folder: Path) -> None:
    """Every data file a (verified) graph names is listed, so verified, and the manifest's
    graph_data says the same as the graph."""
    for graph in manifest.graph_files():
        reads = external_data_files(folder / graph)
        for name in sorted(reads):
            if not is_plain_file_name(name) or name not in manifest.files:
                raise Phi4MMError(f"{graph} reads {name!r}, which manifest.json does not list (so it cannot be "
                                  f"verified): the artifact was altered; re-export it")
        if reads != set(manifest.graph_data.get(graph, ())):
            raise Phi4MMError(f"manifest.json's graph_data for {graph} does not name the data files the graph reads "
                              f"({', '.join(sorted(reads)) or 'none'}): the manifest was altered; "
                              f"re-export the artifact")


def verify_artifact(folder, mode: str = "cached") -> Manifest:
    """Return the manifest of a complete, unmodified artifact; raise Phi4MMError otherwise.
    `mode`: "cached" (re-hash what changed, everything once a week), "full" (re-hash everything)
    or "off" (the manifest alone, for tools that just read it)."""
    if mode not in VERIFY_MODES:
        raise Phi4MMError(f"verify mode {mode!r} is not one of {VERIFY_MODES}")
    folder = Path(folder)
    manifest = read_manifest(folder)
    if mode == "off":
        return manifest
    root = folder.resolve()
    for name in files_read(manifest, folder):
        if name not in manifest.files:
            raise Phi4MMError(f"{folder / name} is read by the runtime but manifest.json does not "
                              f"list it (so it cannot "
                              f"be verified): the artifact was altered; re-export it, or remove that file")
    stamp_path = folder / STAMP
    try:
        stamp = json.loads(stamp_path.read_text())
        checked = stamp.pop("full_check_at")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        stamp, checked = {}, 0.0
    age = time.time() - checked if isinstance(checked, (int, float)) else float("nan")
    # A stamp from the future (a clock set back, or an edited stamp) must not postpone the full check for good.
    full = mode == "full" or not 0 <= age <= FULL_CHECK_DAYS * 86400
    fresh = {}
    for name, expected in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise Phi4MMError(f"artifact file {path} is missing: re-export the artifact or copy the whole folder")
        if path.resolve().parent != root:
            raise Phi4MMError(f"artifact file {path} leads outside the artifact folder (a link to {path.resolve()}): "
                              f"copy the real file into the folder")
        info = path.stat()
        if info.st_size != expected.size:
            raise Phi4MMError(
                f"artifact file {path} has {info.st_size} bytes, the manifest says {expected.size}: "
                f"the file is truncated or was replaced; re-export the artifact"
            )
        key = [info.st_size, info.st_mtime_ns, expected.sha256]
        if full or stamp.get(name) != key:
            if sha256_of(path) != expected.sha256:
                raise Phi4MMError(
                    f"artifact file {path} no longer matches the sha256 in manifest.json: it was modified or "
                    f"corrupted; re-export the artifact"
                )
        fresh[name] = key
    check_graph_data(manifest, folder)
    if fresh == stamp and not full:
        return manifest  # nothing changed since the last check: no write on every load
    try:
        stamp_path.write_text(json.dumps({**fresh, "full_check_at": time.time() if full else checked}))
    except OSError:
        pass  # a read-only artifact is checked in full each time
    return manifest
