"""Execution provider choice and session options."""

import onnxruntime as ort

from ..errors import Phi4MMError

PROVIDERS = {"cpu": "CPUExecutionProvider"}


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Session options; `threads` None keeps ONNX Runtime's default (one per physical core)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
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
