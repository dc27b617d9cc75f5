"""ONNX Runtime's adapter files (`.onnx_adapter`, AdapterFormat) read in place: the position of
each tensor's bytes, so a graph can name them as external data instead of copying them."""

import mmap
import struct
from pathlib import Path

from onnx import TensorProto

from ..errors import Phi4MMError

FLATBUFFER_TYPES = {1: TensorProto.FLOAT, 10: TensorProto.FLOAT16}  # AdapterFormat's TensorDataType codes


def adapter_tensors(path: Path) -> dict[str, TensorProto]:
    """TensorProtos naming, as external data, each tensor's bytes inside an AdapterFormat file (ONNX
    Runtime's `.onnx_adapter`, a flatbuffer: Adapter{format_version, adapter_version,
    model_version, parameters: [Parameter{name, dims, data_type, raw_data}]}, per its documented
    schema). A graph can then default its LoRA inputs to an adapter without a copy of it. The file
    is memory-mapped: only its small index is read (a full-size fp32 adapter is ~1.5 GB)."""
    try:
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parameters(data, path.name)
    except (OSError, ValueError, struct.error, TypeError, KeyError, UnicodeDecodeError):
        raise Phi4MMError(f"{path} is not an adapter file this export wrote (fp32 or fp16 AdapterFormat): re-export the artifact") from None


def _parameters(data, location: str) -> dict[str, TensorProto]:
    """adapter_tensors' flatbuffer walk over the file's bytes `data`."""

    def u32(at: int) -> int:
        return struct.unpack_from("<I", data, at)[0]

    def field(table: int, index: int) -> int | None:
        """The position of a table's field, or None when absent (flatbuffers' vtable lookup)."""
        vtable = table - struct.unpack_from("<i", data, table)[0]
        slot = 4 + 2 * index
        if slot >= struct.unpack_from("<H", data, vtable)[0]:
            return None
        offset = struct.unpack_from("<H", data, vtable + slot)[0]
        return table + offset if offset else None

    def vector(at: int) -> tuple[int, int]:  # (first element's position, length)
        start = at + u32(at)
        return start + 4, u32(start)

    root = u32(0)
    first, count = vector(field(root, 3))
    tensors = {}
    for i in range(count):
        at = first + 4 * i
        parameter = at + u32(at)
        name_at, name_length = vector(field(parameter, 0))
        dims_at, rank = vector(field(parameter, 1))
        kind = FLATBUFFER_TYPES[struct.unpack_from("<i", data, field(parameter, 2))[0]]
        raw_at, raw_length = vector(field(parameter, 3))
        proto = TensorProto(name=data[name_at:name_at + name_length].decode(), data_type=kind,
                            dims=struct.unpack_from(f"<{rank}q", data, dims_at), data_location=TensorProto.EXTERNAL)
        for key, value in (("location", location), ("offset", str(raw_at)), ("length", str(raw_length))):
            proto.external_data.add(key=key, value=value)
        tensors[proto.name] = proto
    return tensors
