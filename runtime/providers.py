"""Execution providers: one row per provider this runtime can run graphs on, the choice of one for
an artifact (its target's row, targets.py, says which it runs on), and session options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnxruntime as ort

from ..errors import Phi4MMError
from . import qnn
from .cpu import logical_cpus, physical_cores

if TYPE_CHECKING:  # targets.py imports the decoders, which import this module
    from .targets import RuntimeTarget

AUTO, CPU = "auto", "cpu"
DML_MISSING = ("DirectML needs Windows and onnxruntime-directml (pip install onnxruntime-directml, in "
               "place of onnxruntime, on Windows); this ONNX Runtime has no DirectML execution provider")


@dataclass(frozen=True)
class ExecutionProvider:
    """What differs between the providers: how a session opens, where the long-lived tensors live,
    whether it is installed, and what a user is told when it cannot be used."""

    ep_name: str  # ONNX Runtime's name for it
    device: str  # the OrtDevice the KV cache, the adapters' tensors and the step row live on (device.py)
    # (path, options, provider name, reads: the sha256 of the files the graph reads, by name)
    open: Callable[[object, ort.SessionOptions, str, dict], ort.InferenceSession]
    available: Callable[[], bool]
    missing: str  # why it is not available, and how to install it
    wrong_artifact: str  # the refusal when an artifact's target does not run on it
    whole_prompts: str | None = None  # why prompts must run whole from position 0 (no chunks, no reused prefix)


def fresh_options(options: ort.SessionOptions) -> ort.SessionOptions:
    """Fresh options with `options`' threads and levels: a provider added to options stays there,
    so each QNN session gets its own."""
    copy = ort.SessionOptions()
    copy.graph_optimization_level = options.graph_optimization_level
    copy.intra_op_num_threads = options.intra_op_num_threads
    copy.log_severity_level = options.log_severity_level
    return copy


def _ort_session(path, options: ort.SessionOptions, provider: str, reads: dict | None = None) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), options, providers=providers(provider))
    except Exception as error:  # ONNX Runtime raises its own types; the user needs the fix
        raise Phi4MMError(f"ONNX Runtime could not load {path}: {error}. Re-export the artifact with this version of "
                          f"phi4mm-edge") from None


def _htp_session(path, options: ort.SessionOptions, provider: str, reads: dict | None = None) -> ort.InferenceSession:
    # reads fingerprint its compiled context
    return qnn.open_htp_session(path, lambda: fresh_options(options), reads)[0]


def _dml_session(path, options: ort.SessionOptions, provider: str, reads: dict | None = None) -> ort.InferenceSession:
    # DirectML wants no memory pattern and sequential execution (never run here: no Windows).
    options = fresh_options(options)
    options.enable_mem_pattern = False
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return _ort_session(path, options, provider)


def _listed(ep_name: str) -> Callable[[], bool]:
    return lambda: ep_name in ort.get_available_providers()


PROVIDERS = {
    CPU: ExecutionProvider("CPUExecutionProvider", device="cpu", open=_ort_session, available=lambda: True,
                           missing="", wrong_artifact=""),  # every target's graphs run on the CPU
    # The QNN plugin takes host buffers: the tensors stay in numpy arrays, as on the CPU.
    "qnn": ExecutionProvider(qnn.EP_NAME, device="cpu", open=_htp_session, available=qnn.available, missing=qnn.MISSING,
                             wrong_artifact="this artifact was exported for the CPU; export one for the NPU with "
                                            "`phi4mm-edge export CHECKPOINT OUT --target npu`"),
    # DirectML's GroupQueryAttention treats the past as empty when given more than one new
    # position (read in its 1.24.4 source; never run here): there prompts run whole from
    # position 0, so no prefix of an earlier turn is reused and no prompt is chunked.
    "dml": ExecutionProvider("DmlExecutionProvider", device="dml", open=_dml_session,
                             available=_listed("DmlExecutionProvider"), missing=DML_MISSING,
                             wrong_artifact="this artifact was not exported for DirectML; export one with "
                                            "`phi4mm-edge export CHECKPOINT OUT --target dml`",
                             whole_prompts="DirectML runs every prompt whole (its attention kernel takes no past "
                                           "with several new positions)"),
}
CHOICES = (AUTO, *PROVIDERS)


def choose_provider(requested: str, target: RuntimeTarget) -> tuple[str, str]:
    """The provider to run an artifact of `target` (its row in targets.py) on, and why, in words
    for the user. `auto`: the first provider the target runs on when it is installed, else the
    CPU. Asking for a provider the target does not run on, or one not installed, is an error:
    never a silent run of something else."""
    if requested not in CHOICES:
        raise Phi4MMError(f"--provider {requested!r}: give one of {', '.join(CHOICES)}")
    if requested == AUTO:
        preferred = next(iter(target.runs_on))
        if PROVIDERS[preferred].available():
            return preferred, target.runs_on[preferred] + target.auto_note
        return CPU, f"CPU: the artifact is for {target.made_for} but {PROVIDERS[preferred].missing}"
    provider = PROVIDERS[requested]
    if requested not in target.runs_on:
        raise Phi4MMError(f"--provider {requested}: {provider.wrong_artifact}")
    if not provider.available():
        raise Phi4MMError(f"--provider {requested}: {provider.missing}")
    return requested, target.runs_on[requested]


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


def providers(name: str = CPU) -> list[str]:
    if name not in PROVIDERS:
        raise Phi4MMError(f"execution provider {name!r} is not supported yet; use one of {sorted(PROVIDERS)}")
    return [PROVIDERS[name].ep_name]


def open_session(path, options: ort.SessionOptions, provider: str, reads: dict | None = None) -> ort.InferenceSession:
    """A session for the graph at `path` on `provider` (a PROVIDERS key). `reads`: the sha256 of
    the data files the graph reads, by name (Manifest.data_hashes), for providers that compile."""
    # An unknown name goes to the plain opener, whose error lists the supported ones.
    opens = PROVIDERS[provider].open if provider in PROVIDERS else _ort_session
    return opens(path, options, provider, reads)
