"""Linear layers as ONNX nodes: int4 MatMulNBits or fp32 MatMul, and the LoRA branch x·A·B."""

from dataclasses import dataclass

import numpy as np

from ..quant import int4, int8
from .onnx_graph import MS_DOMAIN, ExternalData, Graph


@dataclass(frozen=True)
class Precision:
    """How base weights are stored. accuracy_level 4 lets the CPU kernel quantize activations
    to int8 per block (its fastest path); 0 keeps fp32 activations. "int8" is the prefill graph's
    precision: 7-bit per-output-channel weights for DynamicQuantizeMatMul (quant/int8.py)."""

    weights: str = "int4"  # "int4", "fp32", or "int8" (prefill graph only)
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4

    @property
    def is_int4(self) -> bool:
        return self.weights == "int4"


def int4_initializers(data: ExternalData, name: str, quantized: int4.Int4Weight):
    """TensorProtos for MatMulNBits' B, scales and optional zero points, in `data`."""
    protos = [
        data.tensor(f"{name}.qweight", quantized.packed),
        data.tensor(f"{name}.scales", quantized.scales),
    ]
    if quantized.zero_points is not None:
        protos.append(data.tensor(f"{name}.zero_points", quantized.zero_points))
    return protos


def matmul_nbits(graph: Graph, x: str, protos, quantized: int4.Int4Weight, precision: Precision, name: str) -> str:
    names = [graph.add_initializer(p) for p in protos]
    n, k = quantized.shape
    return graph.op(
        "MatMulNBits", [x, *names], domain=MS_DOMAIN, name=name,
        K=k, N=n, bits=4, block_size=quantized.block_size, accuracy_level=precision.accuracy_level,
    )


def linear(graph: Graph, x: str, weight: np.ndarray, name: str, precision: Precision, bias: np.ndarray | None = None) -> str:
    """y = x W^T (+ b) for W [out, in], stored at `precision`."""
    if precision.is_int4:
        quantized = int4.quantize(weight, precision.block_size, precision.symmetric)
        y = matmul_nbits(graph, x, int4_initializers(graph.data, name, quantized), quantized, precision, name)
    elif precision.weights == "int8":
        columns = int8.quantize_columns(weight)
        y = graph.op("DynamicQuantizeMatMul", [x, graph.weight(f"{name}.int8", columns.weight_t),
                                               graph.weight(f"{name}.int8_scales", columns.scales)],
                     domain=MS_DOMAIN, name=name)
    else:
        y = graph.op("MatMul", [x, graph.weight(f"{name}.weight_t", np.ascontiguousarray(weight.T))], name=name)
    if bias is not None:
        y = graph.op("Add", [y, graph.weight(f"{name}.bias", bias.astype(np.float32))])
    return y


def lora_branch(graph: Graph, x: str, a_input: str, b_input: str) -> str:
    """x·A·B with A [in, rank] and B [rank, out] fed as graph inputs. With rank 0 both MatMuls are
    empty and the branch adds zeros: no adapter weights are read (~2% of a full-size decode step
    remains, for the empty MatMuls and the Add)."""
    return graph.op("MatMul", [graph.op("MatMul", [x, a_input]), b_input])
