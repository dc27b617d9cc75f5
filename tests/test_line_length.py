"""New code has a line limit: every Python file of the project, but those pyproject.toml's
[tool.ruff] extend-exclude lists (older files, wrapped when next edited), has lines of at most
[tool.ruff] line-length characters. The same table configures `ruff check`."""

import os
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_no_line_of_a_held_file_is_longer_than_the_limit():
    settings = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]
    limit, exempt = settings["line-length"], set(settings["extend-exclude"])
    assert all((REPO / name).is_file() for name in exempt), "an exempt file that no longer exists: drop it"
    held = [path for path in python_files() if path.relative_to(REPO).as_posix() not in exempt]
    assert len(held) > 50  # the scan sees the tree
    long_lines = [f"{path.relative_to(REPO)}:{number}: {len(line)} characters"
                  for path in held for number, line in enumerate(path.read_text().splitlines(), 1) if len(line) > limit]
    assert long_lines == [], "\n".join(long_lines[:20])


def python_files() -> list[Path]:
    """The project's .py files: hidden folders (virtual environments, .git) and build output skipped."""
    found = []
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in ("build", "dist", "__pycache__")
                         and not d.endswith(".egg-info")]
        found += [Path(folder) / name for name in files if name.endswith(".py")]
    return found
