"""decoder.onnx: Phi-4-mini's decoder layers over inputs_embeds, with a LoRA branch per target.

Inputs: inputs_embeds [batch, seq, hidden], attention_mask [batch, total] (int64; total = past +
seq), past_key_values.N.{key,value} [batch, kv_heads, cache, head_dim], and for every LoRA
target `lora.layers.N.<module>.A` [in, rank] / `.B` [rank, out] (rank 0 = no adapter).
logits_to_keep [1] says how many of the last positions get logits.
Outputs: logits [batch, logits_to_keep, vocab] and present.N.{key,value}. Attention is ONNX Runtime's
GroupQueryAttention: past and present may share one buffer of the maximum length.
"""

import numpy as np
from onnx import TensorProto

from ..artifact import lora_input_name, past_key_name, past_value_name, present_key_name, present_value_name
from .checkpoint import Checkpoint, TextConfig
from .linear import Precision, linear, lora_branch
from .onnx_graph import MS_DOMAIN, Graph

LORA_MODULES = {"self_attn.qkv_proj": "qkv_proj", "self_attn.o_proj": "o_proj",
                "mlp.gate_up_proj": "gate_up_proj", "mlp.down_proj": "down_proj"}


def inverse_frequencies(text: TextConfig, factors: list[float]) -> np.ndarray:
    """LongRoPE's 1 / (factor_i * theta^(2i/d)) over the rotary dims, in float32 like the reference."""
    exponents = np.arange(0, text.rotary_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(text.rotary_dim)
    return (1.0 / (np.asarray(factors, np.float32) * np.float32(text.rope_theta) ** exponents)).astype(np.float32)


def rotary_tables(g: Graph, text: TextConfig, total_length: str) -> tuple[str, str]:
    """cos/sin [total, rotary_dim/2] for positions 0..total-1. The long factors apply to every
    position once the total length passes original_max_position_embeddings, as in the reference;
    both sets are scaled by the LongRoPE attention factor."""
    use_long = g.op("Greater", [total_length, g.constant("original_max_positions", np.int64(text.original_max_position_embeddings))])
    inv_freq = g.op("Where", [use_long, g.weight("rope.inv_freq_long", inverse_frequencies(text, text.long_factor)),
                              g.weight("rope.inv_freq_short", inverse_frequencies(text, text.short_factor))])
    positions = g.op("Cast", [g.op("Range", [g.constant("zero", np.int64(0)), total_length, g.constant("one", np.int64(1))])], to=TensorProto.FLOAT)
    angles = g.op("Mul", [g.op("Unsqueeze", [positions, g.constant("axis1", np.array([1], np.int64))]), inv_freq])
    factor = g.constant("rope.attention_factor", np.float32(text.attention_factor))
    cos = g.op("Mul", [g.op("Cos", [angles]), factor], name="rope/cos")
    sin = g.op("Mul", [g.op("Sin", [angles]), factor], name="rope/sin")
    return cos, sin


def rms_norm(g: Graph, x: str, weight: np.ndarray, eps: float, name: str) -> str:
    return g.op("SimplifiedLayerNormalization", [x, g.weight(f"{name}.weight", weight)], name=name, axis=-1, epsilon=eps, stash_type=1)


class DecoderBuilder:
    """Emits the decoder one block at a time, reading each weight from the checkpoint as it goes."""

    def __init__(self, checkpoint: Checkpoint, graph: Graph, precision: Precision):
        self.ckpt, self.g, self.precision, self.text = checkpoint, graph, precision, checkpoint.text

    def projection(self, x: str, layer: int, target: str) -> str:
        """A LoRA target linear: base weight plus the adapter's low-rank branch."""
        module = LORA_MODULES[target]
        weight = self.ckpt.tensor(f"model.layers.{layer}.{target}.weight")
        out_features, in_features = weight.shape
        a = self.g.input(lora_input_name(layer, module, "A"), TensorProto.FLOAT, [in_features, "lora_rank"])
        b = self.g.input(lora_input_name(layer, module, "B"), TensorProto.FLOAT, ["lora_rank", out_features])
        base = linear(self.g, x, weight, f"layers.{layer}.{module}", self.precision)
        return self.g.op("Add", [base, lora_branch(self.g, x, a, b)])

    def attention(self, x: str, layer: int, seqlens_k: str, total_length: str, cos: str, sin: str) -> str:
        t, g = self.text, self.g
        shape = ["batch", t.num_kv_heads, "cache_length", t.head_dim]
        past_k = g.input(past_key_name(layer), TensorProto.FLOAT, shape)
        past_v = g.input(past_value_name(layer), TensorProto.FLOAT, shape)
        qkv = self.projection(x, layer, "self_attn.qkv_proj")
        out, _, _ = g.op(
            "GroupQueryAttention", [qkv, "", "", past_k, past_v, seqlens_k, total_length, cos, sin],
            outputs=[f"layers.{layer}.attn", present_key_name(layer), present_value_name(layer)],
            domain=MS_DOMAIN, name=f"layers.{layer}.GroupQueryAttention",
            num_heads=t.num_heads, kv_num_heads=t.num_kv_heads, do_rotary=1, rotary_interleaved=0,
        )
        g.output(present_key_name(layer), TensorProto.FLOAT, shape)
        g.output(present_value_name(layer), TensorProto.FLOAT, shape)
        return self.projection(out, layer, "self_attn.o_proj")

    def mlp(self, x: str, layer: int) -> str:
        gate_up = self.projection(x, layer, "mlp.gate_up_proj")
        gate, up = self.g.op("Split", [gate_up], outputs=2, axis=-1, num_outputs=2)
        activated = self.g.op("Mul", [up, self.g.op("Mul", [gate, self.g.op("Sigmoid", [gate])])])  # up * silu(gate)
        return self.projection(activated, layer, "mlp.down_proj")

    def decoder_layer(self, x: str, layer: int, seqlens_k, total_length, cos, sin) -> str:
        t, p = self.text, f"model.layers.{layer}."
        h = rms_norm(self.g, x, self.ckpt.tensor(p + "input_layernorm.weight"), t.rms_norm_eps, f"layers.{layer}.input_layernorm")
        x = self.g.op("Add", [x, self.attention(h, layer, seqlens_k, total_length, cos, sin)])
        h = rms_norm(self.g, x, self.ckpt.tensor(p + "post_attention_layernorm.weight"), t.rms_norm_eps, f"layers.{layer}.post_attention_layernorm")
        return self.g.op("Add", [x, self.mlp(h, layer)])


def build_decoder(checkpoint: Checkpoint, graph: Graph, precision: Precision, lm_head, progress=None) -> None:
    """Fill `graph` with the decoder. `lm_head(graph, hidden)` emits the output projection (it may
    share the embedding table's weights) and returns the logits name."""
    t, g = checkpoint.text, graph
    builder = DecoderBuilder(checkpoint, g, precision)
    x = g.input("inputs_embeds", TensorProto.FLOAT, ["batch", "sequence", t.hidden_size])
    mask = g.input("attention_mask", TensorProto.INT64, ["batch", "total_sequence"])
    # GroupQueryAttention wants per-row (valid length - 1) and the padded total length, int32.
    seqlens_k = g.op("Cast", [g.op("Sub", [g.op("ReduceSum", [mask, g.constant("axis1", np.array([1], np.int64))], keepdims=0),
                                           g.constant("one", np.int64(1))])], to=TensorProto.INT32, name="seqlens_k")
    total_length = g.op("Squeeze", [g.op("Gather", [g.op("Shape", [mask]), g.constant("index1", np.array([1], np.int64))], axis=0)], name="total_length")
    cos, sin = rotary_tables(g, t, total_length)
    total_length_i32 = g.op("Cast", [total_length], to=TensorProto.INT32)
    for layer in range(t.num_layers):
        x = builder.decoder_layer(x, layer, seqlens_k, total_length_i32, cos, sin)
        if progress:
            progress(f"decoder layer {layer}")
    x = rms_norm(g, x, checkpoint.tensor("model.norm.weight"), t.rms_norm_eps, "norm")
    # Only the last `logits_to_keep` positions reach lm_head: generation needs one row, and at
    # vocab 200064 all rows of a long prompt would cost ~0.8 MB each, all thrown away.
    keep = g.input("logits_to_keep", TensorProto.INT64, [1])
    x = g.op("Slice", [x, g.op("Neg", [keep]), g.constant("end", np.array([np.iinfo(np.int64).max], np.int64)),
                       g.constant("axis1", np.array([1], np.int64))], name="last_positions")
    g.op("Identity", [lm_head(g, x)], outputs=["logits"], name="logits")
    g.output("logits", TensorProto.FLOAT, ["batch", "kept_positions", t.vocab_size])
