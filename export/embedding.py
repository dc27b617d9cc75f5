"""embedding.onnx and the token table it shares with the decoder's lm_head.

embedding.onnx: input_ids [batch, seq], image_features [image_tokens, hidden] and
audio_features [audio_tokens, hidden] -> inputs_embeds [batch, seq, hidden]. Token embeddings
are looked up, then the rows at the image (200010) / audio (200011) placeholder ids are replaced,
in order, by the feature rows. Either feature input may have zero rows.

In an int4 export the table is block-quantized (GatherBlockQuantized), at 4 bits or, on the CPU
with --token-table int8, at 8 (ExportOptions.token_table_bits says when and why). When lm_head is tied to it, the
decoder's MatMulNBits reads the very same bytes: one quantized copy on disk, in its own data file
that both graphs point at.

"Rescored" tables (--token-table int4-rescored) add the int4 table's residual, itself in int4
blocks (quant/int4.quantize_residual: table + residual is about as fine as 8-bit blocks). The
embedding adds the two rows it gathers; the tied lm_head scores every token with the int4 table
(MatMulNBits at the int4 speed), then recomputes its `rescore_top` best logits exactly in fp32
from table + residual rows and the unrounded hidden state, and writes them back. The choice
among the top tokens, what greedy decoding and sampling read, is then made at 8-bit precision;
the ~200k tokens below them keep their int4 logits.
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
    residual: int4.Int4Weight | None = None  # a rescored table's residual (module docstring)
    residual_protos: list | None = None
    rescore_top: int = 0  # the tied lm_head's logits recomputed from table + residual


def write_token_table(checkpoint: Checkpoint, data: ExternalData, precision: Precision, bits: int = 4,
                      rescore_top: int = 0) -> TokenTable:
    """Write model.embed_tokens.weight once into `data`: at `precision`, its blocks at `bits`
    (4, or 8: symmetric blocks of the same size) when the precision is int4; `rescore_top` > 0
    (4 bits only) adds the residual and rescores that many logits (module docstring)."""
    t = checkpoint.text
    table = checkpoint.tensor("model.embed_tokens.weight")
    if precision.is_int4:
        quantized = (int8.quantize_blocks(table, precision.block_size) if bits == 8
                     else int4.quantize(table, precision.block_size, precision.symmetric))
        residual = int4.quantize_residual(table, quantized) if rescore_top else None
        return TokenTable(precision, t.vocab_size, t.hidden_size, quantized=quantized,
                          protos=block_initializers(data, TABLE, quantized), residual=residual,
                          residual_protos=residual and block_initializers(data, f"{TABLE}.residual", residual),
                          rescore_top=rescore_top)
    return TokenTable(precision, t.vocab_size, t.hidden_size, fp32=data.tensor(f"{TABLE}.weight", table))


def _copy_proto(proto, dims=None, name: str | None = None):
    """The same external bytes under possibly different dims (a reshape that costs nothing) and
    name (a graph that reads them in two shapes names each its own)."""
    copy = type(proto)()
    copy.CopyFrom(proto)
    if dims is not None:
        del copy.dims[:]
        copy.dims.extend(dims)
    if name is not None:
        copy.name = name
    return copy


def _gather_blocks(graph: Graph, ids: str, q, protos: list, name: str, renamed: bool) -> str:
    """The dequantized rows [.., padded width] of block-quantized `q` at int64 `ids`; `renamed`:
    its initializers named after the node (the decoder holds the table's own names for MatMulNBits,
    in another shape)."""
    packed = _copy_proto(protos[0], dims=[q.shape[0], q.k_blocks * q.block_size * q.bits // 8],
                         name=f"{name}.qweight" if renamed else None)
    inputs = [graph.add_initializer(packed), ids,
              graph.add_initializer(_copy_proto(protos[1], name=f"{name}.scales" if renamed else None))]
    if q.zero_points is not None:
        inputs.append(graph.add_initializer(_copy_proto(protos[2], name=f"{name}.zero_points" if renamed else None)))
    return graph.op("GatherBlockQuantized", inputs, domain=MS_DOMAIN, name=name,
                    bits=q.bits, block_size=q.block_size, gather_axis=0, quantize_axis=1)


def _gather_rows(graph: Graph, ids: str, table: TokenTable, name: str, renamed: bool = False) -> str:
    """The quantized table's rows [.., hidden] at int64 `ids`, its residual added when it has one."""
    q = table.quantized
    rows = _gather_blocks(graph, ids, q, table.protos, name, renamed)
    if table.residual is not None:
        rows = graph.add(rows, _gather_blocks(graph, ids, table.residual, table.residual_protos, f"{name}.residual",
                                              renamed))
    if q.k_blocks * q.block_size != table.hidden_size:  # blocks padded the last few columns
        rows = graph.slice(rows, [0], [table.hidden_size], axes=[-1])
    return rows


def lookup(graph: Graph, ids: str, table: TokenTable) -> str:
    """Token embeddings [.., hidden] for int64 ids."""
    if table.quantized is None:
        return graph.op("Gather", [graph.add_initializer(_copy_proto(table.fp32)), ids], axis=0)
    return _gather_rows(graph, ids, table, "embed_tokens")


def rescore(graph: Graph, x: str, logits: str, table: TokenTable) -> str:
    """`logits` [b, s, vocab] with its `rescore_top` largest per position recomputed in fp32 from
    the table + residual rows and the hidden state `x` [b, s, hidden]."""
    _, ids = graph.op("TopK", [logits, graph.ints([table.rescore_top])], outputs=2, axis=-1, largest=1,
                           sorted=0, name="lm_head.top")
    rows = _gather_rows(graph, ids, table, "lm_head.top_rows", renamed=True)  # [b, s, top, hidden]
    exact = graph.reduce_sum(graph.mul(rows, graph.unsqueeze(x, [-2])), [-1])
    return graph.op("ScatterElements", [logits, ids, exact], axis=-1, name="lm_head.rescored")


def tied_lm_head(table: TokenTable):
    """An lm_head emitter for build_decoder that reuses the token table's bytes."""

    def emit(graph: Graph, x: str) -> str:
        if table.quantized is not None:
            protos = [_copy_proto(p) for p in table.protos]
            logits = matmul_nbits(graph, x, protos, table.quantized, table.precision, "lm_head")
            return rescore(graph, x, logits, table) if table.rescore_top else logits
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
