"""The graph protos onnxruntime-genai runs (genai.py writes them): each is one of the artifact's
graphs with genai's input names and defaults, its initializers still naming the artifact's `.data`
files, so no weight is stored twice.

- pipeline_decoder: decoder.onnx with an adapter built in and defaults for what genai's phi4mm
  pipeline does not feed; text_graph: embedding + decoder in one proto, for genai's decoder-only
  model, whose adapters og.Adapters binds (index_adapters writes their files);
- vision_graph / audio_graph: a Loop running vision.onnx / audio.onnx once per image / clip of
  genai's batch.

Inputs genai does not feed get defaults: ONNX "overridable initializers", a graph input with an
initializer of the same name, which a feed (or an adapter's tensor) replaces.
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ..artifact import (ADAPTER_INDEX, ATTENTION_MASK, AUDIO_FEATURES, CROP_GRID, IMAGE_FEATURES, INPUT_FEATURES,
                        INPUT_IDS, INPUTS_EMBEDS, LOGITS, LOGITS_TO_KEEP, LORA_INPUT_PREFIX, PIXEL_VALUES, VISION_MODE)
from ..manifest import AudioEntry, Manifest, VisionEntry
from .adapter_format import adapter_tensors
from .onnx_graph import every_graph

INDEX_ADAPTER_SUFFIX = ".genai_adapter"
# genai's audio_projection_mode values: 0 text, 1 vision, 2 speech, 3 vision + speech. Our audio
# graph's vision_mode (the projection for audio beside an image) is mode 3.
VISION_AND_SPEECH = 3


# -- decoders -----------------------------------------------------------------------------------
def pipeline_decoder(out: Path, manifest: Manifest, adapter: str) -> onnx.ModelProto:
    """decoder.onnx with defaults for what the phi4mm pipeline does not feed (logits: see
    _last_logits_everywhere) and `adapter` built in: its adapter_index (int4/int8 adapters in the
    graph), or its A/B tensors read in place from its .onnx_adapter file (fp32/fp16 adapters), or
    rank-0 LoRA inputs when the artifact lacks that adapter."""
    model = load_proto(out, manifest.graphs.decoder)
    graph = model.graph
    entry = manifest.adapters.get(adapter)
    defaults = _last_logits_everywhere(graph, manifest.model.vocab_size)
    if _has_input(graph, ADAPTER_INDEX):
        defaults.update(_adapter_index_as_vector(graph, entry.graph_index if entry else 0))
    stored = adapter_tensors(out / entry.file) if entry and not entry.graph_index else {}
    if stored and next(iter(stored.values())).data_type == TensorProto.FLOAT16:
        _lora_inputs_as_fp16(graph)
    for value in graph.input:
        if value.name.startswith(LORA_INPUT_PREFIX):
            if value.name in stored:
                graph.initializer.append(stored[value.name])
            else:
                defaults[value.name] = np.zeros(_rank_zero_dims(value), _numpy_type(value))
    _add_defaults(graph, defaults)
    return model


def text_graph(out: Path, manifest: Manifest) -> onnx.ModelProto:
    """text_genai.onnx: input_ids -> the embedding graph -> the decoder graph, in one proto (each
    graph's initializers still name its own data files). Defaults: no image/audio features, the
    last position's logits (_last_logits_everywhere), rank-0 LoRA inputs (fp16 when the
    artifact's adapter files are fp16, so og.Adapters binds them as stored) and adapter_index [0]
    (_adapter_index_as_vector): og.Adapters replaces either."""
    embedding = load_proto(out, manifest.graphs.embedding)
    model = load_proto(out, manifest.graphs.decoder)
    graph = model.graph
    joined = {INPUT_IDS, IMAGE_FEATURES, AUDIO_FEATURES, INPUTS_EMBEDS}
    _prefix_names(embedding.graph, "embedding/", keep=joined)
    nodes = list(embedding.graph.node)
    defaults = {name: np.zeros((0, manifest.model.hidden_size), np.float32)
                for name in (IMAGE_FEATURES, AUDIO_FEATURES)}
    inputs = [value for value in embedding.graph.input]
    if _has_input(graph, ADAPTER_INDEX):
        defaults.update(_adapter_index_as_vector(graph, 0))
    if manifest.precision.adapters == "fp16":
        _lora_inputs_as_fp16(graph)
    defaults.update(_last_logits_everywhere(graph, manifest.model.vocab_size))
    for value in graph.input:
        if value.name.startswith(LORA_INPUT_PREFIX):
            defaults[value.name] = np.zeros(_rank_zero_dims(value), _numpy_type(value))
    inputs += [value for value in graph.input if value.name != INPUTS_EMBEDS]
    nodes += list(graph.node)
    del graph.node[:], graph.input[:]
    graph.node.extend(nodes)
    graph.input.extend(inputs)
    graph.initializer.extend(embedding.graph.initializer)
    _add_defaults(graph, defaults)
    model.opset_import.extend(o for o in embedding.opset_import
                              if all(o.domain != p.domain for p in model.opset_import))
    return model


def _last_logits_everywhere(graph: onnx.GraphProto, vocab_size: int) -> dict:
    """genai allocates logits [batch, positions, vocab] for a prompt and reads one row, the last
    position's (the last one that is not pad_token_id). The decoder computes that row alone
    (logits_to_keep [1]: lm_head over a 500-token prompt is ~0.3 T multiply-adds at full size) and
    Expand repeats it into every row genai allocated, so any row genai reads holds the last
    position's logits, which is what our runtime samples from. Returns the initializers to add."""
    _rename_uses(graph, {LOGITS: "genai/last_logits"})
    graph.node.extend([
        helper.make_node("Shape", [INPUTS_EMBEDS], ["genai/batch_and_positions"], start=0, end=2),
        helper.make_node("Concat", ["genai/batch_and_positions", "genai/vocab"], ["genai/logits_shape"], axis=0),
        helper.make_node("Expand", ["genai/last_logits", "genai/logits_shape"], [LOGITS], name="genai/logits")])
    return {LOGITS_TO_KEEP: np.array([1], np.int64), "genai/vocab": np.array([vocab_size], np.int64)}


def _adapter_index_as_vector(graph: onnx.GraphProto, default: int) -> dict:
    """Redeclare the decoder's adapter_index [] as [1], squeezed to the scalar its If nodes test:
    ONNX Runtime's adapter files refuse rank-0 tensors, so a `.genai_adapter` holds it as [1].
    Returns the initializers to add: its default and the Squeeze axes."""
    _rename_uses(graph, {ADAPTER_INDEX: "genai/adapter_index"})
    graph.node.insert(0, helper.make_node("Squeeze", [ADAPTER_INDEX, "genai/axis0"], ["genai/adapter_index"],
                                          name="genai/adapter_index"))
    for value in graph.input:
        if value.name == ADAPTER_INDEX:
            value.CopyFrom(helper.make_tensor_value_info(ADAPTER_INDEX, TensorProto.INT64, [1]))
    return {ADAPTER_INDEX: np.array([default], np.int64), "genai/axis0": np.array([0], np.int64)}


def index_adapters(out: Path, manifest: Manifest) -> list[str]:
    """`<name>.genai_adapter` for each adapter built into the decoder graph: an AdapterFormat file
    holding only adapter_index [1] (a few bytes; the adapter's weights stay in the graph)."""
    written = []
    for name, entry in manifest.adapters.items():
        if entry.graph_index:
            adapter = ort.AdapterFormat()
            adapter.set_adapter_version(1)
            adapter.set_model_version(1)
            adapter.set_parameters(
                {ADAPTER_INDEX: ort.OrtValue.ortvalue_from_numpy(np.array([entry.graph_index], np.int64))})
            adapter.export_adapter(str(out / f"{name}{INDEX_ADAPTER_SUFFIX}"))
            written.append(f"{name}{INDEX_ADAPTER_SUFFIX}")
    return written


# -- encoders -----------------------------------------------------------------------------------
def vision_graph(out: Path, vision: VisionEntry, hidden_size: int) -> onnx.ModelProto:
    """vision_genai.onnx: genai's batch of images -> image_features of every image, in order.
    genai feeds pixel_values [images, crops, 3, crop, crop] and image_attention_mask
    [images, crops, patches, patches] (crops padded to the most any image has) and image_sizes
    [images, 2] (the HD image's height and width in pixels). A Loop runs vision.onnx once per
    image on its own 1 + rows x cols crops, crop_grid = image_sizes // crop_size."""
    patches = vision.patches_per_side
    inputs = [helper.make_tensor_value_info(PIXEL_VALUES, TensorProto.FLOAT,
                                            ["images", "crops", 3, vision.crop_size, vision.crop_size]),
              helper.make_tensor_value_info("image_attention_mask", TensorProto.FLOAT,
                                            ["images", "crops", patches, patches]),
              helper.make_tensor_value_info("image_sizes", TensorProto.INT64, ["images", 2])]
    per_item = [
        helper.make_node("Gather", ["image_sizes", "genai/i"], ["genai/size"], axis=0),
        helper.make_node("Div", ["genai/size", "genai/crop_size"], ["genai/crop_grid"]),
        helper.make_node("ReduceProd", ["genai/crop_grid"], ["genai/tiles"], keepdims=1),
        helper.make_node("Add", ["genai/tiles", "genai/one"], ["genai/crops"]),  # the global view + the tiles
        *_slice_item(PIXEL_VALUES, "genai/crops", "genai/pixel_values"),
        *_slice_item("image_attention_mask", "genai/crops", "genai/attention_mask"),
    ]
    constants = {"genai/crop_size": np.array(vision.crop_size, np.int64), "genai/one": np.array([1], np.int64)}
    renamed = {PIXEL_VALUES: "genai/pixel_values", ATTENTION_MASK: "genai/attention_mask", CROP_GRID: "genai/crop_grid"}
    return _loop_over_items(load_proto(out, vision.graph), inputs, PIXEL_VALUES, per_item, constants, renamed,
                            IMAGE_FEATURES, hidden_size)


def audio_graph(out: Path, audio: AudioEntry, hidden_size: int) -> onnx.ModelProto:
    """audio_genai.onnx: genai's batch of clips -> audio_features of every clip, in order. genai
    feeds audio_embeds [clips, frames, mel] (log-mel, padded to the longest clip),
    audio_attention_mask [clips, frames] (bool, true on a clip's own frames), audio_sizes [clips]
    (tokens; declared because genai's processor looks its type up, not read) and
    audio_projection_mode [1]. A Loop runs audio.onnx once per clip on its own frames; audio.onnx
    itself cuts clips of more than 500 tokens into the reference's chunks."""
    inputs = [helper.make_tensor_value_info("audio_embeds", TensorProto.FLOAT, ["clips", "frames", audio.mel_bins]),
              helper.make_tensor_value_info("audio_attention_mask", TensorProto.BOOL, ["clips", "frames"]),
              helper.make_tensor_value_info("audio_sizes", TensorProto.INT64, ["clips"]),
              helper.make_tensor_value_info("audio_projection_mode", TensorProto.INT64, [1])]
    per_item = [
        helper.make_node("Gather", ["audio_attention_mask", "genai/i"], ["genai/mask"], axis=0),
        helper.make_node("Cast", ["genai/mask"], ["genai/mask_int"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["genai/mask_int"], ["genai/frames"], keepdims=1),
        *_slice_item("audio_embeds", "genai/frames", "genai/clip"),
        helper.make_node("Unsqueeze", ["genai/clip", "genai/zero"], ["genai/input_features"]),  # [1, frames, mel]
    ]
    before = [helper.make_node("Equal", ["audio_projection_mode", "genai/vision_and_speech"], ["genai/is_vision_mode"]),
              helper.make_node("Squeeze", ["genai/is_vision_mode", "genai/zero"], ["genai/vision_mode"])]
    constants = {"genai/vision_and_speech": np.array([VISION_AND_SPEECH], np.int64)}
    renamed = {INPUT_FEATURES: "genai/input_features", VISION_MODE: "genai/vision_mode"}
    return _loop_over_items(load_proto(out, audio.graph), inputs, "audio_embeds", per_item, constants, renamed,
                            AUDIO_FEATURES, hidden_size, before)


def _slice_item(batch: str, count: str, result: str) -> list:
    """Nodes: result = batch[i][:count] (count a [1] tensor)."""
    return [helper.make_node("Gather", [batch, "genai/i"], [f"{result}/all"], axis=0),
            helper.make_node("Slice", [f"{result}/all", "genai/zero", count, "genai/zero"], [result])]


def _loop_over_items(encoder: onnx.ModelProto, inputs: list, batch_input: str, per_item: list, constants: dict,
                     renamed: dict, output: str, hidden_size: int, before: list = ()) -> onnx.ModelProto:
    """Wrap `encoder`'s graph in a Loop over the batch's first axis: the body takes item i's inputs
    (`per_item` nodes, reading the outer inputs and "genai/i"), runs the encoder's nodes with its
    inputs `renamed` to those, and appends the rows of its `output` to the carried result. The
    encoder's initializers move into the body (where ONNX Runtime prepacks them with the body's
    kernels); a graph input is never copied."""
    graph = encoder.graph
    _rename_uses(graph, {**renamed, output: "genai/item_features"})
    body = helper.make_graph(
        [*per_item, *graph.node,
         helper.make_node("Concat", ["genai/features_in", "genai/item_features"], ["genai/features_out"], axis=0),
         helper.make_node("Identity", ["genai/cond_in"], ["genai/cond_out"])],
        "item",
        [helper.make_tensor_value_info("genai/i", TensorProto.INT64, []),
         helper.make_tensor_value_info("genai/cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("genai/features_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("genai/cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("genai/features_out", TensorProto.FLOAT, None)],
        list(graph.initializer))
    nodes = [*before,
             helper.make_node("Shape", [batch_input], ["genai/batch_shape"], start=0, end=1),
             helper.make_node("Squeeze", ["genai/batch_shape"], ["genai/count"]),
             helper.make_node("Loop", ["genai/count", "genai/true", "genai/no_features"], [output],
                              name="genai/each_item", body=body)]
    constants = {**constants, "genai/zero": np.array([0], np.int64), "genai/true": np.array(True),
                 "genai/no_features": np.zeros((0, hidden_size), np.float32)}
    main = helper.make_graph(nodes, f"{graph.name}_genai", inputs,
                             [helper.make_tensor_value_info(output, TensorProto.FLOAT,
                                                            [f"{output}_rows", hidden_size])],
                             [numpy_helper.from_array(v, k) for k, v in constants.items()])
    return helper.make_model(main, ir_version=encoder.ir_version, opset_imports=encoder.opset_import,
                             producer_name=encoder.producer_name)


# -- proto helpers ------------------------------------------------------------------------------
def load_proto(out: Path, name: str) -> onnx.ModelProto:
    return onnx.load(str(out / name), load_external_data=False)


def save_proto(model: onnx.ModelProto, path: Path) -> None:
    """The proto alone: its external-data initializers keep naming the artifact's .data files."""
    path.write_bytes(model.SerializeToString())






def _has_input(graph: onnx.GraphProto, name: str) -> bool:
    return any(value.name == name for value in graph.input)


def _rank_zero_dims(value: onnx.ValueInfoProto) -> list[int]:
    """A LoRA input's dims with its symbolic rank 0: the no-adapter tensor."""
    return [d.dim_value if d.HasField("dim_value") else 0 for d in value.type.tensor_type.shape.dim]


def _numpy_type(value: onnx.ValueInfoProto):
    return helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)


def _add_defaults(graph: onnx.GraphProto, defaults: dict) -> None:
    """Initializers: the defaults of same-named inputs (a feed overrides them), or constants."""
    graph.initializer.extend(numpy_helper.from_array(np.asarray(value), name) for name, value in defaults.items())


def _lora_inputs_as_fp16(graph: onnx.GraphProto) -> None:
    """Declare the LoRA inputs fp16 (as an fp16 adapter file stores them) and cast them to the fp32
    the decoder computes in."""
    casts = []
    for value in graph.input:
        if value.name.startswith(LORA_INPUT_PREFIX):
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
            casts.append(helper.make_node("Cast", [value.name], [f"genai/{value.name}"], to=TensorProto.FLOAT))
    _rename_uses(graph, {node.input[0]: node.output[0] for node in casts})
    for position, node in enumerate(casts):
        graph.node.insert(position, node)


def _rename_uses(graph: onnx.GraphProto, renamed: dict) -> None:
    """Rename tensors where nodes (and nodes of every subgraph) read or write them."""
    for node in (node for nested in every_graph(graph) for node in nested.node):
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]


def _prefix_names(graph: onnx.GraphProto, prefix: str, keep: set) -> None:
    """Prefix every tensor, initializer and node name of a graph without subgraphs, but `keep`."""
    renamed = {name: prefix + name for node in graph.node for name in [*node.input, *node.output]
               if name and name not in keep}
    renamed.update({t.name: prefix + t.name for t in graph.initializer})
    _rename_uses(graph, renamed)
    for tensor in graph.initializer:
        tensor.name = renamed[tensor.name]
    for node in graph.node:
        node.name = prefix + node.name
