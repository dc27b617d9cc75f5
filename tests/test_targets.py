"""A target is a row, not a flag: every manifest target has its row in runtime/targets.py, every
provider its row in runtime/providers.py, and no other runtime module tests a target or a
provider by name. The provider choice read off the rows is pinned case by case."""

import dataclasses
import re
from pathlib import Path

import pytest

from phi4mm_edge.errors import Phi4MMError
from phi4mm_edge.manifest import TARGETS
from phi4mm_edge.runtime import providers
from phi4mm_edge.runtime.providers import CPU, PROVIDERS, choose_provider
from phi4mm_edge.runtime.targets import RUNTIME_TARGETS

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"
TABLES = {"targets.py", "providers.py"}
# `target ==`, `== "npu"`, `"dml" !=` ...: a branch on a target or provider name.
BY_NAME = re.compile(r"""\btarget\s*[!=]=|[!=]=\s*["'](npu|dml|qnn)["']|["'](npu|dml|qnn)["']\s*[!=]=""")


def test_every_manifest_target_has_a_runtime_row():
    assert set(RUNTIME_TARGETS) == set(TARGETS)
    for name, row in RUNTIME_TARGETS.items():
        assert set(row.runs_on) <= set(PROVIDERS), name
        assert CPU in row.runs_on, name  # --provider cpu, and auto's fallback, run every artifact


def test_no_runtime_module_branches_on_a_target_or_provider_name():
    found = [f"{path.name}:{number}: {line.strip()}" for path in sorted(RUNTIME.glob("*.py")) if path.name not in TABLES
             for number, line in enumerate(path.read_text().splitlines(), 1) if BY_NAME.search(line)]
    assert not found, "\n".join(found)


def test_the_scan_catches_what_it_forbids():
    # A pattern that matched nothing would pass vacuously; `device == "cpu"` (host memory or not) is no target.
    for branch in ('npu = manifest.target == "npu"', 'if provider == "qnn":', 'whole = "dml" == device',
                   'if target != "cpu":'):
        assert BY_NAME.search(branch), branch
    assert not BY_NAME.search('PROVIDERS["dml"].device') and not BY_NAME.search('if device == "cpu":')


@pytest.fixture
def installed(monkeypatch):
    """installed(qnn=..., dml=...): which optional providers choose_provider sees as present."""
    def install(qnn: bool, dml: bool):
        for name, present in (("qnn", qnn), ("dml", dml)):
            monkeypatch.setitem(PROVIDERS, name, dataclasses.replace(PROVIDERS[name], available=lambda p=present: p))
    return install


@pytest.mark.parametrize("target, qnn, dml, requested, expected", [
    ("cpu", True, True, "auto", ("cpu", "CPU")),
    ("npu", True, False, "auto", ("qnn", "QNN HTP (NPU), chosen by --provider auto for this NPU artifact")),
    ("npu", False, False, "auto", ("cpu", "CPU: the artifact is for the NPU but " + providers.qnn.MISSING)),
    ("npu", True, False, "cpu", ("cpu", "CPU (the NPU artifact's static graphs, on the CPU)")),
    ("dml", False, True, "auto", ("dml", "DirectML, chosen by --provider auto for this DirectML artifact")),
    ("dml", False, False, "auto", ("cpu", "CPU: the artifact is for DirectML (its fp16 graphs run on the CPU too) but "
                                   + providers.DML_MISSING)),
    ("dml", False, True, "dml", ("dml", "DirectML")),
    ("dml", True, True, "cpu", ("cpu", "CPU")),
])
def test_the_provider_chosen_and_what_the_user_is_told(installed, target, qnn, dml, requested, expected):
    installed(qnn, dml)
    assert choose_provider(requested, RUNTIME_TARGETS[target]) == expected


@pytest.mark.parametrize("target, qnn, dml, requested, message", [
    ("cpu", True, True, "qnn", "--provider qnn: this artifact was exported for the CPU; .*--target npu"),
    ("dml", True, True, "qnn", "--provider qnn: this artifact was exported for the CPU; .*--target npu"),
    ("npu", False, False, "qnn", "--provider qnn: the QNN execution provider is not installed"),
    ("cpu", True, True, "dml", "--provider dml: this artifact was not exported for DirectML; .*--target dml"),
    ("npu", True, True, "dml", "--provider dml: this artifact was not exported for DirectML; .*--target dml"),
    ("dml", False, False, "dml", "--provider dml: DirectML needs Windows"),
    ("cpu", True, True, "gpu", "--provider 'gpu': give one of auto, cpu, qnn, dml"),
])
def test_a_provider_the_artifact_cannot_use_is_refused(installed, target, qnn, dml, requested, message):
    installed(qnn, dml)
    with pytest.raises(Phi4MMError, match=message):
        choose_provider(requested, RUNTIME_TARGETS[target])


def test_auto_on_a_cpu_artifact_never_asks_for_the_optional_providers(monkeypatch):
    # qnn.available() registers the plugin (and can fail loudly): a CPU artifact must not touch it.
    def asked():
        raise AssertionError("asked")
    for name in ("qnn", "dml"):
        monkeypatch.setitem(PROVIDERS, name, dataclasses.replace(PROVIDERS[name], available=asked))
    assert choose_provider("auto", RUNTIME_TARGETS["cpu"]) == ("cpu", "CPU")
    assert choose_provider("cpu", RUNTIME_TARGETS["npu"])[0] == "cpu"
