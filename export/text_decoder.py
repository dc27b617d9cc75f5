"""decoder.onnx: Phi-4-mini's decoder layers over inputs_embeds, with a LoRA branch per target.

Inputs: inputs_embeds [batch, seq, hidden], attention_mask [batch, total] (int64; total = past +
seq), past_key_values.N.{key,value} [batch, kv_heads, cache, head_dim], and for every LoRA
target `lora.layers.N.<module>.A` [in, rank] / `.B` [rank, out] (rank 0 = no adapter).
logits_to_keep [1] says how many of the last positions get logits.
Outputs: logits [batch, logits_to_keep, vocab] and present.N.{key,value}. Attention is ONNX Runtime's
GroupQueryAttention: past and present may share one buffer of the maximum length.
"""

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from ..artifact import lora_input_name, past_key_name, past_value_name, present_key_name, present_value_name
from .checkpoint import Checkpoint, TextConfig, Weights
from .graph_blocks import Builder, Precision, linear, lora_branch, rms_norm, swish
from .onnx_graph import MS_DOMAIN, Graph

LORA_MODULES = {"self_attn.qkv_proj": "qkv_proj", "self_attn.o_proj": "o_proj",
                "mlp.gate_up_proj": "gate_up_proj", "mlp.down_proj": "down_proj"}
LAST_POSITION = np.iinfo(np.int64).max  # a Slice end past any length


@dataclass(frozen=True)
class DecoderBuilder(Builder):
    """The decoder graph being built, its precision, and the language model's sizes."""

    text: TextConfig


@dataclass(frozen=True)
class SequenceTensors:
    """What every layer's GroupQueryAttention reads: per row the valid length - 1, the padded
    total length (int32), and the rotary cos/sin tables."""

    seqlens_k: str
    total_length: str
    cos: str
    sin: str


def inverse_frequencies(text: TextConfig, factors: list[float]) -> np.ndarray:
    """LongRoPE's 1 / (factor_i * theta^(2i/d)) over the rotary dims, in float32 like the reference."""
    exponents = np.arange(0, text.rotary_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(text.rotary_dim)
    return (1.0 / (np.asarray(factors, np.float32) * np.float32(text.rope_theta) ** exponents)).astype(np.float32)


def rotary_tables(graph: Graph, text: TextConfig, total_length: str) -> tuple[str, str]:
    """cos/sin [total, rotary_dim/2] for positions 0..total-1. The long factors apply to every
    position once the total length passes original_max_position_embeddings, as in the reference;
    both sets are scaled by the LongRoPE attention factor."""
    use_long = graph.op("Greater", [total_length, graph.constant("original_max_positions", np.int64(text.original_max_position_embeddings))])
    inv_freq = graph.op("Where", [use_long, graph.weight("rope.inv_freq_long", inverse_frequencies(text, text.long_factor)),
                                  graph.weight("rope.inv_freq_short", inverse_frequencies(text, text.short_factor))])
    positions = graph.cast(graph.op("Range", [graph.ints(0), total_length, graph.ints(1)]), TensorProto.FLOAT)
    angles = graph.mul(graph.unsqueeze(positions, [1]), inv_freq)
    factor = graph.constant("rope.attention_factor", np.float32(text.attention_factor))
    cos = graph.op("Mul", [graph.op("Cos", [angles]), factor], name="rope/cos")
    sin = graph.op("Mul", [graph.op("Sin", [angles]), factor], name="rope/sin")
    return cos, sin


def lora_linear(decoder: DecoderBuilder, x: str, layer: int, weights: Weights, target: str) -> str:
    """A LoRA target linear: the base weight plus the adapter's low-rank branch, whose A and B
    are graph inputs."""
    graph, module = decoder.graph, LORA_MODULES[target]
    out_features, in_features = weights.shape(f"{target}.weight")
    a = graph.input(lora_input_name(layer, module, "A"), TensorProto.FLOAT, [in_features, "lora_rank"])
    b = graph.input(lora_input_name(layer, module, "B"), TensorProto.FLOAT, ["lora_rank", out_features])
    return graph.add(linear(decoder, x, weights.scope(f"{target}.")), lora_branch(graph, x, a, b))


def attention(decoder: DecoderBuilder, x: str, layer: int, weights: Weights, sequence: SequenceTensors) -> str:
    """GroupQueryAttention over the layer's KV cache (past in, present out) with rotary positions."""
    graph, text = decoder.graph, decoder.text
    shape = ["batch", text.num_kv_heads, "cache_length", text.head_dim]
    past_k = graph.input(past_key_name(layer), TensorProto.FLOAT, shape)
    past_v = graph.input(past_value_name(layer), TensorProto.FLOAT, shape)
    qkv = lora_linear(decoder, x, layer, weights, "self_attn.qkv_proj")
    out, _, _ = graph.op(
        "GroupQueryAttention", [qkv, "", "", past_k, past_v, sequence.seqlens_k, sequence.total_length, sequence.cos, sequence.sin],
        outputs=[f"layers.{layer}.attn", present_key_name(layer), present_value_name(layer)],
        domain=MS_DOMAIN, name=f"layers.{layer}.GroupQueryAttention",
        num_heads=text.num_heads, kv_num_heads=text.num_kv_heads, do_rotary=1, rotary_interleaved=0,
    )
    graph.output(present_key_name(layer), TensorProto.FLOAT, shape)
    graph.output(present_value_name(layer), TensorProto.FLOAT, shape)
    return lora_linear(decoder, out, layer, weights, "self_attn.o_proj")


def mlp(decoder: DecoderBuilder, x: str, layer: int, weights: Weights) -> str:
    """down_proj(up * silu(gate))."""
    graph = decoder.graph
    gate, up = graph.op("Split", [lora_linear(decoder, x, layer, weights, "mlp.gate_up_proj")], outputs=2, axis=-1, num_outputs=2)
    return lora_linear(decoder, graph.mul(up, swish(graph, gate)), layer, weights, "mlp.down_proj")


def decoder_layer(decoder: DecoderBuilder, x: str, layer: int, weights: Weights, sequence: SequenceTensors) -> str:
    """x + attention(input_layernorm(x)), then + mlp(post_attention_layernorm(x))."""
    graph, eps = decoder.graph, decoder.text.rms_norm_eps
    x = graph.add(x, attention(decoder, rms_norm(graph, x, weights.scope("input_layernorm."), eps), layer, weights, sequence))
    return graph.add(x, mlp(decoder, rms_norm(graph, x, weights.scope("post_attention_layernorm."), eps), layer, weights))


def build_decoder(checkpoint: Checkpoint, graph: Graph, precision: Precision, lm_head, progress=None) -> None:
    """Fill `graph` with the decoder. `lm_head(graph, hidden)` emits the output projection (it may
    share the embedding table's weights) and returns the logits name."""
    text = checkpoint.text
    decoder = DecoderBuilder(graph, precision, text)
    x = graph.input("inputs_embeds", TensorProto.FLOAT, ["batch", "sequence", text.hidden_size])
    mask = graph.input("attention_mask", TensorProto.INT64, ["batch", "total_sequence"])
    # GroupQueryAttention wants per-row (valid length - 1) and the padded total length, int32.
    seqlens_k = graph.op("Cast", [graph.sub(graph.reduce_sum(mask, [1]), graph.ints(1))], to=TensorProto.INT32, name="seqlens_k")
    total_length = graph.op("Squeeze", [graph.gather(graph.op("Shape", [mask]), [1], axis=0)], name="total_length")
    cos, sin = rotary_tables(graph, text, total_length)
    sequence = SequenceTensors(seqlens_k, graph.cast(total_length, TensorProto.INT32), cos, sin)
    for layer in range(text.num_layers):
        x = decoder_layer(decoder, x, layer, checkpoint.weights(f"model.layers.{layer}.", graph_prefix=f"layers.{layer}."), sequence)
        if progress:
            progress(f"decoder layer {layer}")
    x = rms_norm(graph, x, checkpoint.weights("model.norm.", graph_prefix="norm."), text.rms_norm_eps)
    # Only the last `logits_to_keep` positions reach lm_head: generation needs one row, and at
    # vocab 200064 all rows of a long prompt would cost ~0.8 MB each, all thrown away.
    keep = graph.input("logits_to_keep", TensorProto.INT64, [1])
    x = graph.op("Slice", [x, graph.op("Neg", [keep]), graph.ints([LAST_POSITION]), graph.ints([1])], name="last_positions")
    graph.op("Identity", [lm_head(graph, x)], outputs=["logits"], name="logits")
    graph.output("logits", TensorProto.FLOAT, ["batch", "kept_positions", text.vocab_size])
