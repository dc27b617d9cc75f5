"""The export targets, one row each: what an artifact for that target holds and how export
builds it. `export()` (convert.py) reads the row; adding a target adds a row and its builders.

The runtime reads its own table of the same targets (runtime/targets.py); the names of the
targets are manifest.TARGETS, the contract between the two."""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import artifact
from ..errors import Phi4MMError
from ..manifest import TARGETS
from .audio_encoder import MAX_CHUNK, build_audio_encoder
from .audio_encoder_npu import build_audio_window_encoder
from .dml import DML_AUDIO, DML_GRAPH
from .dml_operators import ONNXRUNTIME_VERSION, unregistered_nodes
from .graph_blocks import Precision
from .graph_files import AS_BUILT, GraphFinish
from .npu import NPU_GRAPH
from .text_graphs import write_cpu_text_graphs, write_dml_text_graphs, write_npu_text_graphs
from .vision_encoder import build_vision_encoder
from .vision_encoder_npu import build_vision_crop_encoder

IN_GRAPH = {"int4": 4, "int8": 8}  # the adapters as constants in the decoder graph (graph_adapters.py), by bits
ADAPTER_FILES = ("fp32", "fp16")  # the adapters as .onnx_adapter files bound as the decoder's inputs (adapters.py)


@dataclass(frozen=True)
class ExportTarget:
    """One target. `write_text(out, ckpt, options, in_graph_adapters, step)` writes the text graphs
    and returns (Graphs, NpuShapes or None); `build_vision(ckpt, graph, precision)` and
    `build_audio(ckpt, graph, precision, options)` fill the encoders' graphs, saved as
    `vision_graph` / `audio_graph` after `finish`; `audio_windows(config, options)` adds the
    manifest's window sizes for static audio graphs."""

    name: str
    where: str  # the target in messages: "the NPU", "DirectML"
    write_text: Callable
    vision_graph: str
    build_vision: Callable
    audio_graph: str
    build_audio: Callable
    adapter_precisions: tuple[str, ...]  # what --adapter-precision may be (besides auto)
    auto_adapters: Callable[[Precision], str]  # what auto is, given the base's precision
    int8_linears: bool = False  # MLAS's uint8 x int8 GEMM (a CPU kernel): the int8 prompt graph, int8 encoders
    token_tables: tuple[str, ...] = ("int4",)  # an int4 export's token table (and tied lm_head): the first is auto
    static_shapes: bool = False  # compiled for fixed shapes: takes --npu-chunk / --npu-context
    finish: GraphFinish = AS_BUILT
    float_weights: str = "fp32"  # how a float (non-int4) export stores its weights
    check_graphs: Callable[[Path, list[str]], None] | None = None  # raises when the target cannot run a graph
    genai_files: bool = False  # onnxruntime-genai's config and graphs (genai.py) fit this target's graphs
    audio_windows: Callable = lambda config, options: {}


def refuse_unregistered(out: Path, graph_files: list[str]) -> None:
    """Raise naming the nodes of the DirectML graphs that DirectML has no kernel for (dml_operators.py)."""
    found = [node for name in graph_files for node in unregistered_nodes(out / name)]
    if found:
        listed = "; ".join(f"{n.graph}/{n.node} ({n.domain or 'ai.onnx'} {n.op_type}-{n.opset}: {n.reason})"
                           for n in found[:5])
        raise Phi4MMError(f"{len(found)} node(s) of the DirectML graphs have no DirectML kernel in ONNX Runtime "
                          f"{ONNXRUNTIME_VERSION}, so they would run on the CPU: "
                          f"{listed}{' ...' if len(found) > 5 else ''}. "
                          f"This checkpoint or these export options make graphs DirectML cannot run whole: export with "
                          f"--target cpu, or report it")


def npu_audio_windows(config, options) -> dict:
    """The NPU audio graph's window and the reference's chunk, in feature frames."""
    return dict(window_frames=options.npu_audio_window * config.time_reduction,
                chunk_frames=MAX_CHUNK * config.time_reduction)


EXPORT_TARGETS = {target.name: target for target in (
    ExportTarget(
        name="cpu", where="the CPU", write_text=write_cpu_text_graphs,
        vision_graph=artifact.VISION_GRAPH, build_vision=build_vision_encoder,
        audio_graph=artifact.AUDIO_GRAPH,
        build_audio=lambda ckpt, g, precision, options: build_audio_encoder(ckpt, g, precision),
        adapter_precisions=(*IN_GRAPH, *ADAPTER_FILES),
        auto_adapters=lambda precision: "int4" if precision.is_int4 else "fp32",  # the adapters follow the base
        int8_linears=True, token_tables=("int4-rescored", "int4", "int8"), genai_files=True),
    ExportTarget(
        name="npu", where="the NPU", write_text=write_npu_text_graphs,
        vision_graph=artifact.NPU_VISION_GRAPH, build_vision=build_vision_crop_encoder,
        audio_graph=artifact.NPU_AUDIO_GRAPH,
        build_audio=lambda ckpt, g, precision, options: build_audio_window_encoder(ckpt, g, precision,
                                                                                   options.npu_audio_window),
        adapter_precisions=("fp16", "fp32"), auto_adapters=lambda precision: "fp16",
        static_shapes=True, finish=NPU_GRAPH, audio_windows=npu_audio_windows),
    ExportTarget(
        name="dml", where="DirectML", write_text=write_dml_text_graphs,
        vision_graph=artifact.DML_VISION_GRAPH, build_vision=build_vision_encoder,
        audio_graph=artifact.DML_AUDIO_GRAPH,
        build_audio=lambda ckpt, g, precision, options: build_audio_encoder(ckpt, g, precision, kernels=DML_AUDIO),
        adapter_precisions=("fp16",), auto_adapters=lambda precision: "fp16",
        finish=DML_GRAPH, float_weights="fp16", check_graphs=refuse_unregistered),
)}


def export_target(name: str) -> ExportTarget:
    if name not in EXPORT_TARGETS:
        raise Phi4MMError(f"--target {name!r}: give one of {', '.join(TARGETS)}")
    return EXPORT_TARGETS[name]
