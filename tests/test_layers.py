"""The layers, enforced: the data flows checkpoint -> export/ (+ quant/) -> artifact -> runtime/ -> apps/.

Every module's imports (top-level and inside functions) are read with `ast`, relative ones
resolved against the module's installed name, and each folder may import only the layers it
stands on. pyproject.toml's package-dir table is the one map from installed names to folders.
"""

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "phi4mm_edge"
# The package root holds the shared contract (core) and the command line (cli), the one place
# where export and runtime meet.
CORE = {f"{PACKAGE}", f"{PACKAGE}.errors", f"{PACKAGE}.artifact", f"{PACKAGE}.manifest", f"{PACKAGE}.machine"}
CLI = {f"{PACKAGE}.cli", f"{PACKAGE}.export_command", f"{PACKAGE}.bundled_model"}
# tasks: the trained reference model's task generators and held-out task set, torch-free, so eval
# and the demo (apps) read the task set on a machine without torch or espeak-ng. training: the one
# layer that trains (torch, transformers, peft); nothing imports it, it is run as a module.
ALLOWED = {  # layer -> the project layers it may import (itself included)
    "core": {"core"},
    "quant": {"core", "quant"},
    "tasks": {"core", "tasks"},
    "export": {"core", "quant", "tasks", "export"},
    "runtime": {"core", "runtime"},
    "apps": {"core", "runtime", "tasks", "apps"},
    "benchmarks": {"core", "quant", "tasks", "export", "runtime", "benchmarks"},
    "cli": {"core", "quant", "tasks", "export", "runtime", "apps", "benchmarks", "cli"},
    "training": {"core", "quant", "tasks", "export", "training"},
}
TORCH = {"torch", "transformers", "peft", "onnx", "torchvision"}
FORBIDDEN_LIBRARIES = {  # third-party packages a layer must never import
    # runtime/ is artifact -> tokens: reading a camera or a microphone is the apps' (apps/capture/)
    "runtime": TORCH | {"cv2", "sounddevice"},
    "apps": TORCH,
    "tasks": TORCH | {"onnxruntime"},
    "core": {"torch", "transformers", "peft", "onnx", "onnxruntime", "numpy"},
}


def package_folders() -> dict[str, Path]:
    """Installed package name -> folder, from pyproject.toml."""
    settings = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {name: REPO / folder for name, folder in settings["package-dir"].items()}


def modules() -> dict[str, Path]:
    """Installed module name -> source file, for every module of the package."""
    found = {}
    for package, folder in package_folders().items():
        for path in folder.glob("*.py"):
            name = package if path.name == "__init__.py" else f"{package}.{path.stem}"
            found[name] = path
    return found


def layer_of(module: str) -> str | None:
    if module in CORE:
        return "core"
    if module in CLI:
        return "cli"
    parts = module.split(".")
    if parts[0] == PACKAGE and len(parts) > 1 and parts[1] in ALLOWED:
        return parts[1]
    return None


def imports_of(module: str, source: str, is_package: bool) -> set[str]:
    """Absolute names of everything `source` imports (relative imports resolved)."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)  # `from . import x` names a module
    return names


def violations(module: str, imported: set[str], known: set[str]) -> list[str]:
    """What `module` may not import, as readable lines."""
    layer, found = layer_of(module), []
    for name in sorted(imported):
        if name.split(".")[0] == PACKAGE:
            if name not in known:
                continue  # `from .x import Name`: the module is `.x`, already in the set
            target = layer_of(name)
            if target is not None and target not in ALLOWED[layer]:
                found.append(f"{module} ({layer}) imports {name} ({target})")
        elif name.split(".")[0] in FORBIDDEN_LIBRARIES.get(layer, set()):
            found.append(f"{module} ({layer}) imports {name}")
    return found


def import_graph() -> dict[str, set[str]]:
    """Layer -> the layers it imports (self-imports left out)."""
    known = modules()
    graph = {layer: set() for layer in ALLOWED}
    for module, path in known.items():
        for name in imports_of(module, path.read_text(), path.name == "__init__.py"):
            if name in known and layer_of(name) != layer_of(module):
                graph[layer_of(module)].add(layer_of(name))
    return graph


def test_every_module_belongs_to_a_layer():
    assert all(layer_of(m) is not None for m in modules()), [m for m in modules() if layer_of(m) is None]


def test_no_layer_imports_what_it_stands_above():
    known = modules()
    found = []
    for module, path in known.items():
        found += violations(module, imports_of(module, path.read_text(), path.name == "__init__.py"), set(known))
    assert not found, "\n".join(found)


def test_the_layers_form_no_cycle_and_the_arrows_are_seen():
    graph = import_graph()
    # The checker must see the real arrows (a tool that resolves nothing would pass vacuously).
    assert {"core"} <= graph["runtime"] and "runtime" in graph["apps"] and "quant" in graph["export"]
    state = {}

    def visit(layer, path):
        if state.get(layer) == "open":
            raise AssertionError(f"import cycle between folders: {' -> '.join(path + [layer])}")
        if state.get(layer) != "done":
            state[layer] = "open"
            for target in graph[layer]:
                visit(target, path + [layer])
            state[layer] = "done"

    for layer in graph:
        visit(layer, [])


def test_nothing_imports_training():
    """Training is run (`python -m phi4mm_edge.training`), never imported: its torch stays out of
    every command and of the expansion of the trained weights."""
    assert [layer for layer, allowed in ALLOWED.items() if "training" in allowed] == ["training"]


def test_the_checker_catches_what_it_forbids():
    known = {"phi4mm_edge.export.convert", "phi4mm_edge.runtime.model", "phi4mm_edge.apps.chat",
             "phi4mm_edge.quant.int4"}
    runtime = imports_of("phi4mm_edge.runtime.model", "import torch\nfrom ..export import convert\n", False)
    assert len(violations("phi4mm_edge.runtime.model", runtime, known)) == 2
    devices = imports_of("phi4mm_edge.runtime.model", "def f():\n    import cv2\n    import sounddevice\n", False)
    assert len(violations("phi4mm_edge.runtime.model", devices, known)) == 2
    apps = imports_of("phi4mm_edge.apps.chat", "def f():\n    from ..quant import int4\n", False)
    assert violations("phi4mm_edge.apps.chat", apps, known) == [
        "phi4mm_edge.apps.chat (apps) imports phi4mm_edge.quant.int4 (quant)"]
    assert not violations("phi4mm_edge.apps.chat",
                          imports_of("phi4mm_edge.apps.chat", "from ..runtime import model\n", False),
                          known | {"phi4mm_edge.runtime"})
