"""Int4 block-wise weight quantization along the input (K) dimension.

A weight W [N, K] (N outputs, K inputs) is cut into blocks of `block_size` consecutive inputs
per output row; each block gets one fp32 scale and, when asymmetric, one 4-bit zero point:

    W[n, k] ~= (q[n, k] - zero_point[n, k // block_size]) * scale[n, k // block_size]

Symmetric blocks use the fixed zero point 8 (ONNX Runtime's default for 4 bits), so q - 8 spans
[-8, 7]; the scale is chosen so the block's largest-magnitude value maps exactly to -8.

Packing (MatMulNBits' `B` and GatherBlockQuantized's uint8 `data`): two 4-bit values per byte
along K, the even index in the low nibble. Zero points pack the same way along the block axis.
"""

from dataclasses import dataclass

import numpy as np

BITS = 4
LEVELS = 1 << BITS  # 16 quantization levels
SYMMETRIC_ZERO_POINT = LEVELS // 2  # 8, what ONNX Runtime assumes when no zero point is given
BLOCK_SIZES = (16, 32, 64, 128, 256)


@dataclass
class Int4Weight:
    """A block-quantized [N, K] weight in ONNX Runtime's layout."""

    packed: np.ndarray  # uint8 [N, k_blocks, block_size // 2]
    scales: np.ndarray  # float32 [N, k_blocks]
    zero_points: np.ndarray | None  # uint8 [N, ceil(k_blocks / 2)], None when symmetric
    shape: tuple[int, int]  # (N, K) before padding K up to whole blocks
    block_size: int
    bits = 4  # MatMulNBits' and GatherBlockQuantized's `bits`

    @property
    def k_blocks(self) -> int:
        return self.scales.shape[1]

    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales.nbytes + (0 if self.zero_points is None else self.zero_points.nbytes)


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """uint8 values in [0, 15] with an even last dimension -> bytes, even index in the low nibble."""
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    """Inverse of pack_nibbles: the last dimension doubles."""
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


CHUNK_ELEMENTS = 1 << 24  # rows are quantized in chunks of ~16M weights: float temporaries stay ~64 MB each


def quantize(weight: np.ndarray, block_size: int, symmetric: bool = True) -> Int4Weight:
    """Quantize a float weight [N, K] block-wise along K. Returns an Int4Weight.
    Large weights (a 200064 x 3072 embedding) are done a slice of rows at a time, so the
    temporaries never approach the weight's own size."""
    if block_size not in BLOCK_SIZES:
        raise ValueError(f"block size {block_size} is not one of {BLOCK_SIZES}")
    return _joined([_quantize_rows(weight[rows], block_size, symmetric) for rows in row_chunks(weight)])


def row_chunks(weight: np.ndarray) -> list[slice]:
    """Slices of `weight`'s rows [N, K] of at most ~CHUNK_ELEMENTS weights each (at least one row)."""
    n, k = weight.shape
    rows = max(1, CHUNK_ELEMENTS // max(k, 1))
    return [slice(i, i + rows) for i in range(0, n, rows)]


def _joined(parts: list[Int4Weight]) -> Int4Weight:
    """The quantized row slices `parts`, in order, as one weight (the one part itself when alone)."""
    if len(parts) == 1:
        return parts[0]
    zero_points = None if parts[0].zero_points is None else np.concatenate([p.zero_points for p in parts])
    return Int4Weight(np.concatenate([p.packed for p in parts]), np.concatenate([p.scales for p in parts]),
                      zero_points, (sum(p.shape[0] for p in parts), parts[0].shape[1]), parts[0].block_size)


def quantize_residual(weight: np.ndarray, coarse: Int4Weight) -> Int4Weight:
    """What `coarse` (an int4 quantization of `weight`) leaves out, itself in symmetric int4 blocks
    of the same size: coarse + residual is a two-step code about as fine as 8-bit blocks. A
    symmetric int4 block errs by at most max|w| / 8 (half a step of max|w| / 8, or the clipped
    +8th level opposite the extreme), so the residual's step is at most max|w| / 64 and two-step
    values err by at most max|w| / 64 (typically half a step of max|w| / 128, as 8-bit blocks;
    Gaussian weights: RMS error 1.1x 8-bit blocks', 1/15 of int4's). Done a slice of rows at a time."""
    return _joined([_quantize_rows(weight[rows] - dequantize(row_slice(coarse, rows)), coarse.block_size, True)
                    for rows in row_chunks(weight)])


def row_slice(q: Int4Weight, rows: slice) -> Int4Weight:
    """Some rows of a quantized weight (views, no copy)."""
    packed = q.packed[rows]
    zero_points = None if q.zero_points is None else q.zero_points[rows]
    return Int4Weight(packed, q.scales[rows], zero_points, (packed.shape[0], q.shape[1]), q.block_size)


def _quantize_rows(weight: np.ndarray, block_size: int, symmetric: bool) -> Int4Weight:
    n, k = weight.shape
    k_blocks = -(-k // block_size)
    padded = np.zeros((n, k_blocks * block_size), np.float32)
    padded[:, :k] = weight
    blocks = padded.reshape(n, k_blocks, block_size)

    if symmetric:
        # The signed value of largest magnitude maps to q = 0, i.e. -8 after the zero point.
        index = np.abs(blocks).argmax(axis=-1)[..., None]
        extreme = np.take_along_axis(blocks, index, axis=-1)[..., 0]
        scales = extreme / -SYMMETRIC_ZERO_POINT
        zero = np.full(scales.shape, SYMMETRIC_ZERO_POINT, np.float32)
    else:
        # The range always holds 0 so that exact zeros stay exact.
        low = np.minimum(blocks.min(axis=-1), 0.0)
        high = np.maximum(blocks.max(axis=-1), 0.0)
        scales = (high - low) / (LEVELS - 1)
        zero = np.zeros_like(scales)
        nonzero = scales != 0
        zero[nonzero] = np.clip(np.round(-low[nonzero] / scales[nonzero]), 0, LEVELS - 1)
    scales = scales.astype(np.float32)
    safe = np.where(scales == 0, 1.0, scales)[..., None]
    q = np.clip(np.round(blocks / safe) + zero[..., None], 0, LEVELS - 1).astype(np.uint8)

    packed = pack_nibbles(q.reshape(n, -1)).reshape(n, k_blocks, block_size // 2)
    zero_points = None
    if not symmetric:
        zp = zero.astype(np.uint8)
        if k_blocks % 2:
            zp = np.concatenate([zp, np.zeros((n, 1), np.uint8)], axis=1)
        zero_points = pack_nibbles(zp)
    return Int4Weight(packed, scales, zero_points, (n, k), block_size)


def dequantize(q: Int4Weight) -> np.ndarray:
    """The float32 [N, K] weight that ONNX Runtime computes with for this Int4Weight."""
    n, k = q.shape
    values = unpack_nibbles(q.packed.reshape(n, -1)).reshape(n, q.k_blocks, q.block_size).astype(np.float32)
    if q.zero_points is None:
        zero = np.full((n, q.k_blocks), SYMMETRIC_ZERO_POINT, np.float32)
    else:
        zero = unpack_nibbles(q.zero_points)[:, : q.k_blocks].astype(np.float32)
    return ((values - zero[..., None]) * q.scales[..., None]).reshape(n, -1)[:, :k]
