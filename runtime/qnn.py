"""Qualcomm's QNN execution provider, HTP (NPU) backend, from the `onnxruntime-qnn` plugin wheel.

The wheel is a plugin library beside onnxruntime: registered once per process, then chosen per
session with `add_provider_for_devices`. On x86_64 Linux its HTP backend is Qualcomm's simulator
(slow, but the same graph compiler and op set as a device), so NPU graphs are tested here.

Every NPU session runs with CPU fallback disabled: a node the HTP cannot run is an error at load
time, never a silent run on the CPU. Float graphs run in the HTP's fp16 mode
(`enable_htp_fp16_precision`), which this plugin accepts only with a `soc_model`.

The compiled graph (an EPContext model plus its QNN context binary) is written next to the
artifact's graph on the first load and opened instead of compiling on the next. A small JSON
file beside it records what it was compiled from (the graph's bytes, the plugin's and QNN's
versions, the SoC), so a re-exported artifact or a new plugin compiles afresh.
"""

import hashlib
import json
import os
from pathlib import Path

import onnxruntime as ort

from ..errors import Phi4MMError

EP_NAME = "QNNExecutionProvider"
# Snapdragon X Elite (SC8380XP). The plugin's fp16 mode needs a SoC; a phone sets its own with
# PHI4MM_QNN_SOC_MODEL (e.g. 57 = Snapdragon 8 Gen 3, SM8650; 69 = 8 Elite, SM8750).
DEFAULT_SOC_MODEL = "60"
CONTEXT_SUFFIX = ".qnn_ctx.onnx"
CONTEXT_RECORD_SUFFIX = ".qnn_ctx.json"
MISSING = "the QNN execution provider is not installed: pip install onnxruntime-qnn (x86_64 runs Qualcomm's HTP simulator)"

_registered = None  # None: not tried; True/False after the first try
compilations = 0  # graphs compiled for the HTP in this process (a cached context does not count)


def _plugin():
    try:
        import onnxruntime_qnn
    except ImportError:
        return None
    return onnxruntime_qnn


def available() -> bool:
    """Whether the QNN plugin is installed and registers with this onnxruntime."""
    global _registered
    if _registered is None:
        plugin = _plugin()
        _registered = False
        if plugin is not None:
            try:
                ort.register_execution_provider_library(EP_NAME, plugin.get_library_path())
                _registered = True
            except Exception as error:  # already registered by someone else in this process counts
                _registered = any(d.ep_name == EP_NAME for d in ort.get_ep_devices())
                if not _registered:
                    raise Phi4MMError(f"onnxruntime-qnn is installed but does not register with onnxruntime "
                                      f"{ort.__version__} ({error}): install the onnxruntime version it was built for") from None
    return _registered


def soc_model() -> str:
    return os.environ.get("PHI4MM_QNN_SOC_MODEL", DEFAULT_SOC_MODEL)


def versions() -> dict:
    plugin = _plugin()
    info = getattr(plugin, "build_and_package_info", None)
    return {"onnxruntime": ort.__version__, "onnxruntime_qnn": getattr(plugin, "__version__", "?"),
            "qnn_sdk": getattr(info, "qnn_version", "?"), "soc_model": soc_model()}


def htp_options(base: ort.SessionOptions, context_file: Path | None = None) -> ort.SessionOptions:
    """`base` with the HTP backend in fp16 mode, CPU fallback off, and (given `context_file`)
    the compiled context written there."""
    if not available():
        raise Phi4MMError(MISSING)
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    base.add_provider_for_devices(devices, {"backend_type": "htp", "enable_htp_fp16_precision": "1",
                                            "soc_model": soc_model(), "htp_performance_mode": "burst"})
    base.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if context_file is not None:
        base.add_session_config_entry("ep.context_enable", "1")
        base.add_session_config_entry("ep.context_file_path", str(context_file))
        base.add_session_config_entry("ep.context_embed_mode", "0")  # the binary in its own file
    return base


def _fingerprint(graph: Path) -> dict:
    digest = hashlib.sha256()
    with open(graph, "rb") as f:  # the .onnx only: its weights' files are covered by the artifact's verification
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"graph_sha256": digest.hexdigest(), **versions()}


def context_paths(graph: Path) -> tuple[Path, Path]:
    stem = graph.name.removesuffix(".onnx")
    return graph.with_name(stem + CONTEXT_SUFFIX), graph.with_name(stem + CONTEXT_RECORD_SUFFIX)


def cached_context(graph: Path) -> Path | None:
    """The compiled context of `graph` if one was written for these exact bytes and versions."""
    context, record = context_paths(graph)
    try:
        if context.is_file() and json.loads(record.read_text()) == _fingerprint(graph):
            return context
    except (OSError, ValueError):
        pass
    return None


def open_htp_session(graph: Path, options_factory) -> tuple[ort.InferenceSession, bool]:
    """An HTP session for `graph`, from its compiled context when one is cached; returns the
    session and whether it was compiled now. `options_factory()` gives fresh base options."""
    graph = Path(graph)
    context = cached_context(graph)
    if context is not None:
        return _session(context, htp_options(options_factory()), graph), False
    context, record = context_paths(graph)
    writable = os.access(graph.parent, os.W_OK)
    for stale in (context, record):
        if writable and stale.exists():
            stale.unlink()
    global compilations
    session = _session(graph, htp_options(options_factory(), context if writable else None), graph)
    compilations += 1
    if writable and context.is_file():
        record.write_text(json.dumps(_fingerprint(graph)))
    return session, True


def _session(path: Path, options: ort.SessionOptions, graph: Path) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), options)
    except Exception as error:  # ONNX Runtime's own types; the user needs the cause and the fix
        raise Phi4MMError(f"the QNN HTP backend could not compile {graph.name}: {error}. This artifact must be "
                          f"exported with --target npu for the NPU") from None
