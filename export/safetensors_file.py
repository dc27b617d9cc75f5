"""Read and write .safetensors files with numpy, one tensor at a time.

The format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}}, then raw little-endian bytes. Each tensor is read into its own buffer (no
lasting memory map: a mapped 11 GB checkpoint would count every page read in the process's
resident size), so a tensor costs memory only while it is being converted. bf16 is widened to
fp32 by a 16-bit shift, exactly.
"""

import json
import struct
from pathlib import Path

import numpy as np

from ..errors import Phi4MMError

_NUMPY_DTYPES = {
    "F32": np.float32, "F16": np.float16, "F64": np.float64,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
FLOAT_DTYPES = ("BF16", "F16", "F32")
WRITE_CHUNK = 1 << 24  # elements converted and written at a time


class SafetensorsFile:
    """One .safetensors file, memory-mapped; `read(name)` returns a float32 (or native int) array."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
                if header_len > 100_000_000:
                    raise ValueError("header length is implausible")
                header = json.loads(f.read(header_len))
        except (OSError, ValueError, struct.error, UnicodeDecodeError) as error:
            raise Phi4MMError(f"{self.path} is not a readable safetensors file ({error}): re-download the checkpoint") from None
        header.pop("__metadata__", None)
        self.header = header
        self._data_start = 8 + header_len
        self._size = self.path.stat().st_size

    def names(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def dtype(self, name: str) -> str:
        return self.header[name]["dtype"]

    def read(self, name: str) -> np.ndarray:
        info = self.header[name]
        begin, end = info["data_offsets"]
        if self._data_start + end > self._size:
            raise Phi4MMError(f"{self.path} is truncated (tensor {name} runs past the end): re-download the checkpoint")
        with open(self.path, "rb") as f:
            raw = np.fromfile(f, dtype=np.uint8, count=end - begin, offset=self._data_start + begin)
        dtype, shape = info["dtype"], tuple(info["shape"])
        if dtype == "BF16":
            widened = np.zeros(raw.size // 2, np.uint32)
            widened[:] = raw.view(np.uint16)
            widened <<= 16
            return widened.view(np.float32).reshape(shape)
        if dtype in ("F16", "F64"):
            return raw.view(_NUMPY_DTYPES[dtype]).astype(np.float32).reshape(shape)
        if dtype not in _NUMPY_DTYPES:
            raise Phi4MMError(f"{self.path}: tensor {name} has unsupported dtype {dtype}")
        return raw.view(_NUMPY_DTYPES[dtype]).reshape(shape)


def to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), rounding to nearest even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], produce, dtype: str = "F32") -> None:
    """Write the float tensors named in `shapes`, in that order, as `dtype` (BF16, F16 or F32).

    `produce(name)` returns one tensor's float32 values; it is called once per tensor while the
    file is written, so only one tensor is ever in memory (a full-size checkpoint streams).
    """
    width = 2 if dtype in ("BF16", "F16") else 4
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape, dtype=np.int64)) * width
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # keep tensor data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for name, shape in shapes.items():
            flat = np.asarray(produce(name), dtype=np.float32).reshape(-1)
            for start in range(0, flat.size, WRITE_CHUNK):  # converted a slice at a time: bounded temporaries
                part = flat[start : start + WRITE_CHUNK]
                f.write(to_bf16_bits(part).tobytes() if dtype == "BF16" else part.astype(_NUMPY_DTYPES[dtype]).tobytes())
