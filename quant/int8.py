"""Int8 per-output-channel weights for the int8 prompt graph's integer GEMM.

The int8 prompt graph and the encoders multiply uint8 activations (rounded per row:
export/graph_blocks.row_scaled_int8_matmul) by an int8 weight with one scale per output column,
through MLAS's packed integer GEMM (ONNX Runtime's MatMulIntegerToFloat): on a 2-core
AVX2 machine it runs prompt-sized products at ~2x the throughput of MatMulNBits (benchmarks/
RESULTS.md).

    W_int8[k, n] = round(W[n, k] / scale[n]),   scale[n] = max_k |W[n, k]| / 63   (127 at 8 bits)

Seven bits by default, not eight: on AVX2 without VNNI, MLAS multiplies uint8 x int8 pairs with
vpmaddubsw, whose int16 pair sums saturate when 8-bit weights meet large activations (measured:
3-6% error at K=64 with 8 bits, 0.5-1% with 7; ONNX Runtime's own quantizer calls this
reduce_range). CPUs whose integer dot products accumulate in 32 bits (AVX-VNNI, AVX-512 VNNI,
AMX, ARM dotprod) do not saturate, and there 8 bits halve the weights' rounding step for the same
bytes and the same kernel time (`bits=8`; runtime/cpu.py decides where such a graph may run).

The int8 weights come from the checkpoint's weights, not from the int4 ones: per channel at 7
bits they are ~5x closer to the original than int4 blocks are (1.6% vs ~9% relative), and going
through int4 first would add the two errors. Prompts therefore run a slightly *more* faithful
model than decode; tests/test_parity.py holds both to the float reference.
"""

from dataclasses import dataclass

import numpy as np

from . import int4

LIMIT = 63  # 7 bits: see the module docstring (AVX2 vpmaddubsw saturation)
# Activations (export/graph_blocks.row_scaled_int8_matmul): each row divided by its peak |x|, on
# uint8 steps of 1/127 around 128, i.e. 1..255 (a full uint8 range, as the saturation bound assumes).
ROW_LIMIT = 127
ROW_ZERO_POINT = 128
WEIGHT_BITS = (7, 8)


@dataclass
class Int8Columns:
    weight_t: np.ndarray  # int8 [K, N]: the transposed weight, as MatMul's B
    scales: np.ndarray  # float32 [N]

    def dequantize(self) -> np.ndarray:
        """The float32 [N, K] weight the GEMM computes with."""
        return (self.weight_t.astype(np.float32) * self.scales).T


def quantize_columns(weight: np.ndarray, bits: int = 7) -> Int8Columns:
    """A float weight [N, K] -> int8 [K, N] with one scale per output n, at 7 or 8 bits."""
    if bits not in WEIGHT_BITS:
        raise ValueError(f"int8 column weights take {WEIGHT_BITS} bits, not {bits}")
    limit = 2 ** (bits - 1) - 1
    peak = np.abs(weight).max(axis=1)
    scales = np.where(peak == 0, 1.0, peak / limit).astype(np.float32)
    q = np.clip(np.rint(weight / scales[:, None]), -limit, limit).astype(np.int8)
    return Int8Columns(np.ascontiguousarray(q.T), scales)


BLOCK_ZERO_POINT = 128  # MatMulNBits' default zero point at 8 bits: q - 128 spans [-127, 127]


@dataclass
class Int8Blocks:
    """An [N, K] weight as MatMulNBits' 8-bit blocks along K: q [N, k_blocks, block_size] uint8,
    one scale per block, W ~= (q - 128) * scale."""

    packed: np.ndarray
    scales: np.ndarray  # float32 [N, k_blocks]
    shape: tuple[int, int]
    block_size: int
    zero_points = None  # symmetric: the default zero point
    bits = 8

    @property
    def k_blocks(self) -> int:
        return self.scales.shape[1]

    def dequantize(self) -> np.ndarray:
        n, k = self.shape
        return ((self.packed.astype(np.float32) - BLOCK_ZERO_POINT) * self.scales[..., None]).reshape(n, -1)[:, :k]


def quantize_blocks(weight: np.ndarray, block_size: int) -> Int8Blocks:
    """Symmetric 8-bit blocks of `block_size` along K (K padded with zeros to whole blocks). A
    large weight (the 200064 x 3072 token table) is done a slice of rows at a time, as in int4.py."""
    parts = [_block_rows(weight[rows], block_size) for rows in int4.row_chunks(weight)]
    return Int8Blocks(np.concatenate([q for q, _ in parts]), np.concatenate([s for _, s in parts]), weight.shape,
                      block_size)


def _block_rows(weight: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    n, k = weight.shape
    k_blocks = -(-k // block_size)
    blocks = np.zeros((n, k_blocks * block_size), np.float32)
    blocks[:, :k] = weight
    blocks = blocks.reshape(n, k_blocks, block_size)
    peak = np.abs(blocks).max(axis=-1)
    scales = np.where(peak == 0, 1.0, peak / 127).astype(np.float32)
    q = np.clip(np.rint(blocks / scales[..., None]), -127, 127) + BLOCK_ZERO_POINT
    return q.astype(np.uint8), scales
