"""Int4 (and 8-bit) block quantization: error bounds, and the layout ONNX Runtime's kernels read."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from phi4mm_edge.quant import int4, int8
from phi4mm_edge.quant.error import relative_rms_error


def weight(n=48, k=256, seed=0):
    return np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)


def block_scales(q: int4.Int4Weight) -> np.ndarray:
    """Each element's block scale, [N, K]."""
    return np.repeat(np.abs(q.scales), q.block_size, axis=1)[:, : q.shape[1]]


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block_size", [32, 64, 128])
def test_every_element_is_within_one_step_of_the_original(symmetric, block_size):
    # Rounding to the nearest of 16 levels errs by at most half a step; the one clipped level
    # (+8 has no code in symmetric mode, and a rounded zero point can shift the grid) by one step.
    w = weight(k=200)  # 200 is not a multiple of any block size: the last block is padded
    q = int4.quantize(w, block_size, symmetric)
    error = np.abs(int4.dequantize(q) - w)
    assert np.all(error <= block_scales(q) * (1 + 1e-6))
    assert np.mean(error <= block_scales(q) * 0.5 * (1 + 1e-6)) > 0.99


def test_symmetric_extreme_value_is_exact_and_asymmetric_keeps_zeros_exact():
    w = weight()
    w[:, 40] = 0.0
    sym, asym = int4.quantize(w, 32, True), int4.quantize(w, 32, False)
    extreme = np.abs(w[:, :32]).argmax(axis=1)
    rows = np.arange(w.shape[0])
    np.testing.assert_allclose(int4.dequantize(sym)[rows, extreme], w[rows, extreme], rtol=1e-6)
    assert np.all(int4.dequantize(asym)[:, 40] == 0.0)


def test_error_shrinks_with_the_block_size():
    w = weight(k=1024)
    errors = [relative_rms_error(w, int4.dequantize(int4.quantize(w, b))) for b in (32, 64, 128)]
    assert errors[0] < errors[1] < errors[2] < 0.15  # 4 bits on Gaussian weights: ~9-12% RMS


def _session(node, inputs, initializers):
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)], ir_version=10)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def matmul_nbits(q, accuracy_level: int):
    names = ["x", "B", "scales"] + (["zero_points"] if q.zero_points is not None else [])
    initializers = [numpy_helper.from_array(q.packed, "B"), numpy_helper.from_array(q.scales, "scales")]
    if q.zero_points is not None:
        initializers.append(numpy_helper.from_array(q.zero_points, "zero_points"))
    node = helper.make_node("MatMulNBits", names, ["y"], domain="com.microsoft", K=q.shape[1], N=q.shape[0],
                            bits=q.bits, block_size=q.block_size, accuracy_level=accuracy_level)
    return _session(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, q.shape[1]])], initializers)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("k", [256, 200])
def test_matmulnbits_computes_with_exactly_the_dequantized_weight(symmetric, k):
    # accuracy level 0 keeps activations in fp32: the only difference is summation order (1e-5).
    q = int4.quantize(weight(k=k), 32, symmetric)
    x = np.random.default_rng(1).standard_normal((5, k)).astype(np.float32)
    y = matmul_nbits(q, 0).run(None, {"x": x})[0]
    expected = x @ int4.dequantize(q).T
    assert np.abs(y - expected).max() <= 1e-5 * np.abs(expected).max()


def test_accuracy_level_4_costs_about_half_a_percent_per_matmul():
    # Level 4 rounds each activation block to int8. This is the per-matmul figure the int4
    # parity tolerance in test_parity.py is built from; 1% bounds the ~0.55% it measures.
    q = int4.quantize(weight(n=512, k=256), 32)
    x = np.random.default_rng(2).standard_normal((8, 256)).astype(np.float32)
    y = matmul_nbits(q, 4).run(None, {"x": x})[0]
    expected = x @ int4.dequantize(q).T
    assert 0 < relative_rms_error(expected, y) < 0.01


@pytest.mark.parametrize("symmetric", [True, False])
def test_gather_block_quantized_reads_the_same_bytes_as_matmulnbits(symmetric):
    # The tied embedding table is one int4 copy: GatherBlockQuantized must see MatMulNBits'
    # [N, blocks, blob] bytes as [N, K/2] rows and dequantize them identically (exact).
    q = int4.quantize(weight(n=100, k=256), 32, symmetric)
    names = ["data", "ids", "scales"] + (["zero_points"] if q.zero_points is not None else [])
    initializers = [numpy_helper.from_array(q.packed.reshape(100, -1), "data"), numpy_helper.from_array(q.scales, "scales")]
    if q.zero_points is not None:
        initializers.append(numpy_helper.from_array(q.zero_points, "zero_points"))
    node = helper.make_node("GatherBlockQuantized", names, ["y"], domain="com.microsoft", bits=4, block_size=32,
                            gather_axis=0, quantize_axis=1)
    session = _session(node, [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])], initializers)
    ids = np.array([0, 7, 99, 7, 42], np.int64)
    np.testing.assert_array_equal(session.run(None, {"ids": ids})[0], int4.dequantize(q)[ids])


@pytest.mark.parametrize("symmetric", [True, False])
def test_row_chunking_does_not_change_the_result(monkeypatch, symmetric):
    # Large tables are quantized a slice of rows at a time to bound memory; the bytes must not move.
    w = weight(n=300, k=64)
    whole = int4.quantize(w, 32, symmetric)
    monkeypatch.setattr(int4, "CHUNK_ELEMENTS", 64 * 7)  # 7 rows per chunk, 43 chunks
    chunked = int4.quantize(w, 32, symmetric)
    np.testing.assert_array_equal(whole.packed, chunked.packed)
    np.testing.assert_array_equal(whole.scales, chunked.scales)
    if not symmetric:
        np.testing.assert_array_equal(whole.zero_points, chunked.zero_points)


def test_8_bit_blocks_err_a_tenth_of_int4_and_both_kernels_read_them_exactly():
    # The token table at 8 bits (ExportOptions.token_table_bits): 127 steps a side instead of 8,
    # so ~16x finer than int4 on the same blocks; GatherBlockQuantized (the embedding) and
    # MatMulNBits (the tied lm_head) must read its [N, blocks, block] bytes identically.
    w = weight(n=100, k=200)  # 200 pads the last block of 32
    q = int8.quantize_blocks(w, 32)
    assert relative_rms_error(w, q.dequantize()) < relative_rms_error(w, int4.dequantize(int4.quantize(w, 32))) / 10
    x = np.random.default_rng(1).standard_normal((5, 200)).astype(np.float32)
    y = matmul_nbits(q, 0).run(None, {"x": x})[0]
    expected = x @ q.dequantize().T
    assert np.abs(y - expected).max() <= 1e-5 * np.abs(expected).max()
    node = helper.make_node("GatherBlockQuantized", ["data", "ids", "scales"], ["y"], domain="com.microsoft", bits=8,
                            block_size=32, gather_axis=0, quantize_axis=1)
    initializers = [numpy_helper.from_array(q.packed.reshape(100, -1), "data"), numpy_helper.from_array(q.scales, "scales")]
    session = _session(node, [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])], initializers)
    ids = np.array([0, 7, 99, 7, 42], np.int64)
    np.testing.assert_array_equal(session.run(None, {"ids": ids})[0][:, :200], q.dequantize()[ids])


def test_8_bit_row_chunking_does_not_change_the_result(monkeypatch):
    w = weight(n=300, k=64)
    whole = int8.quantize_blocks(w, 32)
    monkeypatch.setattr(int4, "CHUNK_ELEMENTS", 64 * 7)
    chunked = int8.quantize_blocks(w, 32)
    np.testing.assert_array_equal(whole.packed, chunked.packed)
    np.testing.assert_array_equal(whole.scales, chunked.scales)


@pytest.mark.parametrize("symmetric", [True, False])
def test_an_int4_residual_makes_a_two_step_code_about_as_fine_as_8_bit_blocks(monkeypatch, symmetric):
    # The rescored token table (export/embedding.py): int4 + its int4 residual. Bound from
    # int4.quantize_residual's reasoning: every value within max|w| / 64 of its block's largest
    # (measured: 1/128), RMS error at most 1.25x 8-bit blocks' (measured 1.10x) and under a tenth
    # of int4's alone (measured 1/15). Chunking by rows changes no byte.
    w = weight(n=300, k=200)  # 200 pads the last block of 32
    coarse = int4.quantize(w, 32, symmetric)
    residual = int4.quantize_residual(w, coarse)
    two_step = int4.dequantize(coarse) + int4.dequantize(residual)
    padded = np.pad(w, ((0, 0), (0, 24)))
    block_max = np.repeat(np.abs(padded.reshape(300, 7, 32)).max(-1), 32, axis=1)[:, :200]
    assert (np.abs(two_step - w) <= block_max / 64).all()
    assert relative_rms_error(w, two_step) <= 1.25 * relative_rms_error(w, int8.quantize_blocks(w, 32).dequantize())
    assert relative_rms_error(w, two_step) < relative_rms_error(w, int4.dequantize(coarse)) / 10
    monkeypatch.setattr(int4, "CHUNK_ELEMENTS", 200 * 7)
    chunked = int4.quantize_residual(w, coarse)
    np.testing.assert_array_equal(residual.packed, chunked.packed)
    np.testing.assert_array_equal(residual.scales, chunked.scales)
