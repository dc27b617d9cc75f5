"""The NPU (Qualcomm QNN HTP) flavor of the language model: static-shape graphs.

The HTP compiles a graph for fixed shapes, so the CPU decoder's dynamic lengths, in-graph rotary
tables and GroupQueryAttention over a growing cache become inputs the runtime fills:

    decoder_npu.onnx          one position per run (decoding)
    decoder_prompt_npu.onnx   `chunk` positions per run (prompts, the last chunk padded)

Both read the same int4 weights (one data file) and take:
    inputs_embeds [1, S, hidden]
    attention_bias [1, 1, group * S, context + S]   0 = may attend, MASKED = may not; one row per
                                                   (query head of a KV group, position), so the
                                                   graph needs no 5-D broadcast
    cos, sin [S, rotary_dim / 2]                    the positions' LongRoPE tables (phi4mm_edge/rope.py)
    logits_index [1]                                which of the S positions gets logits
    past_key_values.N.{key,value} [1, kv_heads, context, head_dim]   the whole fixed-length cache
    lora.layers.N.<module>.{A,B} [in, rank] / [rank, out]            at one static rank: an adapter
                                                   swap is a rebind, "none" binds zeros
and give logits [1, 1, vocab] and present.N.{key,value} [1, kv_heads, S, head_dim]: only the S
new positions, which the runtime writes into its cache (no scatter inside the graph).

Linears are MatMulNBits over the same int4 blocks as the CPU artifact (the QNN EP runs them on the
HTP); everything else is standard ONNX. The embedding is a plain Gather from an fp16 table (the
HTP has no GatherBlockQuantized); image and audio rows are placed by the runtime.
"""

import numpy as np
from onnx import TensorProto

from ..artifact import (ATTENTION_BIAS, INPUT_IDS, INPUTS_EMBEDS, LOGITS, LOGITS_INDEX, ROTARY_COS, ROTARY_SIN,
                        past_key_name, past_value_name, present_key_name, present_value_name)
from .checkpoint import Checkpoint, Weights
from .graph_blocks import Precision, rms_norm
from .onnx_graph import Graph
from .text_decoder import DecoderBuilder, lora_linear, mlp, rotate


def attention(decoder: DecoderBuilder, x: str, layer: int, weights: Weights, positions: int, context: int) -> str:
    """Causal grouped-query attention of S new positions over the cache and themselves."""
    graph, text = decoder.graph, decoder.text
    heads, kv_heads, head_dim = text.num_heads, text.num_kv_heads, text.head_dim
    group = heads // kv_heads
    cache = [1, kv_heads, context, head_dim]
    past_k = graph.input(past_key_name(layer), TensorProto.FLOAT, cache)
    past_v = graph.input(past_value_name(layer), TensorProto.FLOAT, cache)
    qkv = lora_linear(decoder, x, layer, weights, "self_attn.qkv_proj")
    q, k, v = graph.op("Split", [qkv, graph.ints([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim])],
                       outputs=3, axis=-1)

    def per_head(t: str, count: int) -> str:  # [1, S, count * head_dim] -> [1, count, S, head_dim]
        return graph.transpose(graph.reshape(t, [1, positions, count, head_dim]), [0, 2, 1, 3])

    q = rotate(graph, per_head(q, heads), ROTARY_COS, ROTARY_SIN, text)
    k = graph.op("Identity", [rotate(graph, per_head(k, kv_heads), ROTARY_COS, ROTARY_SIN, text)],
                 outputs=[present_key_name(layer)])
    v = graph.op("Identity", [per_head(v, kv_heads)], outputs=[present_value_name(layer)])
    graph.output(present_key_name(layer), TensorProto.FLOAT, [1, kv_heads, positions, head_dim])
    graph.output(present_value_name(layer), TensorProto.FLOAT, [1, kv_heads, positions, head_dim])
    keys = graph.concat([past_k, k], axis=2)  # [1, kv_heads, context + S, head_dim]
    values = graph.concat([past_v, v], axis=2)
    # A KV group's query heads side by side: [1, heads, S, d] -> [1, kv_heads, group * S, d]
    queries = graph.reshape(graph.mul(q, graph.constant("attention_scale", np.float32(head_dim ** -0.5))),
                            [1, kv_heads, group * positions, head_dim])
    scores = graph.add(graph.op("MatMul", [queries, graph.transpose(keys, [0, 1, 3, 2])]), ATTENTION_BIAS)
    context_rows = graph.op("MatMul", [graph.op("Softmax", [scores], axis=-1), values])
    out = graph.reshape(graph.transpose(graph.reshape(context_rows, [1, heads, positions, head_dim]), [0, 2, 1, 3]),
                        [1, positions, heads * head_dim])
    return lora_linear(decoder, out, layer, weights, "self_attn.o_proj")


def decoder_layer(decoder: DecoderBuilder, x: str, layer: int, weights: Weights, positions: int, context: int) -> str:
    graph, eps = decoder.graph, decoder.text.rms_norm_eps
    x = graph.add(x, attention(decoder, rms_norm(graph, x, weights.scope("input_layernorm."), eps), layer, weights,
                               positions, context))
    return graph.add(x, mlp(decoder, rms_norm(graph, x, weights.scope("post_attention_layernorm."), eps),
                            layer, weights))


def build_npu_decoder(checkpoint: Checkpoint, graph: Graph, precision: Precision, lm_head, positions: int,
                      context: int, lora_rank: int, progress=None) -> None:
    """Fill `graph` with the static decoder over `positions` new positions and a cache of
    `context` positions; LoRA inputs at `lora_rank`. `lm_head(graph, hidden)` as in build_decoder."""
    text = checkpoint.text
    group = text.num_heads // text.num_kv_heads
    decoder = DecoderBuilder(graph, precision, text, lora_rank=lora_rank)
    x = graph.input(INPUTS_EMBEDS, TensorProto.FLOAT, [1, positions, text.hidden_size])
    graph.input(ATTENTION_BIAS, TensorProto.FLOAT, [1, 1, group * positions, context + positions])
    graph.input(ROTARY_COS, TensorProto.FLOAT, [positions, text.rotary_dim // 2])
    graph.input(ROTARY_SIN, TensorProto.FLOAT, [positions, text.rotary_dim // 2])
    index = graph.input(LOGITS_INDEX, TensorProto.INT32, [1])
    for layer in range(text.num_layers):
        x = decoder_layer(decoder, x, layer,
                          checkpoint.weights(f"model.layers.{layer}.", graph_prefix=f"layers.{layer}."),
                          positions, context)
        if progress:
            progress(f"NPU decoder layer {layer}")
    x = graph.gather(x, index, axis=1)  # the one position whose logits are wanted, [1, 1, hidden]
    x = rms_norm(graph, x, checkpoint.weights("model.norm.", graph_prefix="norm."), text.rms_norm_eps)
    graph.op("Identity", [lm_head(graph, x)], outputs=[LOGITS], name=LOGITS)
    graph.output(LOGITS, TensorProto.FLOAT, [1, 1, text.vocab_size])


def build_npu_embedding(checkpoint: Checkpoint, graph: Graph, positions: int) -> None:
    """input_ids [1, positions] int32 -> inputs_embeds [1, positions, hidden], from an fp16 table."""
    text = checkpoint.text
    table = graph.weight("embed_tokens.fp16", checkpoint.tensor("model.embed_tokens.weight").astype(np.float16))
    ids = graph.input(INPUT_IDS, TensorProto.INT32, [1, positions])
    rows = graph.op("Gather", [table, ids], axis=0)
    graph.op("Cast", [rows], outputs=[INPUTS_EMBEDS], to=TensorProto.FLOAT, name=INPUTS_EMBEDS)
    graph.output(INPUTS_EMBEDS, TensorProto.FLOAT, [1, positions, text.hidden_size])
