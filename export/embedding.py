"""embedding.onnx and the token table it shares with the decoder's lm_head.

embedding.onnx: input_ids [batch, seq], image_features [image_tokens, hidden] and
audio_features [audio_tokens, hidden] -> inputs_embeds [batch, seq, hidden]. Token embeddings
are looked up, then the rows at the image (200010) / audio (200011) placeholder ids are replaced,
in order, by the feature rows. Either feature input may have zero rows.

In an int4 export the table is block-quantized (GatherBlockQuantized), at 4 bits or, on the CPU
with --token-table int8, at 8 (ExportOptions.token_table_bits says when and why). When lm_head is tied to it, the
decoder's MatMulNBits reads the very same bytes: one quantized copy on disk, in its own data file
that both graphs point at.
"""

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from ..artifact import AUDIO_FEATURES, IMAGE_FEATURES, INPUTS_EMBEDS, INPUT_IDS
from ..quant import int4, int8
from .checkpoint import Checkpoint, TextConfig
from .graph_blocks import Builder, Precision, block_initializers, linear, matmul_nbits
from .onnx_graph import MS_DOMAIN, ExternalData, Graph

TABLE = "embed_tokens"


@dataclass
class TokenTable:
    """Where the token embedding table lives in the shared data file, and how it is stored."""

    precision: Precision
    vocab_size: int
    hidden_size: int
    fp32: object = None  # TensorProto [vocab, hidden] when stored as fp32
    quantized: int4.Int4Weight | int8.Int8Blocks | None = None
    protos: list | None = None  # the quantized table: qweight [vocab, blocks, blob], scales, zero points


def write_token_table(checkpoint: Checkpoint, data: ExternalData, precision: Precision, bits: int = 4) -> TokenTable:
    """Write model.embed_tokens.weight once into `data`: at `precision`, its blocks at `bits`
    (4, or 8: symmetric blocks of the same size) when the precision is int4."""
    t = checkpoint.text
    table = checkpoint.tensor("model.embed_tokens.weight")
    if precision.is_int4:
        quantized = (int8.quantize_blocks(table, precision.block_size) if bits == 8
                     else int4.quantize(table, precision.block_size, precision.symmetric))
        return TokenTable(precision, t.vocab_size, t.hidden_size, quantized=quantized,
                          protos=block_initializers(data, TABLE, quantized))
    return TokenTable(precision, t.vocab_size, t.hidden_size, fp32=data.tensor(f"{TABLE}.weight", table))


def _copy_proto(proto, dims=None):
    """The same external bytes under possibly different dims (a reshape that costs nothing)."""
    copy = type(proto)()
    copy.CopyFrom(proto)
    if dims is not None:
        del copy.dims[:]
        copy.dims.extend(dims)
    return copy


def lookup(graph: Graph, ids: str, table: TokenTable) -> str:
    """Token embeddings [.., hidden] for int64 ids."""
    if table.quantized is None:
        return graph.op("Gather", [graph.add_initializer(_copy_proto(table.fp32)), ids], axis=0)
    q = table.quantized
    padded_width = q.k_blocks * q.block_size
    packed = _copy_proto(table.protos[0], dims=[table.vocab_size, padded_width * q.bits // 8])
    inputs = [graph.add_initializer(packed), ids, graph.add_initializer(_copy_proto(table.protos[1]))]
    if q.zero_points is not None:
        inputs.append(graph.add_initializer(_copy_proto(table.protos[2])))
    rows = graph.op("GatherBlockQuantized", inputs, domain=MS_DOMAIN, name="embed_tokens",
                    bits=q.bits, block_size=q.block_size, gather_axis=0, quantize_axis=1)
    if padded_width != table.hidden_size:  # blocks padded the last few columns
        rows = graph.slice(rows, [0], [table.hidden_size], axes=[-1])
    return rows


def tied_lm_head(table: TokenTable):
    """An lm_head emitter for build_decoder that reuses the token table's bytes."""

    def emit(graph: Graph, x: str) -> str:
        if table.quantized is not None:
            protos = [_copy_proto(p) for p in table.protos]
            return matmul_nbits(graph, x, protos, table.quantized, table.precision, "lm_head")
        # x [b, s, h] -> [b*s, h] -> Gemm with the [vocab, h] table transposed in place -> [b, s, vocab]
        flat = graph.reshape(x, [-1, table.hidden_size])
        logits = graph.op("Gemm", [flat, graph.add_initializer(_copy_proto(table.fp32))], transB=1, name="lm_head")
        batch_and_positions = graph.slice(graph.op("Shape", [x]), [0], [2], axes=[0])
        return graph.reshape(logits, graph.concat([batch_and_positions, [table.vocab_size]]))

    return emit


def untied_lm_head(checkpoint: Checkpoint, precision: Precision, module: str = "lm_head."):
    """An lm_head emitter for build_decoder with the checkpoint's own lm_head.weight, stored at
    `precision`; `module` "model.embed_tokens." quantizes a tied table into a weight of its own
    (the DirectML decoder: its token table is fp16 for a plain Gather, its lm_head int4)."""

    def emit(graph: Graph, x: str) -> str:
        return linear(Builder(graph, precision), x, checkpoint.weights(module))

    return emit


def _merge_features(graph: Graph, flat_ids: str, embeds: str, features: str, token_id: int, hidden: int,
                    kind: str) -> str:
    """Replace the rows of `embeds` [n, hidden] whose id is `token_id` by successive feature rows."""
    is_placeholder = graph.op("Equal", [flat_ids, graph.constant(f"{kind}_token_id", np.int64(token_id))])
    order = graph.sub(graph.op("CumSum", [graph.cast(is_placeholder, TensorProto.INT64), graph.ints(0)]), graph.ints(1))
    # One zero row appended so the gather is valid even with no features; non-placeholder rows
    # and any excess placeholders point at it (the runtime rejects count mismatches up front).
    padded = graph.concat([features, graph.constant(f"{kind}_zero_row", np.zeros((1, hidden), np.float32))])
    last_row = graph.sub(graph.op("Squeeze", [graph.slice(graph.op("Shape", [padded]), [0], [1], axes=[0])]),
                         graph.ints(1))
    index = graph.op("Where", [is_placeholder, graph.op("Min", [order, last_row]), last_row])
    rows = graph.op("Gather", [padded, index], axis=0)
    return graph.op("Where", [graph.unsqueeze(is_placeholder, [-1]), rows, embeds])


def build_embedding(graph: Graph, text: TextConfig, table: TokenTable) -> None:
    ids = graph.input(INPUT_IDS, TensorProto.INT64, ["batch", "sequence"])
    image = graph.input(IMAGE_FEATURES, TensorProto.FLOAT, ["image_tokens", text.hidden_size])
    audio = graph.input(AUDIO_FEATURES, TensorProto.FLOAT, ["audio_tokens", text.hidden_size])
    flat_ids = graph.reshape(ids, [-1])
    embeds = lookup(graph, flat_ids, table)
    embeds = _merge_features(graph, flat_ids, embeds, image, text.image_token_id, text.hidden_size, "image")
    embeds = _merge_features(graph, flat_ids, embeds, audio, text.audio_token_id, text.hidden_size, "audio")
    out_shape = graph.concat([graph.op("Shape", [ids]), [text.hidden_size]])
    graph.op("Reshape", [embeds, out_shape], outputs=[INPUTS_EMBEDS], name=INPUTS_EMBEDS)
    graph.output(INPUTS_EMBEDS, TensorProto.FLOAT, ["batch", "sequence", text.hidden_size])
