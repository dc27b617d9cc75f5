"""Which files a saved ONNX graph reads its weights from, read from the graph itself.

The verification of an artifact (verify.py) must not take the manifest's word for it: a manifest
edited to leave out a data file would leave that file unchecked. The runtime has no `onnx`
package, so this reads the few protobuf fields on the way, by their numbers in onnx.proto:
ModelProto.graph, GraphProto.initializer and .node, NodeProto.attribute, AttributeProto.t,
.tensors, .g and .graphs (an If's branches), TensorProto.external_data, and its key/value entries.
"""

from pathlib import Path

from ..errors import Phi4MMError

MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INITIALIZER = 1, 5
NODE_ATTRIBUTE = 5
ATTRIBUTE_TENSOR, ATTRIBUTE_GRAPH, ATTRIBUTE_TENSORS, ATTRIBUTE_GRAPHS = 5, 6, 10, 11
TENSOR_EXTERNAL_DATA = 13
ENTRY_KEY, ENTRY_VALUE = 1, 2
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("a truncated or overlong varint")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
        shift += 7


def fields(data: memoryview):
    """(field number, payload) of each length-delimited field of one message; others skipped."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            _, at = _varint(data, at)
        elif wire == FIXED64:
            at += 8
        elif wire == FIXED32:
            at += 4
        elif wire == LENGTH_DELIMITED:
            size, at = _varint(data, at)
            if at + size > len(data):
                raise ValueError("a field runs past the end of its message")
            yield number, data[at:at + size]
            at += size
        else:
            raise ValueError(f"wire type {wire} is not one ONNX files use")
    if at != len(data):
        raise ValueError("the last field runs past the end of its message")


def _tensor_location(tensor: memoryview, found: set[str]) -> None:
    for number, entry in fields(tensor):
        if number == TENSOR_EXTERNAL_DATA:
            pair = dict(fields(entry))
            if bytes(pair.get(ENTRY_KEY, b"")) == b"location":
                found.add(bytes(pair.get(ENTRY_VALUE, b"")).decode("utf-8"))


def _locations(graph: memoryview, found: set[str]) -> None:
    for number, payload in fields(graph):
        if number == GRAPH_INITIALIZER:
            _tensor_location(payload, found)
        elif number == GRAPH_NODE:
            for node_field, attribute in fields(payload):
                if node_field != NODE_ATTRIBUTE:
                    continue
                for attribute_field, value in fields(attribute):
                    if attribute_field in (ATTRIBUTE_TENSOR, ATTRIBUTE_TENSORS):
                        _tensor_location(value, found)
                    elif attribute_field in (ATTRIBUTE_GRAPH, ATTRIBUTE_GRAPHS):
                        _locations(value, found)


def external_data_files(graph_path: Path) -> set[str]:
    """The `location`s the graph's initializers (its If branches' included) name."""
    try:
        model = memoryview(Path(graph_path).read_bytes())
        found: set[str] = set()
        for number, graph in fields(model):
            if number == MODEL_GRAPH:
                _locations(graph, found)
        return found
    except (ValueError, UnicodeDecodeError) as error:
        raise Phi4MMError(f"{graph_path} is not a readable ONNX graph ({error}): re-export the artifact") from None
