"""The two resizes of Phi-4-multimodal's image preprocessing, reproduced in numpy so the
runtime needs no torch. The executable reference is transformers' image processor, which calls
torchvision:

- `resize_uint8_antialiased`: torchvision's bilinear resize with antialias on uint8 images
  (a separable filter with fixed-point int16 weights, horizontal pass then vertical, uint8
  between passes: Pillow-SIMD's scheme). Reproduced to the exact byte.
- `resize_bicubic`: torch's bicubic interpolation (a = -0.75, half-pixel centres, clamped
  edges, no antialias) on float images, to float rounding.
"""

import numpy as np

MAX_WEIGHT_PRECISION = 22  # fixed-point bits tried for the int16 weights
BLOCK_VALUES = 1 << 22  # int32 sums held at once by one pass (16 MB)
CUBIC_A = -0.75


def _antialias_taps(in_size: int, out_size: int):
    """Per output index: first source index and the normalized triangle-filter weights."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0  # bilinear: half-width 1, widened by the scale when shrinking
    inverse = 1.0 / scale if scale >= 1.0 else 1.0
    starts, weights = [], []
    for i in range(out_size):
        center = scale * (i + 0.5)
        low = max(int(center - support + 0.5), 0)
        high = min(int(center + support + 0.5), in_size)
        taps = np.arange(low, high, dtype=np.float64)
        w = np.maximum(0.0, 1.0 - np.abs((taps - center + 0.5) * inverse))
        total = w.sum()
        starts.append(low)
        weights.append(w / total if total != 0 else w)
    return starts, weights


def _int16_weights(weights):
    """Fixed-point weights: the most fractional bits for which the largest weight fits int16."""
    largest = max(float(w.max()) for w in weights if w.size)
    precision = 0
    while precision < MAX_WEIGHT_PRECISION and int(0.5 + largest * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    fixed = [np.where(w < 0, w * (1 << precision) - 0.5, w * (1 << precision) + 0.5).astype(np.int64) for w in weights]
    return fixed, precision


def _pass_uint8(image: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """One separable antialiased pass along `axis` of an HxWxC uint8 image. The other axis is taken
    in blocks (each line is resized on its own): the int32 sums of one block at a time, ~16 MB,
    instead of an int32 copy of the whole image (768 MB for an 8000x8000 photo)."""
    in_size = image.shape[axis]
    starts, weights = _antialias_taps(in_size, out_size)
    fixed, precision = _int16_weights(weights)
    width = max(len(w) for w in fixed)
    index = np.zeros((out_size, width), np.int64)
    coefficient = np.zeros((out_size, width), np.int32)
    for i, (start, w) in enumerate(zip(starts, fixed)):
        index[i, : len(w)] = np.arange(start, start + len(w))
        coefficient[i, : len(w)] = w
    source = np.moveaxis(image, axis, 0)  # [in, other, C], a view
    lines = source.shape[1]
    block = max(1, BLOCK_VALUES // (out_size * source.shape[2]))
    out = np.empty((out_size,) + source.shape[1:], np.uint8)
    for first in range(0, lines, block):
        part = source[:, first:first + block]
        # Sums stay below 255 * 2^22 < 2^31: int32 is exact.
        total = np.full((out_size,) + part.shape[1:], 1 << (precision - 1), np.int32)
        for tap in range(width):
            total += part[index[:, tap]].astype(np.int32) * coefficient[:, tap, None, None]
        out[:, first:first + block] = np.clip(total >> precision, 0, 255)
    return np.moveaxis(out, 0, axis)


def resize_uint8_antialiased(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """HxWxC uint8 -> height x width x C uint8, as torchvision's antialiased bilinear resize."""
    if image.shape[1] != width:
        image = _pass_uint8(image, width, axis=1)
    if image.shape[0] != height:
        image = _pass_uint8(image, height, axis=0)
    return image


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """The 4 Keys cubic-convolution weights for fractional offsets t, [n, 4]."""
    def near(x):  # |x| <= 1
        return ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _cubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] interpolation matrix; taps beyond the edges fold onto the edge pixel."""
    scale = np.float32(in_size / out_size)
    source = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    base = np.floor(source)
    weights = _cubic_weights((source - base).astype(np.float32))
    matrix = np.zeros((out_size, in_size), np.float64)
    for k in range(4):
        columns = np.clip(base.astype(np.int64) - 1 + k, 0, in_size - 1)
        np.add.at(matrix, (np.arange(out_size), columns), weights[:, k])
    return matrix


def resize_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """CxHxW float -> C x height x width float32, as torch's bicubic interpolation."""
    rows, columns = _cubic_matrix(image.shape[1], height), _cubic_matrix(image.shape[2], width)
    return (rows @ image.astype(np.float64) @ columns.T).astype(np.float32)  # [C, height, width]
