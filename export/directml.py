"""What a built graph needs before it is saved for DirectML (target "dml"): ops spelled as the
DirectML EP registers them, and fp16 activations (fp16.py).

The structural differences are options of the builders (text_decoder's rotary_outside_attention,
audio_encoder's directml, the embedding's plain Gather, adapters as inputs); what is left here is
a node-for-node respelling that computes the same thing:
- Gelu: DirectML registers only com.microsoft's Gelu (exact, erf) and FastGelu (the tanh
  approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))), not ONNX's Gelu-20;
- MatMulNBits: DirectML's kernel takes K only in whole blocks (its support query refuses
  K % block_size != 0, e.g. SigLIP's MLP width 4304 at block 32). The stored blocks are already
  padded with zeros (quant/int4.py), so the input is padded with zero columns to match.
"""

from onnx import helper

from .fp16 import to_fp16
from .onnx_graph import MS_DOMAIN, Graph


def _attribute(node, name: str):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


def contrib_gelu(graph: Graph) -> None:
    """ONNX Gelu -> com.microsoft Gelu (exact) or FastGelu (approximate="tanh")."""
    for node in graph.nodes:
        if node.op_type == "Gelu" and not node.domain:
            approximate = _attribute(node, "approximate")
            node.op_type = "FastGelu" if approximate in (b"tanh", "tanh") else "Gelu"
            node.domain = MS_DOMAIN
            del node.attribute[:]


def whole_k_blocks(graph: Graph) -> None:
    """Pad each MatMulNBits' input whose K is not a whole number of blocks with zero columns."""
    nodes = []
    for node in graph.nodes:
        k, block_size = _attribute(node, "K"), _attribute(node, "block_size")
        if node.op_type == "MatMulNBits" and k % block_size:
            padded = -(-k // block_size) * block_size
            pad = helper.make_node("Pad", [node.input[0], graph.ints([0, padded - k], "pads"), "", graph.ints([-1], "axes")],
                                   [f"{node.name}/whole_blocks"], name=f"{node.name}/whole_blocks")
            nodes.append(pad)
            node.input[0] = pad.output[0]
            next(a for a in node.attribute if a.name == "K").i = padded
        nodes.append(node)
    graph.nodes[:] = nodes


def for_directml(graph: Graph) -> None:
    """Respell `graph`'s ops for DirectML and make its activations fp16, in place."""
    contrib_gelu(graph)
    whole_k_blocks(graph)
    to_fp16(graph)
