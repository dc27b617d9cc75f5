"""Element types of a graph's tensors, read off the operators' schemas without the weights.

ONNX's own inference does not know the com.microsoft ops (MatMulNBits, GroupQueryAttention,
...), and stops at the first one; ONNX Runtime's schema registry knows them all. A node's
output takes the type its schema gives: a fixed type, the type of an input bound to the same
type variable, Cast's `to`, or a variable's only allowed type (Shape's int64, a comparison's
bool). What no rule gives stays unknown. The fp16 pass (fp16.py) and the DirectML operator
check (dml_operators.py) read these types.
"""

import functools

from onnx import TensorProto
from onnxruntime.capi import onnxruntime_pybind11_state as ort_capi  # the schema registry has no public API

# "tensor(float16)" -> TensorProto.FLOAT16, and so on for every element type
TYPE_OF_NAME = {f"tensor({name.lower()})": value for name, value in TensorProto.DataType.items()}
NAME_OF_TYPE = {value: name.lower() for name, value in TensorProto.DataType.items()}


@functools.cache
def _schemas() -> dict:
    """(domain, op_type) -> [(since_version, schema)], oldest first."""
    table = {}
    for schema in ort_capi.get_all_operator_schema():
        table.setdefault((schema.domain, schema.name), []).append((schema.since_version, schema))
    return {key: sorted(versions, key=lambda entry: entry[0]) for key, versions in table.items()}


def operator_schema(domain: str, op_type: str, opset: int):
    """The schema a node of `op_type` resolves to at `opset` of its domain, or None."""
    chosen = None
    for since, schema in _schemas().get((domain or "", op_type), []):
        if since <= opset:
            chosen = schema
    return chosen


def _formal_names(params, count: int) -> list[str]:
    """The type string of each of `count` actual inputs or outputs (a variadic last parameter repeats)."""
    if not params:
        return []
    return [params[min(i, len(params) - 1)].typeStr for i in range(count)]


def type_variables(schema, node, types: dict) -> dict[str, set[int]]:
    """Type variable -> the element types the node's present inputs and known outputs bind to it."""
    bound = {}
    for names, params in ((node.input, schema.inputs), (node.output, schema.outputs)):
        for name, type_str in zip(names, _formal_names(params, len(names))):
            if name and name in types and not type_str.startswith("tensor("):
                bound.setdefault(type_str, set()).add(types[name])
    return bound


def infer_types(nodes, types: dict, opsets: dict[str, int]) -> None:
    """Add to `types` (tensor name -> TensorProto element type, holding the graph's inputs and
    initializers) the output types of `nodes`, taken in order (ONNX keeps nodes topologically sorted)."""
    for node in nodes:
        schema = operator_schema(node.domain, node.op_type, opsets.get(node.domain or "", 0))
        if schema is None:
            continue
        bound = {var: next(iter(found)) for var, found in type_variables(schema, node, types).items() if len(found) == 1}
        allowed = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
        for index, (name, type_str) in enumerate(zip(node.output, _formal_names(schema.outputs, len(node.output)))):
            if not name:
                continue
            if type_str in TYPE_OF_NAME:
                types[name] = TYPE_OF_NAME[type_str]
            elif node.op_type == "Cast" and not node.domain:
                types[name] = next(a.i for a in node.attribute if a.name == "to")
            elif node.op_type == "If" and not node.domain:
                branch = next(a.g for a in node.attribute if a.name == "then_branch")
                types[name] = branch.output[index].type.tensor_type.elem_type
            elif type_str in bound:
                types[name] = bound[type_str]
            elif len(allowed.get(type_str, [])) == 1 and allowed[type_str][0] in TYPE_OF_NAME:
                types[name] = TYPE_OF_NAME[allowed[type_str][0]]
