"""A small ONNX graph writer whose weights stream straight to an external data file.

Each initializer's bytes are appended to a `.data` file as soon as it is created, so the graph
proto stays small and a full-size export never holds the model in memory. Offsets are aligned
to 4096 bytes so ONNX Runtime can memory-map the data.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10  # onnx writes IR 14 by default; onnxruntime 1.31 reads at most 13
OPSET = 21
MS_DOMAIN = "com.microsoft"
ALIGNMENT = 4096
INLINE_LIMIT = 65536  # tensors smaller than this many bytes stay inside the .onnx file

NP_TO_ONNX = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.int8): TensorProto.INT8,
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.bool_): TensorProto.BOOL,
}


def every_graph(graph: onnx.GraphProto):
    """`graph` and every graph nested in its nodes (If branches, Loop bodies), however deep."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for child in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                yield from every_graph(child)


def int64s(values) -> np.ndarray:
    """An int64 array, for shapes, axes and indices."""
    return np.array(values, np.int64)


FP16_MAX = float(np.finfo(np.float16).max)


def as_fp16(array: np.ndarray) -> np.ndarray:
    """A float array as fp16, saturated at fp16's largest finite value (a masking constant such as
    float32's lowest stays a huge finite number instead of becoming -inf, whose product with 0 is NaN).
    Clipped after the cast, so a 1.2 GB fp16 token table needs no second fp32 copy on the way."""
    with np.errstate(over="ignore"):
        half = np.asarray(array).astype(np.float16)
    return np.clip(half, -FP16_MAX, FP16_MAX, out=half)


class ExternalData:
    """An append-only external data file shared by any number of graphs in one folder. With
    `float16`, float32 arrays are written as fp16 (the DirectML graphs' weights): the builders
    stay as they are, and no fp32 copy of a weight ever reaches the disk."""

    def __init__(self, path: Path, float16: bool = False):
        self.path = Path(path)
        self.float16 = float16
        self._file = None  # opened on the first write: a graph without large weights leaves no file
        self._offset = 0

    def tensor(self, name: str, array: np.ndarray, dims=None) -> TensorProto:
        """Append `array` and return a TensorProto that points at it."""
        if self.float16 and array.dtype == np.float32:
            array = as_fp16(array)
        if self._file is None:
            self._file = open(self.path, "wb")
        pad = -self._offset % ALIGNMENT
        self._file.write(b"\0" * pad)
        self._offset += pad
        data = np.ascontiguousarray(array).tobytes()
        self._file.write(data)
        proto = self.reference(name, array.dtype, dims if dims is not None else array.shape, self._offset, len(data))
        self._offset += len(data)
        return proto

    def reference(self, name, dtype, dims, offset, length) -> TensorProto:
        """A TensorProto naming bytes already in this file (lets two graphs share one copy)."""
        proto = TensorProto()
        proto.name = name
        proto.data_type = NP_TO_ONNX[np.dtype(dtype)]
        proto.dims.extend(int(d) for d in dims)
        proto.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(offset)), ("length", str(length))):
            entry = proto.external_data.add()
            entry.key, entry.value = key, value
        return proto

    def close(self):
        if self._file is not None:
            self._file.close()


class SharedExternalData(ExternalData):
    """An external data file that several graphs of the same weights fill once (the NPU prompt
    and decode graphs): a tensor already written under a name is referenced, not written again."""

    def __init__(self, path: Path):
        super().__init__(path)
        self._written = {}

    def tensor(self, name: str, array: np.ndarray, dims=None) -> TensorProto:
        if name not in self._written:
            self._written[name] = super().tensor(name, array, dims)
        proto = TensorProto()
        proto.CopyFrom(self._written[name])  # each graph holds its own proto naming the same bytes
        return proto


class Graph:
    """Collects nodes, inputs, outputs and initializers; `save` writes the .onnx file."""

    def __init__(self, name: str, data: ExternalData):
        self.name = name
        self.data = data
        self.nodes, self.inputs, self.outputs, self.initializers = [], [], [], []
        self._counter = 0
        self._constants = {}  # (dtype, shape, bytes) -> name: a repeated small constant is stored once
        self.fp32_tensors = set()  # what a half-precision pass must compute in fp32 (see keep_fp32)

    def unique(self, base: str) -> str:
        self._counter += 1
        return f"{base}_{self._counter}"

    def input(self, name: str, elem_type: int, shape) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, name: str, elem_type: int, shape) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def weight(self, name: str, array: np.ndarray) -> str:
        """An initializer: large ones go to the external data file, small ones inline."""
        if array.nbytes >= INLINE_LIMIT:
            self.initializers.append(self.data.tensor(name, array))
        else:
            self.initializers.append(numpy_helper.from_array(np.require(array, requirements="C"), name))  # keeps 0-d scalars 0-d
        return name

    def constant(self, base: str, value) -> str:
        array = np.asarray(value)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.weight(self.unique(base), array)
        return self._constants[key]

    def keep_fp32(self, name: str) -> str:
        """Mark tensor `name` as exact only in fp32: a half-precision pass (fp16.py) computes it,
        and every node it derives from back to the graph's inputs, in fp32. Returns `name`."""
        self.fp32_tensors.add(name)
        return name

    def ints(self, values, base: str = "ints") -> str:
        """An int64 constant for shapes, axes and indices: a list is 1-D, a bare int 0-d."""
        return self.constant(base, int64s(values))

    def _ints_or_tensor(self, value, base: str) -> str:
        return value if isinstance(value, str) else self.ints(value, base)

    # -- ops whose shape, axes or index arguments may be written as Python ints -------------
    def add(self, a: str, b: str) -> str:
        return self.op("Add", [a, b])

    def sub(self, a: str, b: str) -> str:
        return self.op("Sub", [a, b])

    def mul(self, a: str, b: str) -> str:
        return self.op("Mul", [a, b])

    def cast(self, x: str, to: int) -> str:
        return self.op("Cast", [x], to=to)

    def reshape(self, x: str, shape) -> str:
        """`shape`: a list of ints (0 keeps a dimension, -1 infers one) or an int64 tensor."""
        return self.op("Reshape", [x, self._ints_or_tensor(shape, "shape")])

    def transpose(self, x: str, perm: list[int]) -> str:
        return self.op("Transpose", [x], perm=perm)

    def unsqueeze(self, x: str, axes: list[int]) -> str:
        return self.op("Unsqueeze", [x, self.ints(axes, "axes")])

    def squeeze(self, x: str, axes: list[int]) -> str:
        return self.op("Squeeze", [x, self.ints(axes, "axes")])

    def gather(self, x: str, index, axis: int) -> str:
        """`index`: an int (drops the axis) or an int64 tensor."""
        return self.op("Gather", [x, self._ints_or_tensor(index, "index")], axis=axis)

    def reduce_sum(self, x: str, axes: list[int], keepdims: bool = False) -> str:
        return self.op("ReduceSum", [x, self.ints(axes, "axes")], keepdims=int(keepdims))

    def slice(self, x: str, starts, ends, axes: list[int], steps: list[int] | None = None) -> str:
        """x[starts:ends:steps] along `axes`; `starts` / `ends` are int lists or int64 tensors."""
        inputs = [x, self._ints_or_tensor(starts, "starts"), self._ints_or_tensor(ends, "ends"), self.ints(axes, "axes")]
        return self.op("Slice", inputs + ([self.ints(steps, "steps")] if steps else []))

    def concat(self, parts: list, axis: int = 0) -> str:
        """Concatenate tensors; int lists among `parts` become int64 constants (empty ones are skipped)."""
        tensors = [part if isinstance(part, str) else self.ints(part, "part") for part in parts if isinstance(part, str) or len(part)]
        return self.op("Concat", tensors, axis=axis)

    def add_initializer(self, proto: TensorProto) -> str:
        self.initializers.append(proto)
        return proto.name

    def op(self, op_type: str, inputs, outputs=1, domain: str = "", name: str | None = None, **attrs):
        """Emit one node; returns its single output name, or a list when `outputs` > 1 / a list."""
        node_name = name or self.unique(op_type)
        if isinstance(outputs, int):
            output_names = [f"{node_name}/out{i}" for i in range(outputs)]
        else:
            output_names = list(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), output_names, name=node_name, domain=domain or None, **attrs))
        return output_names[0] if len(output_names) == 1 else output_names

    def branch(self, name: str) -> "Graph":
        """A subgraph (for If) sharing this graph's data file and name counter."""
        child = Graph(name, self.data)
        child._counter = self._counter + 100000 * (1 + len(self.nodes))
        child._constants = dict(self._constants)  # outer-scope constants are visible in the branch
        return child

    def subgraph(self, child: "Graph", outputs: list[str], keep_initializers: bool = False):
        """Close a branch (float outputs). Its initializers move to this (outer) graph, which the
        subgraph can see; with `keep_initializers` they stay in the branch (where ONNX Runtime
        prepacks them with the branch's kernels)."""
        if not keep_initializers:
            self.initializers.extend(child.initializers)
        self._counter = max(self._counter, child._counter)
        return helper.make_graph(child.nodes, child.name, [], [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                                 child.initializers if keep_initializers else [])

    def save(self, path: Path) -> None:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(
            graph, ir_version=IR_VERSION, producer_name="phi4mm-edge",
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
        )
        onnx.save_model(model, str(path))
