"""MatMulNBits' input padded to a whole number of blocks, for the kernels that take K only so.

DirectML's support query refuses K % block_size != 0, and so does the QNN HTP's ("K must be
divisible by block_size", onnxruntime-qnn 2.7.0 on the simulator): SigLIP's MLP width 4304 at
block 32 is such a K. The stored blocks are already padded with zeros (quant/int4.py), so the
input is padded with zero columns to match: the padded columns add exact zeros to every sum.
"""

from onnx import helper

from .onnx_graph import Graph


def whole_k_blocks(graph: Graph, input_rank: int | None = None) -> None:
    """Pad the input of each MatMulNBits of `graph` whose K is not a whole number of blocks with
    zero columns, and give the node the padded K. `input_rank`: the rank of every MatMulNBits
    input, when the target fixes it; the Pad then names every axis (QNN's Pad takes no `axes`
    input). None pads the last axis by `axes`, whatever the rank (DirectML)."""
    nodes = []
    for node in graph.nodes:
        attributes = {a.name: a for a in node.attribute}
        if node.op_type == "MatMulNBits" and attributes["K"].i % attributes["block_size"].i:
            k, block_size = attributes["K"].i, attributes["block_size"].i
            padded = -(-k // block_size) * block_size
            if input_rank is None:
                pads = [graph.ints([0, padded - k], "pads"), "", graph.ints([-1], "axes")]
            else:
                pads = [graph.ints([0] * (2 * input_rank - 1) + [padded - k], "pads")]
            pad = helper.make_node("Pad", [node.input[0], *pads], [f"{node.name}/whole_blocks"],
                                   name=f"{node.name}/whole_blocks")
            nodes.append(pad)
            node.input[0] = pad.output[0]
            attributes["K"].i = padded
        nodes.append(node)
    graph.nodes[:] = nodes
