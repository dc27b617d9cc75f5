"""The blocks the decoder, vision and audio graphs share, as ONNX nodes: linear layers at the
export's precision (int4 MatMulNBits, int8 DynamicQuantizeMatMul or fp32 MatMul), the LoRA
branch, layer norm, RMS norm, bidirectional multi-head attention and the activations.

Weights come from a checkpoint `Weights` scope (one module) and are named after it in the
graph. `linear` takes a `Builder` (the graph and the precision linears are stored at); blocks
that store no linear take the `Graph` alone.
"""

from dataclasses import dataclass

import numpy as np

from ..quant import int4, int8
from .checkpoint import Weights
from .linear import Precision, int4_initializers, matmul_nbits
from .onnx_graph import MS_DOMAIN, Graph


@dataclass(frozen=True)
class Builder:
    """A graph being built and the precision its linears are stored at. Each part's builder
    (decoder, vision, audio) extends it with that part's config."""

    graph: Graph
    precision: Precision


def initializer(graph: Graph, weights: Weights, name: str, shape=None) -> str:
    """Tensor `name` of the module `weights` as an initializer named after it (reshaped to
    `shape` when given); returns the initializer's name."""
    array = weights[name]
    return graph.weight(weights.graph_name(name), array if shape is None else array.reshape(shape))


def linear(builder: Builder, x: str, weights: Weights) -> str:
    """y = x W^T (+ b) for the module `weights`: W = weights["weight"] [out, in], b =
    weights["bias"] when the module has one. W is stored at the builder's precision."""
    graph, precision, name = builder.graph, builder.precision, weights.graph_name()
    weight = weights["weight"]
    weight = weight.reshape(weight.shape[0], -1)  # a 1x1 convolution's [out, in, 1] is a linear too
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
    if "bias" in weights:
        y = graph.add(y, graph.weight(f"{name}.bias", weights["bias"].astype(np.float32)))
    return y


def layer_norm(graph: Graph, x: str, weights: Weights, eps: float) -> str:
    """LayerNorm over the last axis with the module's weight and bias."""
    return graph.op("LayerNormalization", [x, initializer(graph, weights, "weight"), initializer(graph, weights, "bias")],
                    name=weights.graph_name(), axis=-1, epsilon=eps)


def rms_norm(graph: Graph, x: str, weights: Weights, eps: float) -> str:
    """RMSNorm over the last axis with the module's weight, accumulated in fp32."""
    return graph.op("SimplifiedLayerNormalization", [x, initializer(graph, weights, "weight")],
                    name=weights.graph_name(), axis=-1, epsilon=eps, stash_type=1)


def multi_head_attention(graph: Graph, q: str, k: str, v: str, bias: str, num_heads: int, head_dim: int) -> str:
    """softmax(Q K^T / sqrt(head_dim) + bias) V per head, bidirectional. q, k, v are
    [batch, seq, heads * head_dim]; `bias` broadcasts to [batch, heads, seq, seq]. Returns the
    heads' contexts side by side, [batch, seq, heads * head_dim]."""
    per_head = [0, 0, num_heads, head_dim]
    q = graph.transpose(graph.reshape(q, per_head), [0, 2, 1, 3])
    k = graph.transpose(graph.reshape(k, per_head), [0, 2, 3, 1])  # K^T per head
    v = graph.transpose(graph.reshape(v, per_head), [0, 2, 1, 3])
    scores = graph.add(graph.mul(graph.op("MatMul", [q, k]), graph.constant("scale", np.float32(head_dim ** -0.5))), bias)
    context = graph.op("MatMul", [graph.op("Softmax", [scores], axis=-1), v])
    return graph.reshape(graph.transpose(context, [0, 2, 1, 3]), [0, 0, -1])


def gelu(graph: Graph, x: str, approximate: str = "none") -> str:
    """GELU, exact (erf) or with the "tanh" approximation."""
    return graph.op("Gelu", [x], approximate=approximate)


def swish(graph: Graph, x: str) -> str:
    """x * sigmoid(x) (SiLU)."""
    return graph.mul(x, graph.op("Sigmoid", [x]))
