"""Qualcomm's QNN execution provider, HTP (NPU) backend, from the `onnxruntime-qnn` plugin wheel.

The wheel is a plugin library beside onnxruntime: registered once per process, then chosen per
session with `add_provider_for_devices`. On x86_64 Linux its HTP backend is Qualcomm's simulator
(slow, but the same graph compiler and op set as a device), so NPU graphs are tested here.

Every NPU session runs with CPU fallback disabled: a node the HTP cannot run is an error at load
time, never a silent run on the CPU; the error names the graph and the nodes the HTP refused.
Float graphs run in the HTP's fp16 mode (`enable_htp_fp16_precision`), which this plugin accepts
only with a `soc_model`.

The compiled graph (an EPContext model plus its QNN context binary) is written next to the
artifact's graph on the first load and opened instead of compiling on the next. A small JSON
record beside it says what it was compiled from (the graph's bytes, the sha256 of every data file
the graph reads as the verified manifest lists them, the plugin's and QNN's versions, the SoC)
and what was written (each compiled file's size and sha256). Before a compiled context is used,
both must match: a re-export (the NPU embedding graph is byte-identical for every checkpoint;
only its data differs), a new plugin, or a damaged, truncated, swapped or deleted compiled file
makes it compile afresh instead of answering from stale or corrupt bytes. The compiled files are
hashed in full on every load (a size-and-time check would miss bytes rewritten in place).
"""

import hashlib
import json
import os
from pathlib import Path

import onnxruntime as ort

from ..artifact import COMPILED_CONTEXT_MARK
from ..errors import Phi4MMError

EP_NAME = "QNNExecutionProvider"
# Snapdragon X Elite (SC8380XP). The plugin's fp16 mode needs a SoC; a phone sets its own with
# PHI4MM_QNN_SOC_MODEL (e.g. 57 = Snapdragon 8 Gen 3, SM8650; 69 = 8 Elite, SM8750).
DEFAULT_SOC_MODEL = "60"
CONTEXT_SUFFIX = COMPILED_CONTEXT_MARK + ".onnx"
CONTEXT_RECORD_SUFFIX = COMPILED_CONTEXT_MARK + ".json"
MISSING = ("the QNN execution provider is not installed: "
           "pip install onnxruntime-qnn (x86_64 runs Qualcomm's HTP simulator)")

# ONNX Runtime's error when the HTP left nodes to the CPU with fallback off. It names them only in
# its log (stderr: "Unsupported nodes in QNN EP: { name: ..., type: ... }"), so refused_nodes asks.
LEFT_TO_THE_CPU = "assigned to the default CPU EP"
LISTED_NODES = 5  # refused nodes named in an error; the count says how many more
EXPORT_FOR_NPU = "`phi4mm-edge export CHECKPOINT OUT --target npu`"
# What to do about a refused graph. Only an NPU artifact's graphs reach the HTP (providers.py refuses
# the other targets' artifacts on it before any graph is opened), so its shapes are the cause.
REFUSAL_FIX = (f"The artifact was exported for the NPU, so this checkpoint's shapes make a graph the HTP cannot "
               f"run: re-export it with this version of phi4mm-edge ({EXPORT_FOR_NPU}), or report it with this "
               f"message")

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
                                      f"{ort.__version__} ({error}): "
                                      f"install the onnxruntime version it was built for") from None
    return _registered


def soc_model() -> str:
    return os.environ.get("PHI4MM_QNN_SOC_MODEL", DEFAULT_SOC_MODEL)


def versions() -> dict:
    plugin = _plugin()
    info = getattr(plugin, "build_and_package_info", None)
    return {"onnxruntime": ort.__version__, "onnxruntime_qnn": getattr(plugin, "__version__", "?"),
            "qnn_sdk": getattr(info, "qnn_version", "?"), "soc_model": soc_model()}


def htp_options(base: ort.SessionOptions, context_file: Path | None = None,
                cpu_fallback: bool = False) -> ort.SessionOptions:
    """`base` with the HTP backend in fp16 mode, CPU fallback off (on only to find out which
    nodes the HTP refuses: refused_nodes), and (given `context_file`) the compiled context
    written there."""
    if not available():
        raise Phi4MMError(MISSING)
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    base.add_provider_for_devices(devices, {"backend_type": "htp", "enable_htp_fp16_precision": "1",
                                            "soc_model": soc_model(), "htp_performance_mode": "burst"})
    base.add_session_config_entry("session.disable_cpu_ep_fallback", "0" if cpu_fallback else "1")
    if context_file is not None:
        base.add_session_config_entry("ep.context_enable", "1")
        base.add_session_config_entry("ep.context_file_path", str(context_file))
        base.add_session_config_entry("ep.context_embed_mode", "0")  # the binary in its own file
    return base


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _fingerprint(graph: Path, reads: dict[str, str]) -> dict:
    """What a context compiled from `graph` depends on; `reads`: the sha256 of each file the graph
    reads (its weights), by name."""
    return {"graph_sha256": _sha256(graph), "reads": dict(sorted(reads.items())), **versions()}


def context_paths(graph: Path) -> tuple[Path, Path]:
    stem = graph.name.removesuffix(".onnx")
    return graph.with_name(stem + CONTEXT_SUFFIX), graph.with_name(stem + CONTEXT_RECORD_SUFFIX)


def compiled_files(graph: Path) -> list[Path]:
    """The files a compilation of `graph` wrote: the EPContext model and its binaries (named after
    it by ONNX Runtime, e.g. `decoder_npu.qnn_ctx_qnn.bin`), the record excluded."""
    context, record = context_paths(graph)
    stem = context.name.removesuffix(".onnx")
    return sorted(p for p in graph.parent.glob(f"{stem}*") if p != record and p.is_file())


def cached_context(graph: Path, reads: dict[str, str] | None = None) -> Path | None:
    """The compiled context of `graph` if one was written from these exact bytes, data and
    versions, and its files are whole (sizes and sha256 as written)."""
    context, record = context_paths(graph)
    try:
        saved = json.loads(record.read_text())
        if not context.is_file() or not isinstance(saved, dict) \
                or saved.get("compiled_from") != _fingerprint(graph, reads or {}):
            return None
        written = saved.get("compiled_files")
        present = {p.name: p for p in compiled_files(graph)}
        if not isinstance(written, dict) or set(written) != set(present) or context.name not in written:
            return None
        for name, entry in written.items():
            if present[name].stat().st_size != entry.get("size") or _sha256(present[name]) != entry.get("sha256"):
                return None
        return context
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def open_htp_session(graph: Path, options_factory,
                     reads: dict[str, str] | None = None) -> tuple[ort.InferenceSession, bool]:
    """An HTP session for `graph`, from its compiled context when a whole one is cached for the
    same inputs; returns the session and whether it was compiled now. `options_factory()` gives
    fresh base options; `reads` the sha256 of the files the graph reads, by name (the manifest's)."""
    graph = Path(graph)
    context = cached_context(graph, reads)
    if context is not None:
        try:
            return ort.InferenceSession(str(context), htp_options(options_factory())), False
        except Exception:  # ONNX Runtime's own types
            pass  # whole but unusable (e.g. another graph's context copied over it): compiled again below
    context, record = context_paths(graph)
    writable = os.access(graph.parent, os.W_OK)
    for stale in [*compiled_files(graph), record] if writable else []:
        stale.unlink(missing_ok=True)
    global compilations
    options = htp_options(options_factory(), context if writable else None)
    try:
        session = ort.InferenceSession(str(graph), options)
    except Exception as error:  # ONNX Runtime's own types; the user needs the graph, the nodes and the fix
        raise compile_error(graph, error, options_factory) from None
    compilations += 1
    if writable and context.is_file():
        written = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in compiled_files(graph)}
        record.write_text(json.dumps({"compiled_from": _fingerprint(graph, reads or {}), "compiled_files": written}))
    return session, True


def refused_nodes(graph: Path, options_factory) -> list[str]:
    """The nodes of `graph` the HTP does not take, as "name (op type)": those ONNX Runtime assigns
    to the CPU when fallback is allowed. This compiles the graph a second time; only an error pays it."""
    options = htp_options(options_factory(), cpu_fallback=True)
    options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    session = ort.InferenceSession(str(graph), options)
    return [f"{node.name} ({node.op_type})" for part in session.get_provider_graph_assignment_info()
            if part.ep_name != EP_NAME for node in part.get_nodes()]


def compile_error(graph: Path, error: Exception, options_factory) -> Phi4MMError:
    """The error for a `graph` the HTP backend could not take: which graph, the nodes it refused
    (when that was the cause), and what to do."""
    refused = []
    if LEFT_TO_THE_CPU in str(error):
        try:
            refused = refused_nodes(graph, options_factory)
        except Exception:  # ONNX Runtime's own types
            pass  # the error below stands without the node list
    if refused:
        listed = "; ".join(refused[:LISTED_NODES]) + (" ..." if len(refused) > LISTED_NODES else "")
        what = f"the QNN HTP cannot run {len(refused)} node(s) of {graph.name} (CPU fallback is off): {listed}"
    else:
        what = f"the QNN HTP backend could not compile {graph.name}: {str(error).rstrip('.')}"
    return Phi4MMError(f"{what}. {REFUSAL_FIX}")
