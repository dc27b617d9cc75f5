"""What the runtime does with each manifest target's artifact (manifest.TARGETS): one row per
target saying which providers its graphs run on, which prompt graph its prefill rule opens, and
which decoder and encoders feed its graphs. Phi4MMEdge.load and providers.choose_provider read
the row; adding a target adds a row here and its builders (what differs between the providers
themselves is providers.PROVIDERS)."""

from collections.abc import Callable
from dataclasses import dataclass

import onnxruntime as ort

from ..manifest import Graphs, Manifest
from .adapters import AdapterSet
from .audio_encoder import ClipGraph, WholeClip
from .audio_npu import ClipWindows
from .cpu import choose_prefill_precision
from .decoder import Decoder
from .npu_decoder import NpuDecoder
from .providers import CPU, ExecutionProvider
from .sequence import TextDecoder
from .vision_encoder import ImageGraph, whole_image
from .vision_npu import crop_by_crop


@dataclass(frozen=True)
class TextSessions:
    """The text graphs' sessions: embedding, decoder and the prompt graph the prefill rule chose (or None)."""

    embedding: ort.InferenceSession
    decoder: ort.InferenceSession
    prompt: ort.InferenceSession | None


# (manifest, sessions, adapters, context_length or None, prefill_chunk or None, the provider's row) -> the decoder
DecoderBuilder = Callable[[Manifest, TextSessions, AdapterSet, int | None, int | None, ExecutionProvider], TextDecoder]


@dataclass(frozen=True)
class RuntimeTarget:
    """How the runtime runs an artifact of one target."""

    runs_on: dict[str, str]  # provider -> how the user is told; `--provider auto` takes the first when installed
    auto_note: str  # added to the first provider's words when auto chose it
    made_for: str  # "the artifact is for ...": what auto could not use when it falls back to the CPU
    # The prefill rule: `--prefill` and the artifact's graphs -> the prompt graph to open beside the
    # decoder and embedding graphs (None: prompts run through the decoder graph).
    prompt_graph: Callable[[str, Graphs], str | None]
    decoder: DecoderBuilder
    image_graph: ImageGraph  # how VisionEncoder feeds the vision graph
    clip_graph: Callable[..., ClipGraph]  # how AudioEncoder feeds the audio graph, made from (entry, provider)


def int8_prompt_graph(requested: str, graphs: Graphs) -> str | None:
    """The int8 prompt graph when choose_prefill_precision picks it (--prefill, the graph, this CPU)."""
    precision = choose_prefill_precision(requested, graphs.prefill_int8 is not None,
                                         int8_weight_bits=graphs.prefill_int8_weight_bits)
    return graphs.prefill_int8 if precision == "int8" else None


def npu_prompt_graph(requested: str, graphs: Graphs) -> str | None:
    """The static prompt graph, always: --prefill does not apply to an NPU artifact."""
    return graphs.prompt


def dynamic_decoder(manifest: Manifest, sessions: TextSessions, adapters: AdapterSet, context_length: int | None,
                    prefill_chunk: int | None, provider: ExecutionProvider) -> Decoder:
    return Decoder(manifest.model, sessions.embedding, sessions.decoder, adapters, context_length,
                   int8_prompt=sessions.prompt, prefill_chunk=prefill_chunk, provider=provider)


def static_decoder(manifest: Manifest, sessions: TextSessions, adapters: AdapterSet, context_length: int | None,
                   prefill_chunk: int | None, provider: ExecutionProvider) -> NpuDecoder:
    # The static graphs run prompts in their own chunk (manifest.npu.chunk): --prefill-chunk does not apply.
    return NpuDecoder(manifest.model, sessions.embedding, sessions.decoder, sessions.prompt, adapters, manifest.npu,
                      context_length)


RUNTIME_TARGETS = {
    "cpu": RuntimeTarget(runs_on={CPU: "CPU"}, auto_note="", made_for="the CPU", prompt_graph=int8_prompt_graph,
                         decoder=dynamic_decoder, image_graph=whole_image, clip_graph=WholeClip),
    "npu": RuntimeTarget(runs_on={"qnn": "QNN HTP (NPU)", CPU: "CPU (the NPU artifact's static graphs, on the CPU)"},
                         auto_note=", chosen by --provider auto for this NPU artifact", made_for="the NPU",
                         prompt_graph=npu_prompt_graph, decoder=static_decoder, image_graph=crop_by_crop,
                         clip_graph=ClipWindows),
    "dml": RuntimeTarget(runs_on={"dml": "DirectML", CPU: "CPU"},
                         auto_note=", chosen by --provider auto for this DirectML artifact",
                         made_for="DirectML (its fp16 graphs run on the CPU too)", prompt_graph=int8_prompt_graph,
                         decoder=dynamic_decoder, image_graph=whole_image, clip_graph=WholeClip),
}
