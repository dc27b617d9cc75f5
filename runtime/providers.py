"""Execution provider choice and session options."""

import onnxruntime as ort

from ..errors import Phi4MMError
from ..manifest import Manifest
from . import qnn
from .cpu import logical_cpus, physical_cores

PROVIDERS = {"cpu": "CPUExecutionProvider", "qnn": qnn.EP_NAME, "dml": "DmlExecutionProvider"}
DML_MISSING = ("DirectML needs Windows and onnxruntime-directml (pip install onnxruntime-directml, in place of onnxruntime, "
               "on Windows); this ONNX Runtime has no DirectML execution provider")
CHOICES = ("auto", *PROVIDERS)


def choose_provider(requested: str, manifest: Manifest) -> tuple[str, str]:
    """The provider to run `manifest`'s artifact on, and why, in words for the user. `auto`: QNN
    for an NPU artifact when the plugin is installed, else the CPU. Asking for QNN with a CPU
    artifact or without the plugin is an error: never a silent run of something else."""
    if requested not in CHOICES:
        raise Phi4MMError(f"--provider {requested!r}: give one of {', '.join(CHOICES)}")
    npu = manifest.target == "npu"
    if requested == "dml" or (requested == "auto" and manifest.target == "dml"):
        return _choose_dml(requested, manifest)
    if requested == "qnn":
        if not npu:
            raise Phi4MMError("--provider qnn: this artifact was exported for the CPU; export one for the NPU with "
                              "`phi4mm-edge export CHECKPOINT OUT --target npu`")
        if not qnn.available():
            raise Phi4MMError(f"--provider qnn: {qnn.MISSING}")
        return "qnn", "QNN HTP (NPU)"
    if requested == "cpu":
        return "cpu", "CPU" + (" (the NPU artifact's static graphs, on the CPU)" if npu else "")
    if npu and qnn.available():
        return "qnn", "QNN HTP (NPU), chosen by --provider auto for this NPU artifact"
    if npu:
        return "cpu", f"CPU: the artifact is for the NPU but {qnn.MISSING}"
    return "cpu", "CPU"


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Session options; `threads` None means one thread per physical core (set explicitly, so
    every graph, the prefill GEMMs above all, uses all of them)."""
    if threads is not None:
        available = logical_cpus()
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= available:
            # More threads than CPUs only wait on each other (512 took 107 s for 2 tokens here).
            raise Phi4MMError(f"--threads {threads}: give 1..{available}, the logical CPUs this process may use "
                              f"(or leave it out for one per physical core)")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or physical_cores()
    options.log_severity_level = 3
    return options


def providers(name: str = "cpu") -> list[str]:
    if name not in PROVIDERS:
        raise Phi4MMError(f"execution provider {name!r} is not supported yet; use one of {sorted(PROVIDERS)}")
    return [PROVIDERS[name]]


def _choose_dml(requested: str, manifest: Manifest) -> tuple[str, str]:
    if manifest.target != "dml":
        raise Phi4MMError("--provider dml: this artifact was not exported for DirectML; export one with "
                          "`phi4mm-edge export CHECKPOINT OUT --target dml`")
    if PROVIDERS["dml"] in ort.get_available_providers():
        return "dml", "DirectML" + (", chosen by --provider auto for this DirectML artifact" if requested == "auto" else "")
    if requested == "dml":
        raise Phi4MMError(f"--provider dml: {DML_MISSING}")
    return "cpu", f"CPU: the artifact is for DirectML (its fp16 graphs run on the CPU too) but {DML_MISSING}"


def fresh_options(options: ort.SessionOptions) -> ort.SessionOptions:
    """Fresh options with `options`' threads and levels: a provider added to options stays there,
    so each QNN session gets its own."""
    copy = ort.SessionOptions()
    copy.graph_optimization_level = options.graph_optimization_level
    copy.intra_op_num_threads = options.intra_op_num_threads
    copy.log_severity_level = options.log_severity_level
    return copy


def open_session(path, options: ort.SessionOptions, provider: str) -> ort.InferenceSession:
    if provider == "qnn":
        return qnn.open_htp_session(path, lambda: fresh_options(options))[0]
    if provider == "dml":  # DirectML wants no memory pattern and sequential execution (never run here: no Windows)
        options = fresh_options(options)
        options.enable_mem_pattern = False
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        return ort.InferenceSession(str(path), options, providers=providers(provider))
    except Exception as error:  # ONNX Runtime raises its own types; the user needs the fix
        raise Phi4MMError(f"ONNX Runtime could not load {path}: {error}. Re-export the artifact with this version of phi4mm-edge") from None
