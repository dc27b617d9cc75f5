"""decoder.onnx: Phi-4-mini's decoder layers over inputs_embeds, with a LoRA branch per target.

Inputs: inputs_embeds [batch, seq, hidden], attention_mask [batch, total] (int64; total = past +
seq), past_key_values.N.{key,value} [batch, kv_heads, cache, head_dim], and for every LoRA
target `lora.layers.N.<module>.A` [in, rank] / `.B` [rank, out] (rank 0 = no adapter).
With built-in adapters (graph_adapters.py), `adapter_index` [] picks one (1, 2, ...) or the
A/B inputs (0). logits_to_keep [1] says how many of the last positions get logits.
Outputs: logits [batch, logits_to_keep, vocab] and present.N.{key,value}. Attention is ONNX Runtime's
GroupQueryAttention: past and present may share one buffer of the maximum length.

Where the rotary embedding is applied is a `RotaryPlacement`: inside GroupQueryAttention (its
do_rotary, `IN_ATTENTION`, the default), or by plain ops before it (DirectML's kernel ignores
do_rotary: dml.py's `ROTARY_BEFORE_ATTENTION`).
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np
from onnx import TensorProto

from ..artifact import (ADAPTER_INDEX, ATTENTION_MASK, INPUTS_EMBEDS, LOGITS, LOGITS_TO_KEEP, lora_input_name,
                        past_key_name, past_value_name, present_key_name, present_value_name)
from .checkpoint import Checkpoint, TextConfig, Weights
from .graph_adapters import InGraphAdapter
from .graph_blocks import Builder, Precision, linear, lora_branch, matmul_nbits, rms_norm, row_scaled_int8_matmul, swish
from .onnx_graph import MS_DOMAIN, Graph

LORA_MODULES = {"self_attn.qkv_proj": "qkv_proj", "self_attn.o_proj": "o_proj",
                "mlp.gate_up_proj": "gate_up_proj", "mlp.down_proj": "down_proj"}
LAST_POSITION = np.iinfo(np.int64).max  # a Slice end past any length


@dataclass(frozen=True)
class SequenceTensors:
    """What every layer's GroupQueryAttention reads: per row the valid length - 1, the padded
    total length (int32), and the rotary cos/sin tables the RotaryPlacement made."""

    seqlens_k: str
    total_length: str
    cos: str
    sin: str


@dataclass(frozen=True)
class RotaryPlacement:
    """Where a decoder applies the rotary embedding. `tables(graph, text, total_length, x)` makes
    the cos/sin tables; `attention_inputs(decoder, qkv, sequence)` gives GroupQueryAttention's
    query/key/value inputs and its do_rotary (1: the kernel rotates)."""

    tables: Callable[[Graph, TextConfig, str, str], tuple[str, str]]
    attention_inputs: Callable[["DecoderBuilder", str, SequenceTensors], tuple[list[str], int]]


def inverse_frequencies(text: TextConfig, factors: list[float]) -> np.ndarray:
    """LongRoPE's 1 / (factor_i * theta^(2i/d)) over the rotary dims, in float32 like the reference."""
    exponents = np.arange(0, text.rotary_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(text.rotary_dim)
    return (1.0 / (np.asarray(factors, np.float32) * np.float32(text.rope_theta) ** exponents)).astype(np.float32)


def rotary_tables(graph: Graph, text: TextConfig, total_length: str,
                  first_position: str | None = None) -> tuple[str, str]:
    """cos/sin [total - first, rotary_dim/2] for positions first..total-1 (`first_position` an
    int64 scalar, 0 when None). The long factors apply to every position once the total length
    passes original_max_position_embeddings, as in the reference; both sets are scaled by the
    LongRoPE attention factor. Exact only in fp32 (positions reach 131072): marked keep_fp32."""
    use_long = graph.op("Greater", [total_length, graph.constant("original_max_positions",
                                                                 np.int64(text.original_max_position_embeddings))])
    inv_freq = graph.op("Where", [use_long,
                                  graph.weight("rope.inv_freq_long", inverse_frequencies(text, text.long_factor)),
                                  graph.weight("rope.inv_freq_short", inverse_frequencies(text, text.short_factor))])
    first = graph.ints(0) if first_position is None else first_position
    positions = graph.cast(graph.op("Range", [first, total_length, graph.ints(1)]), TensorProto.FLOAT)
    angles = graph.mul(graph.unsqueeze(positions, [1]), inv_freq)
    factor = graph.constant("rope.attention_factor", np.float32(text.attention_factor))
    cos = graph.op("Mul", [graph.op("Cos", [angles]), factor], name="rope/cos")
    sin = graph.op("Mul", [graph.op("Sin", [angles]), factor], name="rope/sin")
    return graph.keep_fp32(cos), graph.keep_fp32(sin)


def rotate(graph: Graph, x: str, cos: str, sin: str, text: TextConfig) -> str:
    """Rotary embedding as GroupQueryAttention's do_rotary applies it (rotate-half, not
    interleaved): per head, the first rotary_dim dims of x [..., head_dim] in two halves
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin); the rest pass through. cos/sin
    [.., rotary_dim/2] broadcast against x's leading axes."""
    half = text.rotary_dim // 2
    splits = [half, half] + ([text.head_dim - text.rotary_dim] if text.head_dim > text.rotary_dim else [])
    parts = graph.op("Split", [x, graph.ints(splits)], outputs=len(splits), axis=-1)
    x1, x2 = parts[0], parts[1]
    rotated = [graph.sub(graph.mul(x1, cos), graph.mul(x2, sin)), graph.add(graph.mul(x2, cos), graph.mul(x1, sin))]
    return graph.concat(rotated + list(parts[2:]), axis=-1)


IN_ATTENTION = RotaryPlacement(
    # every position: the kernel picks
    tables=lambda graph, text, total_length, x: rotary_tables(graph, text, total_length),
    attention_inputs=lambda decoder, qkv, sequence: ([qkv, "", ""], 1),  # packed qkv, rotated by the kernel
)


@dataclass(frozen=True)
class DecoderBuilder(Builder):
    """The decoder graph being built, its precision, and the language model's sizes."""

    text: TextConfig
    adapters: tuple[InGraphAdapter, ...] = ()  # built-in adapters, in adapter_index order
    adapter_conditions: tuple[str, ...] = ()  # (adapter_index > 0, adapter_index == 1, == 2, ...)
    lora_rank: int | str = "lora_rank"  # the LoRA inputs' rank: symbolic, or static for the NPU graphs
    rotary: RotaryPlacement = IN_ATTENTION


def lora_linear(decoder: DecoderBuilder, x: str, layer: int, weights: Weights, target: str) -> str:
    """A LoRA target linear: the base weight plus the active adapter's low-rank term."""
    graph, module = decoder.graph, LORA_MODULES[target]
    out_features, in_features = weights.shape(f"{target}.weight")
    a = graph.input(lora_input_name(layer, module, "A"), TensorProto.FLOAT, [in_features, decoder.lora_rank])
    b = graph.input(lora_input_name(layer, module, "B"), TensorProto.FLOAT, [decoder.lora_rank, out_features])
    base = linear(decoder, x, weights.scope(f"{target}."))
    name = f"layers.{layer}.{module}.lora"
    if not decoder.adapters:
        return graph.add(base, lora_branch(graph, checkpoint_input(graph, x, weights, target, name), a, b))
    inputs_branch = graph.branch(f"{name}.inputs")
    from_inputs = inputs_branch.op("Identity", [lora_branch(inputs_branch, checkpoint_input(inputs_branch, x, weights,
                                                                                              target, name), a, b)],
                                   outputs=[f"{name}.from_inputs"])
    lora = graph.op("If", [decoder.adapter_conditions[0]], outputs=[f"{name}"], name=f"{name}.choose",
                    then_branch=built_in_lora(decoder, graph, x, layer, target, list(decoder.adapters)),
                    else_branch=graph.subgraph(inputs_branch, [from_inputs]))
    return graph.add(base, lora)


def checkpoint_input(graph: Graph, x: str, weights: Weights, target: str, name: str) -> str:
    """x as the checkpoint's own linear `target` reads it: times the norm gain the export folded
    into the base weights (norm_gains.py), so adapter files bound as inputs need no folding."""
    scale = weights.checkpoint.input_scale(weights.prefix + target)
    return x if scale is None else graph.mul(x, graph.constant(f"{name}.input_scale", scale))


def built_in_lora(decoder: DecoderBuilder, parent: Graph, x: str, layer: int, target: str, adapters: list) -> object:
    """The subgraph computing x · A · B for the built-in adapter adapter_index names: the first of
    `adapters` when its condition holds, else the rest (the last one needs no test)."""
    adapter, name = adapters[0], f"layers.{layer}.{LORA_MODULES[target]}.lora.{adapters[0].name}"
    branch = parent.branch(name)
    precision = decoder.precision  # the base's accuracy level: 4 measured fastest for these GEMVs too (RESULTS.md)
    # the int8 prompt graph: its own GEMM (graph_adapters.py)
    if precision.weights == "int8" and adapter.prompt_weights:
        columns_a, columns_b = adapter.prompt_weights[(layer, target)]
        xa = row_scaled_int8_matmul(branch, x, [branch.add_initializer(copy_proto(p)) for p in columns_a],
                                    None, f"{name}.A")
        product = row_scaled_int8_matmul(branch, xa, [branch.add_initializer(copy_proto(p)) for p in columns_b],
                                         None, f"{name}.B")
    else:
        stored_a, stored_b = adapter.weights[(layer, target)]
        xa = matmul_nbits(branch, x, [copy_proto(p) for p in stored_a.protos], stored_a, precision, f"{name}.A")
        product = matmul_nbits(branch, xa, [copy_proto(p) for p in stored_b.protos], stored_b, precision, f"{name}.B")
    out = branch.op("Identity", [product], outputs=[f"{name}.out"])
    this = parent.subgraph(branch, [out], keep_initializers=True)  # prepacked with the branch's kernels
    if len(adapters) == 1:
        return this
    chooser = parent.branch(f"{name}.or_next")
    chosen = chooser.op("If", [decoder.adapter_conditions[adapter.index]], outputs=[f"{name}.chosen"],
                        then_branch=this, else_branch=built_in_lora(decoder, chooser, x, layer, target, adapters[1:]))
    return parent.subgraph(chooser, [chosen], keep_initializers=True)


def copy_proto(proto):
    """Each graph (and branch) holds its own TensorProto naming the same external bytes."""
    copy = type(proto)()
    copy.CopyFrom(proto)
    return copy


def attention(decoder: DecoderBuilder, x: str, layer: int, weights: Weights, sequence: SequenceTensors) -> str:
    """GroupQueryAttention over the layer's KV cache (past in, present out) with rotary positions."""
    graph, text = decoder.graph, decoder.text
    shape = ["batch", text.num_kv_heads, "cache_length", text.head_dim]
    past_k = graph.input(past_key_name(layer), TensorProto.FLOAT, shape)
    past_v = graph.input(past_value_name(layer), TensorProto.FLOAT, shape)
    qkv = lora_linear(decoder, x, layer, weights, "self_attn.qkv_proj")
    queries, rotary = decoder.rotary.attention_inputs(decoder, qkv, sequence)
    inputs = [*queries, past_k, past_v, sequence.seqlens_k, sequence.total_length,
              *([sequence.cos, sequence.sin] if rotary else [])]
    out, _, _ = graph.op(
        "GroupQueryAttention", inputs,
        outputs=[f"layers.{layer}.attn", present_key_name(layer), present_value_name(layer)],
        domain=MS_DOMAIN, name=f"layers.{layer}.GroupQueryAttention",
        num_heads=text.num_heads, kv_num_heads=text.num_kv_heads, do_rotary=rotary, rotary_interleaved=0,
    )
    graph.output(present_key_name(layer), TensorProto.FLOAT, shape)
    graph.output(present_value_name(layer), TensorProto.FLOAT, shape)
    return lora_linear(decoder, out, layer, weights, "self_attn.o_proj")


def mlp(decoder: DecoderBuilder, x: str, layer: int, weights: Weights) -> str:
    """down_proj(up * silu(gate))."""
    graph = decoder.graph
    gate, up = graph.op("Split", [lora_linear(decoder, x, layer, weights, "mlp.gate_up_proj")], outputs=2,
                        axis=-1, num_outputs=2)
    return lora_linear(decoder, graph.mul(up, swish(graph, gate)), layer, weights, "mlp.down_proj")


def decoder_layer(decoder: DecoderBuilder, x: str, layer: int, weights: Weights, sequence: SequenceTensors) -> str:
    """x + attention(input_layernorm(x)), then + mlp(post_attention_layernorm(x))."""
    graph, eps = decoder.graph, decoder.text.rms_norm_eps
    x = graph.add(x, attention(decoder, rms_norm(graph, x, weights.scope("input_layernorm."), eps), layer,
                               weights, sequence))
    return graph.add(x, mlp(decoder, rms_norm(graph, x, weights.scope("post_attention_layernorm."), eps),
                            layer, weights))


def build_decoder(checkpoint: Checkpoint, graph: Graph, precision: Precision, lm_head, progress=None,
                  adapters: tuple[InGraphAdapter, ...] = (), rotary: RotaryPlacement = IN_ATTENTION) -> None:
    """Fill `graph` with the decoder. `lm_head(graph, hidden)` emits the output projection (it may
    share the embedding table's weights) and returns the logits name. `adapters` are built in as
    int4 constants, chosen by the `adapter_index` input. `rotary` says where positions are
    rotated (module docstring)."""
    text = checkpoint.text
    conditions = ()
    if adapters:
        index = graph.input(ADAPTER_INDEX, TensorProto.INT64, [])
        conditions = (graph.op("Greater", [index, graph.ints(0)], name="adapter_is_built_in"),
                      *(graph.op("Equal", [index, graph.ints(a.index)], name=f"adapter_is_{a.name}") for a in adapters))
    decoder = DecoderBuilder(graph, precision, text, tuple(adapters), conditions, rotary=rotary)
    x = graph.input(INPUTS_EMBEDS, TensorProto.FLOAT, ["batch", "sequence", text.hidden_size])
    mask = graph.input(ATTENTION_MASK, TensorProto.INT64, ["batch", "total_sequence"])
    # GroupQueryAttention wants per-row (valid length - 1) and the padded total length, int32.
    seqlens_k = graph.op("Cast", [graph.sub(graph.reduce_sum(mask, [1]), graph.ints(1))], to=TensorProto.INT32,
                         name="seqlens_k")
    total_length = graph.op("Squeeze", [graph.gather(graph.op("Shape", [mask]), [1], axis=0)], name="total_length")
    cos, sin = rotary.tables(graph, text, total_length, x)
    sequence = SequenceTensors(seqlens_k, graph.cast(total_length, TensorProto.INT32), cos, sin)
    for layer in range(text.num_layers):
        x = decoder_layer(decoder, x, layer,
                          checkpoint.weights(f"model.layers.{layer}.", graph_prefix=f"layers.{layer}."), sequence)
        if progress:
            progress(f"decoder layer {layer}")
    x = rms_norm(graph, x, checkpoint.weights("model.norm.", graph_prefix="norm."), text.rms_norm_eps)
    # Only the last `logits_to_keep` positions reach lm_head: generation needs one row, and at
    # vocab 200064 all rows of a long prompt would cost ~0.8 MB each, all thrown away.
    keep = graph.input(LOGITS_TO_KEEP, TensorProto.INT64, [1])
    x = graph.op("Slice", [x, graph.op("Neg", [keep]), graph.ints([LAST_POSITION]), graph.ints([1])],
                 name="last_positions")
    graph.op("Identity", [lm_head(graph, x)], outputs=[LOGITS], name=LOGITS)
    graph.output(LOGITS, TensorProto.FLOAT, ["batch", "kept_positions", text.vocab_size])
