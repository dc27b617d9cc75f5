"""Which nodes of a saved graph the DirectML EP has no kernel for, in the ONNX Runtime it ships in.

data/dml_operators.json is the DirectML EP's operator registration table of ONNX Runtime 1.24.4
(the onnxruntime-directml 1.24.4 wheel, the newest DirectML build; its "source" names
OperatorRegistration.cpp and the commit, and how the table was read). A node (domain, op_type,
the model's opset of that domain) is registered when some entry has since_version <= opset <=
until_version (null: no end), its type constraints admit the node's tensor types (as far as
value_types.py can tell them without the weights), and its condition holds. The conditions the
project's graphs meet are checked here (CONDITIONS); an entry with any other condition does not
count, since nothing here vouches for it.

An unregistered node would not fail on DirectML: ONNX Runtime would run it on the CPU and copy
its tensors between the GPU and the CPU on every run. Export refuses such a graph instead
(convert.py), so a DirectML artifact is all DirectML.
"""

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import onnx

from .onnx_graph import every_graph
from .value_types import NAME_OF_TYPE, TYPE_OF_NAME, infer_types, operator_schema, type_variables

DATA = Path(__file__).parent / "data" / "dml_operators.json"
ONNXRUNTIME_VERSION = "1.24.4"  # the onnxruntime-directml build DATA was read from (its "source")


class UnregisteredNode(NamedTuple):
    graph: str  # the graph's name (an If branch's own name for a node inside it)
    node: str
    domain: str
    op_type: str
    opset: int
    reason: str


@dataclass(frozen=True)
class Registration:
    since: int
    until: int | None  # None: no later schema of the op
    types: dict  # type variable -> frozenset of TensorProto element types, or None for any type
    condition: str | None


def _type_sets(constraints: dict) -> dict:
    types = {}
    for variable, names in (constraints or {}).items():
        if "any (All)" in names:
            types[variable] = None
        else:  # sequence types ("seq(float)") never reach these graphs and are left out
            types[variable] = frozenset(TYPE_OF_NAME[f"tensor({n})"] for n in names if f"tensor({n})" in TYPE_OF_NAME)
    return types


@functools.cache
def registrations() -> dict:
    """(domain, op_type) -> [Registration], from data/dml_operators.json."""
    table = {}
    for entry in json.loads(DATA.read_text())["operators"]:
        registration = Registration(entry["since_version"], entry["until_version"], _type_sets(entry.get("type_constraints")),
                                    entry.get("conditions"))
        table.setdefault((entry["domain"], entry["op_type"]), []).append(registration)
    return table


def _attribute(node, name: str, default=None):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _whole_blocks(node, consumed: set) -> bool:
    return _attribute(node, "bits", 4) in (4, 8) and _attribute(node, "K") % _attribute(node, "block_size") == 0


def _at_most_five_inputs(node, consumed: set) -> bool:
    return len(node.input) <= 5


def _first_output_only(node, consumed: set) -> bool:
    return not any(name and name in consumed for name in node.output[1:])


# The support queries (DirectML's per-node checks) of the ops the project's graphs use.
CONDITIONS = {
    "MatMulNBits": _whole_blocks,
    "Slice": _at_most_five_inputs,
    "LayerNormalization": _first_output_only,
    "SimplifiedLayerNormalization": _first_output_only,
    "SkipLayerNormalization": _first_output_only,
    "SkipSimplifiedLayerNormalization": _first_output_only,
}


def _names(types) -> str:
    return "/".join(sorted(NAME_OF_TYPE[t] for t in types))


def _refusal(registration: Registration, node, bound: dict, consumed: set) -> str | None:
    """Why `registration` does not take `node`, or None when it does."""
    for variable, allowed in registration.types.items():
        found = bound.get(variable, set())
        if len(found) > 1:  # ONNX Runtime refuses such a model on any EP
            return f"{variable} is bound to {_names(found)} at once"
        if allowed is not None and found - allowed:
            return f"{variable} is {_names(found)}; DirectML takes {_names(allowed) or 'none'}"
    if registration.condition:
        check = CONDITIONS.get(node.op_type)
        if check is None:
            return f"its condition is not checked here: {registration.condition}"
        if not check(node, consumed):
            return registration.condition
    return None


def _why_unregistered(node, opset: int, types: dict, consumed: set) -> str | None:
    entries = [r for r in registrations().get((node.domain or "", node.op_type), [])
               if r.since <= opset and (r.until is None or opset <= r.until)]
    if not entries:
        return f"no DirectML kernel at opset {opset}"
    schema = operator_schema(node.domain, node.op_type, opset)
    bound = type_variables(schema, node, types) if schema else {}
    refusals = [_refusal(r, node, bound, consumed) for r in entries]
    return None if None in refusals else "; ".join(refusals)


def _graph_nodes(graph, types: dict, opsets: dict, consumed: set, found: list) -> None:
    types = dict(types)  # a subgraph sees the outer scope's names, not the other way round
    types.update({v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info)})
    types.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:
        infer_types([node], types, opsets)
        opset = opsets.get(node.domain or "", 0)
        reason = _why_unregistered(node, opset, types, consumed)
        if reason:
            found.append(UnregisteredNode(graph.name, node.name, node.domain or "", node.op_type, opset, reason))
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs):
                _graph_nodes(subgraph, types, opsets, consumed, found)


def unregistered_nodes(model_path) -> list[UnregisteredNode]:
    """Every node of the saved model at `model_path`, its If branches included, that the DirectML
    EP registers no kernel for (see the module docstring). Reads the graph only, not the weights."""
    model = onnx.load(str(model_path), load_external_data=False)
    opsets = {("" if entry.domain == "ai.onnx" else entry.domain): entry.version for entry in model.opset_import}
    consumed = set()
    for graph in every_graph(model.graph):
        consumed.update(name for node in graph.node for name in node.input)
        consumed.update(value.name for value in graph.output)
    found = []
    _graph_nodes(model.graph, {}, opsets, consumed, found)
    return found
