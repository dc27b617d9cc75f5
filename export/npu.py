"""What a built graph needs before it is saved for the NPU (target "npu", Qualcomm's QNN HTP):
each MatMulNBits input padded to whole blocks (whole_blocks.py), since the HTP refuses a K that
is not (measured on the simulator: K = 4304 at block 32 refused, padded to 4320 compiled)."""

from .graph_files import GraphFinish
from .onnx_graph import Graph
from .whole_blocks import whole_k_blocks

# Every NPU linear runs on [1, positions, K]: the HTP's MatMulNBits rejects a 2-D input, and its
# Pad takes no `axes`, so the pad names all three axes.
LINEAR_INPUT_RANK = 3


def for_npu(graph: Graph) -> None:
    """Pad `graph`'s MatMulNBits inputs to whole blocks, in place."""
    whole_k_blocks(graph, input_rank=LINEAR_INPUT_RANK)


NPU_GRAPH = GraphFinish(respell=for_npu)
