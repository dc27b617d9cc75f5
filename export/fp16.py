"""fp16 activations: a pass over a built `Graph`, before it is saved (the DirectML graphs).

Float graph inputs and outputs become FLOAT16, float initializers fp16, Cast(to=FLOAT) casts to
FLOAT16; every other op the graphs use is polymorphic in its float type, so the activations
follow. fp16 tops out at 65504, so constants and float attributes beyond it are saturated
(onnx_graph.as_fp16): float32's lowest, the attention mask's fill value, would become -inf, and
-inf times a 0 mask is NaN.

Weights already streamed to external data are not rewritten: a DirectML graph's ExternalData is
opened with `float16=True` (onnx_graph.py), which writes float32 arrays as fp16 in the first
place, so the builders stay as they are and no fp32 copy reaches the disk. Only the small
initializers kept inside the graph are converted here.

fp32 islands: a tensor a builder marked with `Graph.keep_fp32`, and every node it derives from
back to the graph's inputs and initializers, stay fp32, with a Cast on each edge between the
island and the fp16 rest. The walk never passes a Shape node: a shape is the same at any
precision, and an fp32 copy of the activations it measures would be waste. Marked today:
- the rotary tables (text_decoder.rotary_tables): positions reach 131072, and fp16 holds
  integers exactly only up to 2048, so position x frequency must be formed in fp32; cos and sin
  of it are in [-1, 1] and are cast to fp16 afterwards;
- the vision position ids (vision_encoder.position_ids): a patch's fraction of its crop's real
  width (i / real) is bucketed at the boundaries k / 32, and fp16's rounding of the fraction
  moves a patch into the neighbouring bucket (one patch of a crop 22 patches wide).
"""

import numpy as np
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from .onnx_graph import FP16_MAX, MS_DOMAIN, OPSET, Graph, as_fp16
from .value_types import infer_types

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
# Ops that make a float tensor of a type they name themselves; the builders emit none of them.
TYPE_MAKING_OPS = {"Constant", "ConstantOfShape", "EyeLike", "RandomNormal", "RandomNormalLike", "RandomUniform",
                   "RandomUniformLike"}


def fp32_island(graph: Graph) -> set[str]:
    """Names of the nodes the marked tensors derive from (Shape nodes excluded)."""
    producers = {output: node for node in graph.nodes for output in node.output}
    island, pending = set(), list(graph.fp32_tensors)
    while pending:
        node = producers.get(pending.pop())
        if node is None or node.name in island or node.op_type == "Shape":
            continue
        island.add(node.name)
        pending.extend(name for name in node.input if name)
    return island


def _saturate_attributes(node) -> None:
    for attribute in node.attribute:
        if attribute.type == AttributeProto.FLOAT:
            attribute.f = float(np.clip(attribute.f, -FP16_MAX, FP16_MAX))
        elif attribute.type == AttributeProto.FLOATS:
            attribute.floats[:] = np.clip(np.array(attribute.floats), -FP16_MAX, FP16_MAX).tolist()


def to_fp16(graph: Graph) -> None:
    """Make `graph`'s activations fp16 in place, keeping its fp32 islands (module docstring)."""
    for node in graph.nodes:
        if node.op_type in TYPE_MAKING_OPS or any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute):
            raise ValueError(f"fp16 pass: node {node.name} ({node.op_type}) is not converted: "
                             "build the graph without it (no Constant-like ops, no If branches)")
    island = fp32_island(graph)
    types = {value.name: value.type.tensor_type.elem_type for value in graph.inputs}
    types.update({tensor.name: tensor.data_type for tensor in graph.initializers})
    infer_types(graph.nodes, types, {"": OPSET, MS_DOMAIN: 1})  # the types as built: which tensors are float

    island_reads = {name for node in graph.nodes if node.name in island for name in node.input}
    other_reads = {name for node in graph.nodes if node.name not in island for name in node.input}
    other_reads |= {value.name for value in graph.outputs}
    island_outputs = {name for node in graph.nodes if node.name in island for name in node.output}
    if island_outputs & {value.name for value in graph.outputs}:
        raise ValueError("fp16 pass: a graph output is computed in an fp32 island")

    # Initializers: fp16, except those an island reads (which keep an fp32 copy).
    renamed = {}  # a non-island reader's input -> the fp16 copy of an initializer the island keeps
    initializers = []
    for tensor in graph.initializers:
        if tensor.data_type != FLOAT:
            initializers.append(tensor)
            continue
        if tensor.data_location == TensorProto.EXTERNAL:
            raise ValueError(f"fp16 pass: {tensor.name} was written as fp32 external data: open the graph's "
                             "ExternalData with float16=True")
        half = numpy_helper.from_array(as_fp16(numpy_helper.to_array(tensor)), tensor.name)
        if tensor.name in island_reads:
            initializers.append(tensor)
            if tensor.name in other_reads:
                half.name = renamed[tensor.name] = f"{tensor.name}/fp16"
                initializers.append(half)
        else:
            initializers.append(half)
    graph.initializers[:] = initializers

    # What reads across the island's edge: fp16 values into it, its fp32 values out of it.
    as_half = {value.name for value in graph.inputs if value.type.tensor_type.elem_type == FLOAT}
    as_half |= {tensor.name for tensor in initializers if tensor.data_type == FLOAT16 and tensor.name not in renamed.values()}
    for name in island_outputs & other_reads:
        if types.get(name) is None:
            raise ValueError(f"fp16 pass: the type of island tensor {name} is unknown")

    casts, nodes = {}, []

    def cast(name: str, to: int) -> str:
        """The Cast of `name` to `to`, emitted before its first reader."""
        if (name, to) not in casts:
            casts[(name, to)] = f"{name}/as_{'fp32' if to == FLOAT else 'fp16'}"
            nodes.append(helper.make_node("Cast", [name], [casts[(name, to)]], name=casts[(name, to)], to=to))
        return casts[(name, to)]

    for node in graph.nodes:
        in_island = node.name in island
        for index, name in enumerate(node.input):
            if in_island and name in as_half:
                node.input[index] = cast(name, FLOAT)
            elif not in_island and name in renamed:
                node.input[index] = renamed[name]
            elif not in_island and name in island_outputs and types[name] == FLOAT:
                node.input[index] = cast(name, FLOAT16)
        if not in_island:
            _saturate_attributes(node)
            if node.op_type == "Cast" and not node.domain:
                for attribute in node.attribute:
                    if attribute.name == "to" and attribute.i == FLOAT:
                        attribute.i = FLOAT16
        nodes.append(node)
    graph.nodes[:] = nodes

    for value in (*graph.inputs, *graph.outputs):
        if value.type.tensor_type.elem_type == FLOAT:
            value.type.tensor_type.elem_type = FLOAT16
