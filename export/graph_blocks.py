"""The blocks the decoder, vision and audio graphs share, as ONNX nodes: linear layers at the
export's precision (int4 MatMulNBits, int8 rows x int8 columns, or fp32 MatMul), the LoRA
branch, layer norm, RMS norm, bidirectional multi-head attention (plain ops, or ONNX Runtime's
fused kernel) and the activations.

Weights come from a checkpoint `Weights` scope (one module) and are named after it in the
graph. `linear` takes a `Builder` (the graph and the precision linears are stored at); blocks
that store no linear take the `Graph` alone.
"""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..quant import int4, int8
from .checkpoint import Weights
from .onnx_graph import MS_DOMAIN, ExternalData, Graph

MATMUL_NBITS_BIAS = 5  # MatMulNBits' input index of its optional bias (after zero_points and g_idx)
MASKED_SCORE = np.float32(np.finfo(np.float32).min)  # added to a hidden key's score: softmax gives it exactly 0


@dataclass(frozen=True)
class Precision:
    """How base weights are stored. accuracy_level 4 lets the CPU kernel quantize activations
    to int8 per block (its fastest path); 0 keeps fp32 activations. "int8" is the precision of the
    int8 prompt graph and of the encoders: 7-bit per-output-channel weights (quant/int8.py) and
    activations rounded per row on a fixed grid (row_scaled_int8_matmul); `int8_row_scales=False`
    is ONNX Runtime's DynamicQuantizeMatMul, one grid per tensor, kept for comparisons only."""

    weights: str = "int4"  # "int4", "fp32", or "int8" (the int8 prompt graph and the encoders)
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4
    int8_row_scales: bool = True
    int8_weight_bits: int = 7  # 8 only for CPUs whose int8 dot products do not saturate (quant/int8.py)
    # The int4 kernel adds a linear's bias itself; the QNN HTP's MatMulNBits takes no bias input
    # (ONNX Runtime 1.32's QNN plugin 2.7.0 rejects the node with one), so its graphs Add it after.
    bias_in_kernel: bool = True

    @property
    def is_int4(self) -> bool:
        return self.weights == "int4"


@dataclass(frozen=True)
class Builder:
    """A graph being built and the precision its linears are stored at. Each part's builder
    (decoder, vision, audio) extends it with that part's config."""

    graph: Graph
    precision: Precision
    linear_bias: ClassVar[bool] = False  # the part's linears store a bias (a missing one is an error)


@dataclass(frozen=True)
class EncoderBuilder(Builder):
    """An encoder's graph (vision, audio): its sizes (`config`, with num_heads and hidden_size) and
    how attention runs: ONNX Runtime's fused kernel (the default) or plain ops (kept to measure
    and test against, and for the NPU)."""

    config: object
    fused_attention: bool = True
    linear_bias: ClassVar[bool] = True


def initializer(graph: Graph, weights: Weights, name: str, shape=None) -> str:
    """Tensor `name` of the module `weights` as an initializer named after it (reshaped to
    `shape` when given); returns the initializer's name."""
    array = weights[name]
    return graph.weight(weights.graph_name(name), array if shape is None else array.reshape(shape))


def block_initializers(data: ExternalData, name: str, quantized):
    """TensorProtos for MatMulNBits' B, scales and optional zero points (an int4.Int4Weight or
    int8.Int8Blocks), in `data`."""
    protos = [
        data.tensor(f"{name}.qweight", quantized.packed),
        data.tensor(f"{name}.scales", quantized.scales),
    ]
    if quantized.zero_points is not None:
        protos.append(data.tensor(f"{name}.zero_points", quantized.zero_points))
    return protos


def matmul_nbits(graph: Graph, x: str, protos, quantized, precision: Precision, name: str,
                 bias: str | None = None) -> str:
    """x W^T (+ bias, added by the kernel) for a block-quantized W (`quantized.bits`: 4 or 8)
    whose initializers `protos` are already written."""
    inputs = [x, *(graph.add_initializer(p) for p in protos)]
    if bias:
        inputs += [""] * (MATMUL_NBITS_BIAS - len(inputs)) + [bias]  # after the absent optional inputs
    n, k = quantized.shape
    return graph.op(
        "MatMulNBits", inputs, domain=MS_DOMAIN, name=name,
        K=k, N=n, bits=quantized.bits, block_size=quantized.block_size,
        accuracy_level=precision.accuracy_level,
    )


def linear(builder: Builder, x: str, weights: Weights) -> str:
    """y = x W^T (+ b) for the module `weights`: W = weights["weight"] [out, in], b =
    weights["bias"] when the builder's part has biases. W is stored at the builder's precision;
    the int4 and int8 kernels add b themselves (one pass over y fewer than an Add), unless the
    precision says the target's kernel takes no bias."""
    graph, precision, name = builder.graph, builder.precision, weights.graph_name()
    weight = weights["weight"]
    weight = weight.reshape(weight.shape[0], -1)  # a 1x1 convolution's [out, in, 1] is a linear too
    bias = graph.weight(f"{name}.bias", weights["bias"].astype(np.float32)) if builder.linear_bias else None
    if precision.is_int4:
        quantized = int4.quantize(weight, precision.block_size, precision.symmetric)
        kernel_bias = bias if precision.bias_in_kernel else None
        y = matmul_nbits(graph, x, block_initializers(graph.data, name, quantized), quantized, precision,
                         name, kernel_bias)
        return graph.add(y, bias) if bias and not kernel_bias else y
    if precision.weights == "int8":
        columns = int8.quantize_columns(weight, precision.int8_weight_bits)
        weight_names = [graph.weight(f"{name}.int8", columns.weight_t),
                        graph.weight(f"{name}.int8_scales", columns.scales)]
        if precision.int8_row_scales:
            return row_scaled_int8_matmul(graph, x, weight_names, bias, name)
        return graph.op("DynamicQuantizeMatMul", [x, *weight_names] + (["", bias] if bias else []),
                        domain=MS_DOMAIN, name=name)
    y = graph.op("MatMul", [x, graph.weight(f"{name}.weight_t", np.ascontiguousarray(weight.T))], name=name)
    return graph.add(y, bias) if bias else y


def row_scaled_int8_matmul(graph: Graph, x: str, weight_names: list[str], bias: str | None, name: str) -> str:
    """x W^T (+ bias) with each activation row rounded to uint8 on its own grid: the row is
    divided by its peak (max |x|) and rounded at steps of 1/127 around zero point 128, the integer
    GEMM (MatMulIntegerToFloat: MLAS's uint8 x int8 kernel, the one DynamicQuantizeMatMul runs)
    scales its int32 sums by 1/127 and the weight's column scales, and the row's peak multiplies
    the result back.

    Why not DynamicQuantizeMatMul, which rounds the whole input on one grid: one large token (a
    transformer's "massive activation", in vision towers and in LLMs' MLPs alike) would coarsen
    every row's grid: with one element at 300 in a [512, 1152] input of unit scale, the other rows'
    error is 34% per tensor and 0.8% per row (tests/test_vision.py); and a row's result would
    depend on which other rows share its run, so a prompt run in two pieces would not equal the
    prompt run whole. On a fixed grid each row's result depends on that row alone, bit for bit
    (tests/test_parity.py). Rows that are all zero stay zero."""
    peak = graph.op("Max", [graph.op("ReduceMax", [graph.op("Abs", [x]), graph.ints([-1])], keepdims=1),
                            graph.constant("tiny", np.float32(np.finfo(np.float32).tiny))])
    step = graph.constant("int8_row_step", np.float32(1 / int8.ROW_LIMIT))
    zero = graph.constant("int8_row_zero", np.uint8(int8.ROW_ZERO_POINT))
    rounded = graph.op("QuantizeLinear", [graph.op("Div", [x, peak]), step, zero])
    y = graph.op("MatMulIntegerToFloat", [rounded, weight_names[0], step, weight_names[1], zero],
                 domain=MS_DOMAIN, name=name)
    y = graph.mul(y, peak)
    return graph.add(y, bias) if bias else y


def lora_branch(graph: Graph, x: str, a_input: str, b_input: str) -> str:
    """x·A·B with A [in, rank] and B [rank, out] fed as graph inputs. With rank 0 both MatMuls are
    empty and the branch adds zeros: no adapter weights are read (~2% of a full-size decode step
    remains, for the empty MatMuls and the Add)."""
    return graph.op("MatMul", [graph.op("MatMul", [x, a_input]), b_input])


def layer_norm(graph: Graph, x: str, weights: Weights, eps: float) -> str:
    """LayerNorm over the last axis with the module's weight and bias."""
    return graph.op("LayerNormalization",
                    [x, initializer(graph, weights, "weight"), initializer(graph, weights, "bias")],
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
    scores = graph.add(graph.mul(graph.op("MatMul", [q, k]), graph.constant("scale", np.float32(head_dim ** -0.5))),
                       bias)
    context = graph.op("MatMul", [graph.op("Softmax", [scores], axis=-1), v])
    return graph.reshape(graph.transpose(context, [0, 2, 1, 3]), [0, 0, -1])


def fused_attention(graph: Graph, q: str, k: str, v: str, num_heads: int, key_padding_mask: str | None = None,
                    bias: str | None = None) -> str:
    """multi_head_attention in one ONNX Runtime kernel (com.microsoft MultiHeadAttention): per
    head, scores, mask, softmax and context run back to back in one parallel loop, without the
    plain graph's Transposes and its broadcast Add over [batch, heads, seq, seq]. q, k, v are
    [batch, seq, heads * head_dim];
    `key_padding_mask` int32 [batch, seq] (0 hides that key from every query) adds
    MASKED_SCORE to the hidden keys' scores, as the plain graph's bias does; `bias` [1 or batch,
    heads or 1, seq, seq] is added to the scores. Scale 1/sqrt(head_dim), bidirectional."""
    inputs = [q, k, v, "", key_padding_mask or "", bias or ""]  # "" = an absent optional input
    while not inputs[-1]:
        inputs.pop()
    return graph.op("MultiHeadAttention", inputs, domain=MS_DOMAIN, num_heads=num_heads,
                    mask_filter_value=float(MASKED_SCORE))


def self_attention(encoder: EncoderBuilder, x: str, weights: Weights, out_projection: str,
                   key_padding: str | None = None, bias: str | None = None) -> str:
    """An encoder layer's bidirectional self-attention: the q/k/v projections, attention (fused or
    plain ops), then `out_projection`. `key_padding` hides padding keys: an int32 [batch, seq]
    mask for the fused kernel, an additive bias for plain ops; `bias` is added to the scores."""
    graph, config = encoder.graph, encoder.config
    q, k, v = (linear(encoder, x, weights.scope(projection)) for projection in ("q_proj.", "k_proj.", "v_proj."))
    if encoder.fused_attention:
        context = fused_attention(graph, q, k, v, config.num_heads, key_padding_mask=key_padding, bias=bias)
    else:
        context = multi_head_attention(graph, q, k, v, key_padding or bias, config.num_heads,
                                       config.hidden_size // config.num_heads)
    return linear(encoder, context, weights.scope(out_projection))


def gelu(graph: Graph, x: str, approximate: str = "none") -> str:
    """GELU, exact (erf) or with the "tanh" approximation."""
    return graph.op("Gelu", [x], approximate=approximate)


def swish(graph: Graph, x: str) -> str:
    """x * sigmoid(x) (SiLU)."""
    return graph.mul(x, graph.op("Sigmoid", [x]))
