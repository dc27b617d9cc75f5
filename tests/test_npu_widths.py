"""NPU graphs of a checkpoint whose linear widths are not whole int4 blocks (SigLIP's MLP width
4304 at block 32 is one): the QNN HTP refuses such a MatMulNBits ("K must be divisible by
block_size"), so the NPU export pads its input with zero columns (export/whole_blocks.py). Checked
on Qualcomm's HTP simulator with CPU fallback disabled, against the CPU artifact of the same
checkpoint; and the error a node the HTP refuses gives.
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from PIL import Image

from phi4mm_edge import Phi4MMError
from phi4mm_edge.export.convert import export
from phi4mm_edge.export.graph_files import AS_BUILT, write_graph
from phi4mm_edge.export.npu import NPU_GRAPH
from phi4mm_edge.export.onnx_graph import MS_DOMAIN
from phi4mm_edge.export.options import ExportOptions
from phi4mm_edge.export.reference_checkpoint import tiny_config, write_reference
from phi4mm_edge.quant import int4
from phi4mm_edge.runtime import Phi4MMEdge, qnn
from phi4mm_edge.runtime.providers import choose_provider, session_options
from phi4mm_edge.runtime.targets import RUNTIME_TARGETS
from conftest import HTP_CROP
from reference_steps import relative_l2
from test_npu import AUDIO_WINDOW, CONTEXT, HTP_BOUND, INT4_EXACT, QUESTION, ROUTES, route_logits
from test_speech import espeak

# Input widths of a linear (K) that are not multiples of the block (32): the text MLP's
# down_proj, SigLIP's fc2, the conformer's feed-forward down_proj and its subsampling output
# (nemo_conv_channels x 10 frequency bins = 600).
WIDTHS = {"intermediate_size": 500, "vision_intermediate_size": 120, "audio_intermediate_size": 120,
          "nemo_conv_channels": 60}
ROUTE = "audio+image"  # every NPU graph in one route: embedding, prompt and decode graphs, crop, window


def needs_qnn():
    pytest.importorskip("onnxruntime_qnn", reason="onnxruntime-qnn is not installed here (pip install onnxruntime-qnn)")


# -- one linear: what the HTP takes, and the error when it refuses --------------------------------
def one_linear(folder, name: str, k: int, padded: bool):
    """[1, 4, k] -> [1, 4, 16] through one int4 MatMulNBits at block 32, finished for the NPU or not."""
    weight = np.random.default_rng(0).standard_normal((16, k)).astype(np.float32)
    quantized = int4.quantize(weight, 32)

    def build(graph):
        x = graph.input("x", TensorProto.FLOAT, [1, 4, k])
        y = graph.op("MatMulNBits", [x, graph.weight("w", quantized.packed), graph.weight("s", quantized.scales)],
                     outputs=["y"], domain=MS_DOMAIN, name=name, K=k, N=16, bits=4, block_size=32,
                     accuracy_level=0)
        graph.output(y, TensorProto.FLOAT, [1, 4, 16])

    write_graph(folder, f"{name}.onnx", build, NPU_GRAPH if padded else AS_BUILT)
    return folder / f"{name}.onnx", quantized


def test_the_htp_takes_siglips_mlp_width_once_padded_to_whole_blocks(tmp_path):
    needs_qnn()
    path, quantized = one_linear(tmp_path, "fc2", 4304, padded=True)
    assert [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node] == ["Pad", "MatMulNBits"]
    session, _ = qnn.open_htp_session(path, session_options)
    x = np.random.default_rng(1).standard_normal((1, 4, 4304)).astype(np.float32)
    y = session.run(None, {"x": x})[0]
    # fp16 activations on the HTP: measured 4.7e-4 relative L2 (fp16's unit roundoff, 4.9e-4, per
    # rounding); the padded columns add exact zeros. 2e-3 is 4x that; a wrong pad (columns moved
    # onto other weights) errs by ~100%.
    assert relative_l2(y, x @ int4.dequantize(quantized).T) < 2e-3


def test_a_node_the_htp_refuses_is_named_with_its_graph_and_the_fix(tmp_path):
    needs_qnn()
    path, _ = one_linear(tmp_path, "fc2", 4304, padded=False)
    with pytest.raises(Phi4MMError) as refused:  # as Phi4MMEdge.load opens an NPU artifact's graph
        qnn.open_htp_session(path, session_options)
    message = str(refused.value)
    assert "1 node(s) of fc2.onnx" in message and "fc2 (MatMulNBits)" in message, message
    assert "exported for the NPU, so this checkpoint's shapes" in message and "re-export it" in message, message
    assert "must be exported with --target npu" not in message  # what it said of NPU artifacts before
    # The HTP's fix speaks of an NPU artifact because no other target's graphs reach it: a CPU
    # artifact is refused on the QNN provider before any graph is opened.
    with pytest.raises(Phi4MMError, match=r"exported for the CPU; export one for the NPU with .*--target npu"):
        choose_provider("qnn", RUNTIME_TARGETS["cpu"])


# -- a whole checkpoint of such widths ------------------------------------------------------------
@pytest.fixture(scope="module")
def odd_widths(tmp_path_factory):
    """The NPU export (int4, fp32 activations on the CPU EP) and the CPU export of a tiny
    checkpoint with WIDTHS, 112-pixel crops; the CPU one with int4 encoders, int4 token table and
    fp32 adapters, so its linears are the NPU's int4 blocks."""
    root = tmp_path_factory.mktemp("odd_widths")
    config = tiny_config()
    config["intermediate_size"] = WIDTHS["intermediate_size"]
    config["vision_config"].update(intermediate_size=WIDTHS["vision_intermediate_size"], crop_size=HTP_CROP)
    config["audio_config"].update(intermediate_size=WIDTHS["audio_intermediate_size"],
                                  nemo_conv_channels=WIDTHS["nemo_conv_channels"])
    checkpoint = write_reference(root / "checkpoint", config=config)
    export(checkpoint, root / "npu", ExportOptions(INT4_EXACT, target="npu", npu_context=CONTEXT,
                                                   npu_audio_window=AUDIO_WINDOW), show_progress=False)
    export(checkpoint, root / "cpu", ExportOptions(INT4_EXACT, encoder_precision="int4", token_table="int4",
                                                   adapter_precision="fp32"), show_progress=False)
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).resize((200, 150), Image.BILINEAR)
    return {"npu": root / "npu", "cpu": root / "cpu", "media": (image, espeak("Hello there.", root / "hello.wav"))}


def cpu_artifact_logits(cpu: Phi4MMEdge, npu: Phi4MMEdge, media, ids: list[int]) -> tuple[list[np.ndarray], list[int]]:
    """The CPU artifact's logits for ROUTE's prompt, then after each of `ids` but the last fed in
    turn (teacher-forced), and their argmax: its encoders and decoder, over the token rows of the
    NPU artifact's embedding. Its own token table is int4, the NPU's fp16 (the checkpoint's bf16
    values exactly): alone, that moves logits by 14-20% relative L2 (measured)."""
    adapter, _, _ = ROUTES[ROUTE]
    image, clip = media
    prompt = cpu.prompt([{"role": "user", "content": "<|image_1|><|audio_1|>" + QUESTION}], [image], [clip])
    cpu.decoder.activate(adapter)
    embeds = npu.decoder.embed(np.array([prompt.token_ids]), prompt.image_features, prompt.audio_features)
    logits = [cpu.decoder.prefill(embeds, keep=1)[0, -1].copy()]
    for position, token in enumerate(ids[:-1], start=embeds.shape[1]):
        logits.append(cpu.decoder.prefill(npu.decoder.embed(np.array([[token]])), start=position, keep=1)[0, -1].copy())
    return logits, [int(np.argmax(row)) for row in logits]


@pytest.fixture(scope="module")
def on_the_cpu_ep(odd_widths):
    """ROUTE with one decode step through the NPU graphs on the CPU EP, and the CPU artifact's logits."""
    npu = Phi4MMEdge.load(odd_widths["npu"], provider="cpu")
    logits, ids = route_logits(npu, ROUTE, odd_widths["media"], steps=1)
    return dict(npu=npu, logits=logits, ids=ids,
                cpu=cpu_artifact_logits(Phi4MMEdge.load(odd_widths["cpu"]), npu, odd_widths["media"], ids))


def test_the_npu_graphs_pad_every_linear_of_odd_width(odd_widths):
    padded = {}
    for graph in ("decoder_npu.onnx", "decoder_prompt_npu.onnx", "vision_crop.onnx", "audio_window.onnx"):
        nodes = onnx.load(str(odd_widths["npu"] / graph), load_external_data=False).graph.node
        padded[graph] = sorted(n.name.removesuffix("/whole_blocks") for n in nodes if n.op_type == "Pad")
    layers = [f"layers.{i}.mlp.down_proj" for i in range(2)]
    assert padded["decoder_npu.onnx"] == padded["decoder_prompt_npu.onnx"] == layers
    assert padded["vision_crop.onnx"] == [f"vision.img_processor.encoder.layers.{i}.mlp.fc2" for i in range(2)]
    assert padded["audio_window.onnx"] == ["audio.encoder.embed.out"] + [
        f"audio.encoder.encoders.{i}.feed_forward_{side}.down_proj" for i in range(2) for side in ("in", "out")]


def test_odd_width_npu_graphs_on_the_cpu_compute_what_the_cpu_artifact_does(on_the_cpu_ep):
    # The same int4 blocks, fp32 activations on both; the NPU graphs pad K, the CPU artifact's
    # kernel takes it as it is. Measured relative L2 of logits: 1.1e-6 and 9.5e-7 (prompt, one
    # step); 1e-4 as in test_npu's comparison of the two artifacts. Zero columns moved onto real
    # weights would move them by tens of percent.
    cpu_logits, cpu_ids = on_the_cpu_ep["cpu"]
    errors = [relative_l2(a, b) for a, b in zip(on_the_cpu_ep["logits"], cpu_logits)]
    print("relative L2 per position", [f"{e:.2e}" for e in errors])
    assert max(errors) < 1e-4, errors
    assert on_the_cpu_ep["ids"] == cpu_ids


@pytest.fixture(scope="module")
def htp(odd_widths):
    """The NPU export loaded on the HTP simulator (every graph compiled, CPU fallback off) and ROUTE run."""
    needs_qnn()
    model = Phi4MMEdge.load(odd_widths["npu"], provider="qnn", preload_encoders=True)
    logits, ids = route_logits(model, ROUTE, odd_widths["media"], steps=1)
    return dict(model=model, logits=logits, ids=ids)


def test_every_npu_graph_of_odd_widths_compiles_on_the_htp(htp):
    model = htp["model"]
    assert model.provider == "qnn"
    for graph in ("embedding_npu.onnx", "decoder_npu.onnx", "decoder_prompt_npu.onnx", "vision_crop.onnx",
                  "audio_window.onnx"):
        assert qnn.cached_context(model.folder / graph, model.manifest.data_hashes(graph)) is not None, graph


def test_htp_logits_of_odd_widths_stay_within_fp16_of_the_cpu_artifact(htp, on_the_cpu_ep, odd_widths):
    # The bound of test_npu's HTP comparison (fp16 activations against fp32, two encoders before
    # the prompt), here against the CPU artifact fed the same token rows, teacher-forced on the
    # HTP's ids. Measured relative L2: 2.5e-3 (prompt) and 3.2e-3 (one step), as the HTP against
    # the same NPU graphs on the CPU EP; HTP_BOUND leaves 9x room. Greedy ids equal.
    cpu_logits, cpu_ids = cpu_artifact_logits(Phi4MMEdge.load(odd_widths["cpu"]), on_the_cpu_ep["npu"],
                                              odd_widths["media"], htp["ids"])
    errors = [relative_l2(a, b) for a, b in zip(htp["logits"], cpu_logits)]
    print("relative L2 per position", [f"{e:.2e}" for e in errors])
    assert max(errors) < HTP_BOUND, errors
    assert htp["ids"] == cpu_ids
