"""Execution provider choice and session options."""

import onnxruntime as ort

from ..errors import Phi4MMError
from .cpu import logical_cpus, physical_cores

PROVIDERS = {"cpu": "CPUExecutionProvider"}


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


def open_session(path, options: ort.SessionOptions, provider: str) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), options, providers=providers(provider))
    except Exception as error:  # ONNX Runtime raises its own types; the user needs the fix
        raise Phi4MMError(f"ONNX Runtime could not load {path}: {error}. Re-export the artifact with this version of phi4mm-edge") from None
