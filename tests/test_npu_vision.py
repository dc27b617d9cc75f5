"""The NPU vision encoder: vision_crop.onnx (one crop, static shapes) on Qualcomm's HTP, and the
numpy HD transform over its crops, against vision.onnx.

On x86_64 the HTP is Qualcomm's simulator: a 448-pixel crop (1024 patches) of the tiny model
took 87 s to run there, a 112-pixel one 0.8 s. The HTP tests therefore run the tiny checkpoint
with 112-pixel crops (the same weights and graph, 8x8 patches stretched over the trained 32x32
positions); the CPU tests compare the real 448-pixel geometry with vision.onnx.
"""

import time
from dataclasses import replace

import numpy as np
import pytest
from onnx import TensorProto
from PIL import Image

from phi4mm_edge.export.checkpoint import Checkpoint
from phi4mm_edge.export.graph_files import write_graph
from phi4mm_edge.export.graph_blocks import Precision
from phi4mm_edge.export.vision_encoder import VisionBuilder, position_ids
from phi4mm_edge.export.vision_encoder_npu import CROP_GRAPH, build_vision_crop_encoder, static_position_ids
from phi4mm_edge.manifest import read_manifest
from phi4mm_edge.runtime import qnn
from phi4mm_edge.runtime.providers import open_session, session_options
from phi4mm_edge.runtime.vision_encoder import VisionEncoder
from phi4mm_edge.runtime.vision_npu import crop_by_crop
from reference_steps import relative_l2

INT4_EXACT = Precision(weights="int4", block_size=32, accuracy_level=0)  # the CPU runs it with fp32 activations
FP32 = Precision(weights="fp32")


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    """Smooth noise, like a photo: a small random image upscaled."""
    small = np.random.default_rng(seed).integers(0, 256, (max(height // 16, 2), max(width // 16, 2), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BILINEAR)


def build_crop_graphs(checkpoint_folder, out):
    """{precision name: folder} with vision_crop.onnx for int4 (exact on the CPU) and fp32."""
    checkpoint = Checkpoint(checkpoint_folder)
    folders = {}
    for name, precision in (("int4", INT4_EXACT), ("fp32", FP32)):
        folders[name] = out / name
        folders[name].mkdir(parents=True)
        write_graph(folders[name], CROP_GRAPH, lambda graph: build_vision_crop_encoder(checkpoint, graph, precision))
    return folders


@pytest.fixture(scope="module")
def crop_graphs(checkpoints, tmp_path_factory):
    """Crop graphs of the tiny checkpoint as it is (448-pixel crops)."""
    return build_crop_graphs(checkpoints["native"], tmp_path_factory.mktemp("crop_graphs"))


@pytest.fixture(scope="module")
def small_crop(small_crop_checkpoint, tmp_path_factory):
    """(crop graphs, vision entry) of the tiny checkpoint with 112-pixel crops (conftest)."""
    graphs = build_crop_graphs(small_crop_checkpoint, tmp_path_factory.mktemp("small_crop_graphs"))
    return graphs, Checkpoint(small_crop_checkpoint).vision


@pytest.fixture(scope="module")
def fp32_entry(artifacts):
    """The fp32 artifact's vision entry, naming the crop graph as an NPU export does."""
    return replace(read_manifest(artifacts["fp32-native"]).vision, graph=CROP_GRAPH)


def needs_qnn():
    try:
        import onnxruntime_qnn  # noqa: F401
    except ImportError as error:
        pytest.skip(f"onnxruntime-qnn is not installed ({error}): the HTP graphs cannot be compiled here")


def small_entry(fp32_entry, vision):
    return replace(fp32_entry, graph=CROP_GRAPH, crop_size=vision.crop_size, max_crops=4)


# 200x150 at 112-pixel crops: 2x2 tiles, the lower two half padding (4 of 8 patch rows real).
HTP_IMAGE = noise_image(200, 150, seed=21)


@pytest.fixture(scope="module")
def htp_run(small_crop, fp32_entry):
    """The int4 crop graph compiled for the HTP (first open, no cached context): its encoder, the
    image, its features, and the compile and run seconds."""
    needs_qnn()
    graphs, vision = small_crop
    entry = small_entry(fp32_entry, vision)
    encoder = VisionEncoder(graphs["int4"], entry, session_options(), "qnn", graph=crop_by_crop)
    image = encoder.prepare(HTP_IMAGE)
    started = time.perf_counter()
    encoder.session.open()
    compiled = time.perf_counter()
    features = encoder.features(image)
    return encoder, image, features, compiled - started, time.perf_counter() - compiled


def test_crop_graph_compiles_and_runs_on_the_htp_without_cpu_fallback(htp_run):
    # The session disables CPU fallback: had any node not been taken by the HTP, opening it
    # would have raised. The compiled context is cached beside the graph for the next load.
    encoder, image, features, compile_seconds, run_seconds = htp_run
    assert image.pixel_values.shape[0] == 5 and image.attention_mask.min() == 0
    assert features.shape == (image.num_tokens, 256)
    assert np.isfinite(features).all()
    assert qnn.cached_context(encoder.session.path) is not None
    print(f"HTP compile {compile_seconds:.2f} s, {image.pixel_values.shape[0]} crops {run_seconds:.2f} s")


# (size, padded, distinct crops): a padded single tile differs from its global view (the view
# stretches the image, the tile pads it); a square image's one tile is its global view.
@pytest.mark.parametrize("size, padded, distinct",
                         [((900, 500), True, 7), ((300, 200), True, 2), ((448, 448), False, 1)],
                         ids=["3x2 tiles, padded", "one padded tile", "one tile equal to the global view"])
def test_crop_graph_and_numpy_arrangement_equal_vision_onnx(crop_graphs, artifacts, fp32_entry, size, padded, distinct):
    # The same fp32 math in another order (plain-op attention per crop vs the fused kernel over
    # all crops; the projection before the arrangement vs after): 1e-5 relative is ~100 float32
    # roundings; a misplaced row or separator would be O(1). Measured 0: ONNX Runtime's CPU
    # kernels happen to sum in the same order here, which another CPU or version need not do.
    whole = VisionEncoder(artifacts["fp32-native"], replace(fp32_entry, graph="vision.onnx"), session_options(), "cpu")
    per_crop = VisionEncoder(crop_graphs["fp32"], fp32_entry, session_options(), "cpu", graph=crop_by_crop)
    image = whole.prepare(noise_image(*size, seed=size[0]))
    assert (image.attention_mask.min() == 0) == padded
    expected = whole.features(image)
    session, runs = per_crop.session.open(), []

    class Counted:  # the crop graph's runs: a 1x1 tiling's tile is its global view, encoded once
        def run(self, *args):
            runs.append(args)
            return session.run(*args)

    per_crop.session.open = Counted
    got = per_crop.features(image)
    assert len(runs) == distinct
    assert got.shape == expected.shape
    assert relative_l2(got, expected) < 1e-5


@pytest.mark.parametrize("precision", ["int4", "fp32"])
def test_htp_fp16_features_stay_close_to_the_cpu(small_crop, fp32_entry, htp_run, precision):
    # The same graph on the CPU (fp32 activations; int4 at accuracy level 0, so both run the same
    # dequantized weights) and on the HTP (fp16 activations): what remains is fp16's ~5e-4
    # rounding per op over 2 encoder layers and the projection. Measured 1.2e-3 (int4) and 2.9e-3
    # (fp32: its weights are rounded to fp16 too); 1e-2 leaves >3x margin and still catches a
    # wrong position or mask, which moves features by O(0.1-1).
    needs_qnn()
    graphs, vision = small_crop
    entry = small_entry(fp32_entry, vision)
    if precision == "int4":
        encoder, image, htp, _, _ = htp_run
    else:
        encoder = VisionEncoder(graphs[precision], entry, session_options(), "qnn", graph=crop_by_crop)
        image = encoder.prepare(HTP_IMAGE)
        htp = encoder.features(image)
    cpu = VisionEncoder(graphs[precision], entry, session_options(), "cpu", graph=crop_by_crop).features(image)
    error = relative_l2(htp, cpu)
    print(f"{precision}: HTP fp16 vs CPU fp32 relative L2 {error:.2e}")
    assert error < 1e-2


def test_cached_context_gives_identical_features(htp_run):
    # The second load opens the EPContext model runtime/qnn.py wrote on the first: the same
    # compiled binary, so the features are bit for bit the same (no tolerance), and no compile.
    encoder, image, features, _, _ = htp_run
    context = qnn.cached_context(encoder.session.path)
    assert context is not None
    written = context.stat().st_mtime_ns
    again = VisionEncoder(encoder.session.path.parent, encoder.geometry, session_options(), "qnn", graph=crop_by_crop)
    started = time.perf_counter()
    again.session.open()
    print(f"HTP load from the cached context {time.perf_counter() - started:.2f} s")
    np.testing.assert_array_equal(again.features(image), features)
    assert context.stat().st_mtime_ns == written


def test_htp_positions_equal_vision_onnx_for_every_padded_extent(checkpoints, tmp_path):
    # Exact: a position is an index. In fp16, vision.onnx's arithmetic (patch / real count against
    # bucket bounds) put patch 11 of 22 real ones in the bucket below (measured); the crop graph
    # looks its buckets up by the real count instead. Every count 1..32 is checked, rows and
    # columns with different ones.
    needs_qnn()
    vision = Checkpoint(checkpoints["native"]).vision
    side = vision.patches_per_side
    for name, positions in (("npu", static_position_ids), ("cpu", position_ids)):
        def build(graph, positions=positions):
            mask = graph.input("attention_mask", TensorProto.FLOAT, [1, side, side])
            as_float = graph.cast(positions(VisionBuilder(graph, FP32, vision, fused_attention=False), mask),
                                  TensorProto.FLOAT)
            graph.op("Identity", [as_float], outputs=["positions"])
            graph.output("positions", TensorProto.FLOAT, [1, side * side])
        write_graph(tmp_path, f"{name}.onnx", build)
    htp, _ = qnn.open_htp_session(tmp_path / "npu.onnx", session_options)
    cpu = open_session(tmp_path / "cpu.onnx", session_options(), "cpu")
    for real in range(1, side + 1):
        mask = np.zeros((1, side, side), np.float32)
        mask[:, :real, :side + 1 - real] = 1
        feeds = {"attention_mask": mask}
        np.testing.assert_array_equal(htp.run(None, feeds)[0], cpu.run(None, feeds)[0], err_msg=f"{real} real rows")
