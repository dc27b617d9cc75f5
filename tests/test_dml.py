"""The DirectML artifact (export --target dml), checked where this machine can: every node against
DirectML's operator registrations in ONNX Runtime 1.24.4 (export/data/dml_operators.json), and
every graph run on ONNX Runtime's CPU EP with fp16 inputs, against the CPU artifact.

There is no DirectML here (it exists only on Windows), so the graphs run on the CPU EP, driven
by plain sessions (the runtime's fp16 support comes later). The CPU EP has fp16 kernels for
MatMulNBits, GroupQueryAttention and SimplifiedLayerNormalization; around the other ops ONNX
Runtime inserts Casts and computes them in fp32, a chain of such ops rounding to fp16 only where it
meets an fp16 kernel or a graph output. So the errors measured here are those of fp16 weights, KV
cache and the tensors between fp16 kernels, not of fp16 arithmetic in every kernel as DirectML
does it: a lower bound of DirectML's error, not its value.
"""

import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from phi4mm_edge import Phi4MMError, artifact
from phi4mm_edge.export.audio_encoder import build_audio_encoder
from phi4mm_edge.export.checkpoint import Checkpoint
from phi4mm_edge.export.convert import export
from phi4mm_edge.export.graph_files import write_graph
from phi4mm_edge.export.options import ExportOptions
from phi4mm_edge.export import dml as dml_graphs
from phi4mm_edge.export.whole_blocks import whole_k_blocks
from phi4mm_edge.export.dml_operators import unregistered_nodes
from phi4mm_edge.export.graph_blocks import Precision
from phi4mm_edge.export.onnx_graph import IR_VERSION, MS_DOMAIN, OPSET, ExternalData, Graph
from phi4mm_edge.export.value_types import infer_types
from phi4mm_edge.export.vision_encoder import build_vision_encoder
from phi4mm_edge.manifest import MANIFEST, read_manifest
from phi4mm_edge.quant import int4
from phi4mm_edge.runtime import Phi4MMEdge
from conftest import prompt_ids
from reference_steps import max_relative_error, paired_logits, relative_l2
from test_speech import espeak

# fp32 activations on the CPU EP, as "int4-exact"
INT4_EXACT = Precision(weights="int4", block_size=32, accuracy_level=0)
FP32 = Precision(weights="fp32")
STEPS = 4  # greedy decode steps after the prompt
QUESTION = [{"role": "user", "content": "Describe the picture and the sound in detail, please."}]
# Relative L2 bounds, each about 3x the worst value measured (ONNX Runtime 1.32 CPU EP, tiny model):
# - logits of the 2-layer decoder, 4.9e-4 (fp16's unit roundoff) per rounding of activations,
#   weights, KV cache and the fp16 logits themselves: measured 1.0e-3..6.2e-3 over the prompt and
#   4 steps, none/vision/speech, fp32 and int4 weights;
LOGITS_BOUND = 2e-2
# - a long prompt (2500 positions: past fp16's exact integers, 2048): measured 1.1e-3..1.4e-3;
#   without the fp32 rotary island (positions rounded to multiples of 2) 3.4e-2..1.7e-1;
LONG_PROMPT_BOUND = 5e-3
# - encoders' features and the embedding's rows: measured 3.5e-4..5.0e-4 (vision), 4.6e-4..6.0e-4
#   (audio, 2 chunks), 2.1e-4 (embedding: the fp16 table and features rounded once).
FEATURES_BOUND = 2e-3


@pytest.fixture(scope="module")
def dml_artifacts(checkpoints, tmp_path_factory):
    """The tiny native checkpoint exported for DirectML at int4 (level 0) and with fp32 weights (stored fp16)."""
    root = tmp_path_factory.mktemp("dml_artifacts")
    for name, precision in (("int4", INT4_EXACT), ("fp32", FP32)):
        export(checkpoints["native"], root / name, ExportOptions(precision, target="dml"), show_progress=False)
    return {"int4": root / "int4", "fp32": root / "fp32"}


@pytest.fixture(scope="module")
def cpu_models(artifacts):
    """The CPU artifacts the DirectML ones are compared with, loaded once: int4 with the plain int4
    token table, as DirectML's lm_head (the CPU default rescores its top logits, export/embedding.py)."""
    return {"fp32": Phi4MMEdge.load(artifacts["fp32-native"]),
            "int4": Phi4MMEdge.load(artifacts["int4-exact-table4"])}


@pytest.fixture(scope="module")
def dml_text(dml_artifacts):
    return {weights: DmlText(folder) for weights, folder in dml_artifacts.items()}


def session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the CPU EP's notes about Casts it inserts around fp16 nodes
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class DmlText:
    """embedding_dml.onnx and decoder_dml.onnx on the CPU EP, a sequence at a time, the KV cache
    as fp16 past/present tensors."""

    def __init__(self, folder):
        self.manifest = read_manifest(folder)
        self.text = self.manifest.model
        self.embedding = session(folder / self.manifest.graphs.embedding)
        self.decoder = session(folder / self.manifest.graphs.decoder)
        self.output_names = [o.name for o in self.decoder.get_outputs()]
        self.no_features = np.zeros((0, self.text.hidden_size), np.float16)
        # AdapterFormat's arrays live in the reader's memory: copied before it goes
        self.adapters = {name: {key: value.numpy().copy() for key, value in
                                ort.AdapterFormat.read_adapter(str(folder / entry.file)).get_parameters().items()}
                         for name, entry in self.manifest.adapters.items()}
        # "none": every LoRA input at rank 0
        self.adapters["none"] = {i.name: np.zeros([d if isinstance(d, int) else 0 for d in i.shape], np.float16)
                                 for i in self.decoder.get_inputs() if i.name.startswith(artifact.LORA_INPUT_PREFIX)}

    def embed(self, ids, image_features=None, audio_features=None) -> np.ndarray:
        features = [self.no_features if f is None else f.astype(np.float16) for f in (image_features, audio_features)]
        return self.embedding.run(None, {"input_ids": np.array(ids, np.int64), "image_features": features[0],
                                         "audio_features": features[1]})[0]

    def greedy(self, ids: list[int], adapter: str, steps: int, embed=None) -> tuple[list[np.ndarray], list[int]]:
        """Logits of the prompt's last position and of `steps` greedy steps, and the greedy ids;
        `embed(ids)` (another artifact's embedding) replaces embedding_dml.onnx."""
        text, embed = self.text, embed or self.embed
        cache = {f"past_key_values.{layer}.{kind}": np.zeros((1, text.num_kv_heads, 0, text.head_dim), np.float16)
                 for layer in range(text.num_layers) for kind in ("key", "value")}
        logits, chosen, run_ids, total = [], [], [ids], 0
        for _ in range(steps + 1):
            total += len(run_ids[-1])
            outputs = dict(zip(self.output_names, self.decoder.run(None, {
                "inputs_embeds": embed(np.array([run_ids[-1]])).astype(np.float16),
                "attention_mask": np.ones((1, total), np.int64), "logits_to_keep": np.array([1], np.int64),
                **cache, **self.adapters[adapter]})))
            assert outputs["logits"].dtype == np.float16
            logits.append(outputs["logits"][0, -1].astype(np.float32))
            chosen.append(int(np.argmax(logits[-1])))
            run_ids.append([chosen[-1]])
            cache = {name: outputs[name.replace("past_key_values", "present")] for name in cache}
        return logits, chosen


def decoded_logits(model: Phi4MMEdge, embeds: np.ndarray, adapter: str, tokens: list[int] | None = None,
                   steps: int = 0) -> list[np.ndarray]:
    """The runtime's logits for the prompt's last position, then one per decode step: feeding
    `tokens` in turn (teacher-forced), or without them each step's own argmax (greedy, `steps`)."""
    model.decoder.activate(adapter)
    logits = [model.decoder.prefill(embeds, keep=1)[0, -1].copy()]
    for i in range(steps if tokens is None else len(tokens)):
        logits.append(model.decoder.step(int(np.argmax(logits[-1])) if tokens is None else tokens[i]).copy())
    return logits


def cpu_greedy(model: Phi4MMEdge, ids: list[int], adapter: str, steps: int) -> tuple[list[np.ndarray], list[int]]:
    logits = decoded_logits(model, model.decoder.embed(np.array([ids])), adapter, steps=steps)
    return logits, [int(np.argmax(row)) for row in logits]


# -- DirectML's operator registrations ------------------------------------------------------------
def test_every_node_of_every_dml_graph_is_one_directml_registers(dml_artifacts, artifacts):
    for folder in dml_artifacts.values():
        manifest = read_manifest(folder)
        assert manifest.target == "dml" and manifest.graphs.decoder == artifact.DML_DECODER_GRAPH
        for graph in manifest.graph_files():
            assert unregistered_nodes(folder / graph) == [], graph
    # and the check can fail: the CPU artifact's int4 embedding is GatherBlockQuantized (table and
    # residual), its decoder chooses the built-in adapters with If (opset 21), neither registered by DirectML
    embedding = unregistered_nodes(artifacts["int4"] / artifact.EMBEDDING_GRAPH)
    assert {(n.domain, n.op_type) for n in embedding} == {(MS_DOMAIN, "GatherBlockQuantized")}
    assert "If" in {n.op_type for n in unregistered_nodes(artifacts["int4"] / artifact.DECODER_GRAPH)}


def one_node_model(tmp_path, node, inputs, initializers=()):
    graph = helper.make_graph([node], "g", inputs,
                              [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT16, None)],
                              list(initializers))
    model = helper.make_model(graph, ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)])
    path = tmp_path / f"{node.op_type}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_the_check_reads_tensor_types_and_support_queries(tmp_path):
    # DirectML's DynamicQuantizeMatMul takes fp32 activations only
    weight = numpy_helper.from_array(np.zeros((8, 8), np.int8), "w")
    scale = numpy_helper.from_array(np.ones(1, np.float16), "s")
    node = helper.make_node("DynamicQuantizeMatMul", ["x", "w", "s"], ["y"], domain=MS_DOMAIN, name="dqmm")
    found = unregistered_nodes(one_node_model(tmp_path, node,
                                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 8])],
                                              [weight, scale]))
    assert [(n.node, n.op_type) for n in found] == [("dqmm", "DynamicQuantizeMatMul")] and "float16" in found[0].reason
    # its MatMulNBits takes K only in whole blocks: SigLIP's 4304 at block 32 is not
    assert [n.op_type for n in unregistered_nodes(matmul_nbits_model(tmp_path, k=40, pad=False)[0])] == ["MatMulNBits"]


def matmul_nbits_model(tmp_path, k: int, pad: bool):
    """A one-linear fp16 graph with K = `k` inputs at block 32 (whole_k_blocks applied with `pad`)."""
    weight = np.random.default_rng(0).standard_normal((16, k)).astype(np.float32)
    quantized = int4.quantize(weight, 32)
    graph = Graph("linear", ExternalData(tmp_path / f"linear{pad}.onnx.data", float16=True))
    x = graph.input("x", TensorProto.FLOAT16, [3, k])
    y = graph.op("MatMulNBits",
                 [x, graph.weight("w", quantized.packed), graph.weight("s", quantized.scales.astype(np.float16))],
                 outputs=["y"], domain=MS_DOMAIN, K=k, N=16, bits=4, block_size=32, accuracy_level=0)
    graph.output(y, TensorProto.FLOAT16, [3, 16])
    if pad:
        whole_k_blocks(graph)
    path = tmp_path / f"linear{pad}.onnx"
    graph.save(path)
    return path, quantized


def test_a_linear_of_k_not_in_whole_blocks_is_padded_for_dml(tmp_path):
    path, quantized = matmul_nbits_model(tmp_path, k=40, pad=True)
    assert unregistered_nodes(path) == []
    x = np.random.default_rng(1).standard_normal((3, 40)).astype(np.float16)
    y = session(path).run(None, {"x": x})[0].astype(np.float32)
    dequantized = (int4.dequantize(quantized).astype(np.float16)).astype(np.float32)  # fp16 scales, as stored
    # fp16 scales, input and output: ~5e-4 per rounding; the padded columns add exact zeros
    assert relative_l2(y, x.astype(np.float32) @ dequantized.T) < 2e-3


# -- the graphs on the CPU EP against the CPU artifact ----------------------------------------------
@pytest.mark.parametrize("adapter", ["none", "vision", "speech"])
@pytest.mark.parametrize("weights", ["fp32", "int4"])
def test_dml_text_graphs_compute_what_the_cpu_artifact_does(cpu_models, dml_text, weights, adapter):
    # fp32 weights: the whole DirectML pipeline (fp16 table, fp16 decoder) against fp32-native.
    # int4: the DirectML token table is fp16 where the CPU artifact's is int4, so the decoder
    # alone, fed the int4 artifact's embeddings, against "int4-exact-table4" (same int4 blocks, level 0).
    cpu, dml = cpu_models[weights], dml_text[weights]
    ids = cpu.prompt_ids(QUESTION)
    cpu_logits, cpu_ids = cpu_greedy(cpu, ids, adapter, STEPS)
    dml_logits, dml_ids = dml.greedy(ids, adapter, STEPS, embed=None if weights == "fp32" else cpu.decoder.embed)
    assert dml_ids == cpu_ids
    errors = [relative_l2(d, c) for d, c in zip(dml_logits, cpu_logits)]
    assert max(errors) < LOGITS_BOUND, errors


def test_positions_past_2048_are_rotated_exactly(cpu_models, dml_text):
    # positions 2048.. are not integers in fp16 (steps of 2, then 4): the rotary tables are formed
    # in fp32 and only cos/sin go to fp16. Also past the tiny model's LongRoPE switch (64 positions).
    ids = prompt_ids(2500, seed=3)[0].tolist()
    cpu_logits, cpu_ids = cpu_greedy(cpu_models["fp32"], ids, "none", 2)
    dml_logits, dml_ids = dml_text["fp32"].greedy(ids, "none", 2)
    assert dml_ids == cpu_ids
    assert max(relative_l2(d, c) for d, c in zip(dml_logits, cpu_logits)) < LONG_PROMPT_BOUND


def test_the_fp32_islands_stay_fp32(dml_artifacts):
    # The rotary angles (positions up to 131072; fp16 holds integers exactly only to 2048) and the
    # vision position buckets (a patch's fraction i / real of its crop, bucketed at k / 32: in
    # fp16 one patch of a crop 22 patches wide lands in the neighbouring bucket) are computed in
    # fp32. The CPU EP cannot show the bucket error (it runs fp16 Div/Mul/Min chains in fp32
    # between inserted Casts), so the graphs' types are checked instead.
    for graph, op_type in ((artifact.DML_DECODER_GRAPH, "Cos"), (artifact.DML_DECODER_GRAPH, "Sin"),
                           (artifact.DML_VISION_GRAPH, "GreaterOrEqual")):
        model = onnx.load(str(dml_artifacts["int4"] / graph), load_external_data=False)
        types = {v.name: v.type.tensor_type.elem_type for v in model.graph.input}
        types.update({t.name: t.data_type for t in model.graph.initializer})
        infer_types(model.graph.node, types, {"": OPSET, MS_DOMAIN: 1})
        nodes = [n for n in model.graph.node if n.op_type == op_type]
        assert nodes and all(types[name] == TensorProto.FLOAT for n in nodes for name in n.input), (graph, op_type)


@pytest.fixture(scope="module")
def media(cpu_models):
    """A 3-crop image and a 41 s clip (two chunks of the audio encoder's 500 tokens), preprocessed."""
    model = cpu_models["fp32"]
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).resize((500, 300), Image.BILINEAR)
    seconds = np.arange(16000 * 41) / 16000
    clip = (0.3 * np.sin(2 * np.pi * 220 * seconds) * (1 + np.sin(np.pi * seconds))
            + 0.05 * rng.standard_normal(seconds.size))
    return model.vision.prepare(image), model.audio.prepare((clip.astype(np.float32), 16000))


def image_features(path, image, dtype) -> np.ndarray:
    return session(path).run(None, {"pixel_values": image.pixel_values.astype(dtype),
                                    "attention_mask": image.attention_mask.astype(dtype),
                                    "crop_grid": np.array(image.crop_grid, np.int64)})[0]


def audio_features(path, audio, dtype, vision_mode: bool) -> np.ndarray:
    return session(path).run(None, {"input_features": audio.features[None].astype(dtype),
                                    "vision_mode": np.array(vision_mode)})[0]


@pytest.mark.parametrize("weights", ["fp32", "int4"])
def test_dml_encoders_compute_what_the_cpu_encoders_do(dml_artifacts, artifacts, checkpoints, media, tmp_path, weights):
    # fp32 weights against fp32-native's vision.onnx / audio.onnx; int4 against the same encoders
    # at int4 level 0 (the CPU artifact's default encoders are int8), built here
    image, audio = media
    cpu = artifacts["fp32-native"]
    if weights == "int4":
        cpu, checkpoint = tmp_path, Checkpoint(checkpoints["native"])
        write_graph(cpu, artifact.VISION_GRAPH, lambda g: build_vision_encoder(checkpoint, g, INT4_EXACT))
        write_graph(cpu, artifact.AUDIO_GRAPH, lambda g: build_audio_encoder(checkpoint, g, INT4_EXACT))
    dml = dml_artifacts[weights]
    features = image_features(dml / artifact.DML_VISION_GRAPH, image, np.float16)
    assert features.dtype == np.float16
    assert relative_l2(features, image_features(cpu / artifact.VISION_GRAPH, image, np.float32)) < FEATURES_BOUND
    for vision_mode in (False, True):
        features = audio_features(dml / artifact.DML_AUDIO_GRAPH, audio, np.float16, vision_mode)
        assert features.shape[0] == audio.num_tokens > 500  # two chunks: the bias expanded to both
        assert relative_l2(features,
                           audio_features(cpu / artifact.AUDIO_GRAPH, audio, np.float32, vision_mode)) < FEATURES_BOUND


def test_dml_embedding_places_features_as_the_cpu_artifact_does(cpu_models, dml_text):
    cpu, rng = cpu_models["fp32"], np.random.default_rng(7)
    image_rows, audio_rows = (rng.standard_normal((count, cpu.text.hidden_size)).astype(np.float32)
                              for count in (30, 20))
    ids = np.array([[1, 2] + [cpu.text.image_token_id] * 30 + [5] + [cpu.text.audio_token_id] * 20 + [7]])
    expected = cpu.decoder.embed(ids, image_rows, audio_rows)
    for dml in dml_text.values():  # int4 too: the DirectML token table is fp16 at any precision
        rows = dml.embed(ids, image_rows, audio_rows)
        assert rows.dtype == np.float16 and relative_l2(rows, expected) < FEATURES_BOUND


def test_the_dml_manifest_and_adapters(dml_artifacts):
    for weights, folder in dml_artifacts.items():
        manifest = read_manifest(folder)
        assert manifest.precision.weights == {"int4": "int4", "fp32": "fp16"}[weights]
        assert {a.precision for a in manifest.adapters.values()} == {"fp16"}
        assert all(a.graph_index == 0 for a in manifest.adapters.values())
        assert (manifest.vision.graph, manifest.audio.graph) == (artifact.DML_VISION_GRAPH, artifact.DML_AUDIO_GRAPH)


@pytest.mark.parametrize("options, message", [
    (dict(prefill="int8"), "--prefill int8"),
    (dict(adapter_precision="int4"), "--adapter-precision int4"),
    (dict(adapter_precision="fp32"), "--adapter-precision fp32"),
    (dict(encoder_precision="int8"), "--encoder-precision int8"),
])
def test_dml_export_refuses_cpu_only_options(checkpoints, tmp_path, options, message):
    with pytest.raises(Phi4MMError, match=message):
        export(checkpoints["native"], tmp_path / "out", ExportOptions(INT4_EXACT, target="dml", **options),
               show_progress=False)


def test_dml_export_refuses_to_finish_with_a_node_directml_lacks(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(dml_graphs, "contrib_gelu", lambda graph: None)  # ONNX's Gelu-20 stays in the encoders
    with pytest.raises(Phi4MMError, match=r"vision_dml/.*ai\.onnx Gelu-21: no DirectML kernel"):
        export(checkpoints["native"], tmp_path / "out", ExportOptions(INT4_EXACT, target="dml"), show_progress=False)
    assert not (tmp_path / "out" / MANIFEST).exists()  # the folder does not look like a finished export


# -- the runtime on a DirectML artifact --------------------------------------------------------
def forced_logits(model: Phi4MMEdge, prompt, adapter: str, tokens: list[int]) -> list[np.ndarray]:
    """decoded_logits for a prompt with media, teacher-forced on `tokens`."""
    embeds = model.decoder.embed(np.array([prompt.token_ids]), prompt.image_features, prompt.audio_features)
    return decoded_logits(model, embeds, adapter, tokens)


def test_the_runtime_runs_a_dml_artifact_on_the_cpu_as_the_cpu_artifact(dml_artifacts, cpu_models, tmp_path):
    # Phi4MMEdge feeds the fp16 graphs as they declare (runtime/tensor_types.py): fp16 KV cache,
    # embeddings, features and adapters. Teacher-forced on the fp32 CPU artifact's greedy tokens,
    # logits stay within DML_BOUND of it for text with each adapter and for an image + audio
    # prompt: fp16 activations; measured max relative L2 1.3e-3 (none), 1.2e-3 (vision), 3.8e-3
    # (speech), 7.9e-4 (image + audio); DML_BOUND is 5x the worst. (Free-running greedy answers can part
    # where the random model has a near-tie: seen here after 3 of 12 words on one prompt.)
    model = Phi4MMEdge.load(dml_artifacts["fp32"])  # auto: no DirectML here, so the CPU, and it says why
    assert model.provider == "cpu" and "onnxruntime-directml" in model.provider_note
    assert model.decoder.cache.arrays()[0].dtype == np.float16
    cpu = cpu_models["fp32"]
    picture = Image.fromarray(np.random.default_rng(3).integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((320, 240))
    clip = espeak("What colour is it?", tmp_path / "q.wav")
    requests = [("Tell me about the sea.", [], [], adapter) for adapter in ("none", "vision", "speech")]
    requests.append(("<|image_1|><|audio_1|>Answer the question.", [picture], [clip], "vision"))
    for text, images, audios, adapter in requests:
        expected = cpu.generate(text, images=images, audios=audios, max_new_tokens=6, adapter=adapter)
        expected.text()
        tokens = expected.result.token_ids[:-1]
        ours = forced_logits(model, model.prompt(text, images, audios), adapter, tokens)
        theirs = forced_logits(cpu, cpu.prompt(text, images, audios), adapter, tokens)
        errors = [relative_l2(a, b) for a, b in zip(ours, theirs)]
        print(adapter, "relative L2 max", f"{max(errors):.2e}")
        assert max(errors) < DML_BOUND, (adapter, errors)
        assert int(np.argmax(ours[0])) == expected.result.token_ids[0]


DML_BOUND = 2e-2


class FakeDevice:
    """Stands in for onnxruntime inside runtime/device.py: a value put on "dml" becomes a host
    *copy*, recorded, so nothing can reach it through a numpy array the runtime still holds (as
    nothing can reach device memory), and a run reads and writes only what was bound."""

    def __init__(self):
        self.placed = []  # (shape, dtype) of every value put on the device
        self.OrtValue = self  # device.py calls ort.OrtValue.ortvalue_from_numpy

    def ortvalue_from_numpy(self, array, device="cpu", device_id=0):
        if device == "cpu":
            return ort.OrtValue.ortvalue_from_numpy(array)
        assert device == "dml" and device_id == 0
        self.placed.append((array.shape, array.dtype))
        return ort.OrtValue.ortvalue_from_numpy(array.copy())


def test_on_directml_the_cache_adapters_and_step_row_live_on_the_device(dml_artifacts, monkeypatch, tmp_path):
    # Phi4MMEdge.load(provider="dml") as on Windows, but with the sessions on the CPU EP and the
    # device faked: the KV cache, every adapter tensor and the decode step's embedding row are put
    # on the device once, at load, and bound there (a host input would be copied to the GPU on
    # every run: the whole cache and 0.74-0.92 GB of LoRA tensors per token at full size). The
    # logits must equal, bit for bit, those of the same graphs with host buffers: same sessions'
    # kernels, same inputs; only where the buffers live differs.
    from phi4mm_edge.runtime import device, encoder_session, model as model_module, providers

    host = Phi4MMEdge.load(dml_artifacts["fp32"], provider="cpu")
    fake = FakeDevice()
    monkeypatch.setattr(device, "ort", fake)
    monkeypatch.setattr(model_module, "choose_provider", lambda requested, target: ("dml", "DirectML (faked)"))
    on_cpu = lambda path, options, provider, reads=None: providers.open_session(path, options, "cpu")  # noqa: E731
    monkeypatch.setattr(model_module, "open_session", on_cpu)
    monkeypatch.setattr(encoder_session, "open_session", on_cpu)
    gpu = Phi4MMEdge.load(dml_artifacts["fp32"], provider="dml", preload_encoders=False)
    assert providers.PROVIDERS[gpu.provider].device == "dml"
    assert not gpu.decoder.sequence.reuse_prefix and gpu.decoder.sequence.prefill_chunk is None
    text = gpu.manifest.model
    cache_shape = (1, text.num_kv_heads, gpu.decoder.cache.capacity, text.head_dim)
    lora_inputs = len(gpu.decoder.adapters.inputs)
    assert fake.placed.count((cache_shape, np.dtype(np.float16))) == 2 * text.num_layers
    assert fake.placed.count(((1, 1, text.hidden_size), np.dtype(np.float16))) == 1
    # "none" is empty: nothing to place
    assert len(fake.placed) == 2 * text.num_layers + 1 + lora_inputs * len(gpu.manifest.adapters)
    with pytest.raises(Phi4MMError, match="lives on the dml device"):
        gpu.decoder.cache.arrays()
    placed_at_load = len(fake.placed)
    picture = Image.fromarray(np.random.default_rng(4).integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((320, 240))
    clip = espeak("What colour is it?", tmp_path / "q.wav")
    requests = [("Tell me about the sea.", [], [], adapter) for adapter in ("none", "vision", "speech", "none")]
    requests.append(("<|image_1|><|audio_1|>Answer the question.", [picture], [clip], "vision"))
    tokens = prompt_ids(5, seed=3)[0].tolist()
    for text_, images, audios, adapter in requests:
        ours = forced_logits(gpu, gpu.prompt(text_, images, audios), adapter, tokens)
        theirs = forced_logits(host, host.prompt(text_, images, audios), adapter, tokens)
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs)), adapter
    assert len(fake.placed) == placed_at_load  # swaps and runs put nothing more on the device
    with pytest.raises(Phi4MMError, match="DirectML runs every prompt whole.*without --prefill-chunk"):
        Phi4MMEdge.load(dml_artifacts["fp32"], provider="dml", preload_encoders=False, prefill_chunk=64)


def test_provider_dml_without_directml_is_a_clear_error(dml_artifacts, artifacts):
    result = subprocess.run([sys.executable, "-m", "phi4mm_edge.cli", "run", str(dml_artifacts["int4"]),
                             "--provider", "dml", "--prompt", "hi"], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and not result.stdout
    assert "DirectML needs Windows and onnxruntime-directml" in result.stderr
    with pytest.raises(Phi4MMError, match="--target dml"):
        Phi4MMEdge.load(artifacts["int4"], provider="dml")  # a CPU artifact is never run as a DirectML one


@pytest.mark.parametrize("adapter", ["none", "vision", "speech"])
def test_the_dml_artifact_follows_the_pytorch_reference(dml_artifacts, reference, adapter):
    # transformers + PEFT in fp32, teacher-forced on its own greedy tokens (8 steps after a
    # 20-token prompt), against the DirectML artifact (fp32 weights stored fp16) run by the
    # runtime on the CPU EP: the fp16 rounding of weights and activations only. Measured max
    # |difference| / max |reference logit|: 1.8e-3 (none), 4.7e-3 (vision), 4.3e-3 (speech); the
    # bound holds 4x room over the worst.
    model = Phi4MMEdge.load(dml_artifacts["fp32"], provider="cpu")
    prefill, ref_prefill, decode, ref_decode = paired_logits(model, reference, adapter, prompt_ids(20))
    errors = [max_relative_error(prefill, ref_prefill)] + [max_relative_error(a, b) for a, b in zip(decode, ref_decode)]
    print(adapter, "max relative error", f"{max(errors):.2e}")
    assert max(errors) < REFERENCE_BOUND
    assert [int(np.argmax(step)) for step in decode] == [int(np.argmax(step)) for step in ref_decode]


REFERENCE_BOUND = 2e-2
