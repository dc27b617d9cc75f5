"""embedding.onnx and the token table it shares with the decoder's lm_head.

embedding.onnx: input_ids [batch, seq], image_features [image_tokens, hidden] and
audio_features [audio_tokens, hidden] -> inputs_embeds [batch, seq, hidden]. Token embeddings
are looked up, then the rows at the image (200010) / audio (200011) placeholder ids are replaced,
in order, by the feature rows. Either feature input may have zero rows.

At int4 the table is block-quantized (GatherBlockQuantized). When lm_head is tied to it, the
decoder's MatMulNBits reads the very same bytes: one int4 copy on disk, in its own data file
that both graphs point at.
"""

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from ..quant import int4
from .checkpoint import Checkpoint, TextConfig
from .linear import Precision, int4_initializers, linear, matmul_nbits
from .onnx_graph import MS_DOMAIN, ExternalData, Graph

TABLE = "embed_tokens"


@dataclass
class TokenTable:
    """Where the token embedding table lives in the shared data file, and how it is stored."""

    precision: Precision
    vocab_size: int
    hidden_size: int
    fp32: object = None  # TensorProto [vocab, hidden] when stored as fp32
    quantized: int4.Int4Weight | None = None
    int4_protos: list | None = None  # qweight [vocab, blocks, blob], scales, zero points


def write_token_table(checkpoint: Checkpoint, data: ExternalData, precision: Precision) -> TokenTable:
    """Write model.embed_tokens.weight once, at `precision`, into `data`."""
    t = checkpoint.text
    table = checkpoint.tensor("model.embed_tokens.weight")
    if precision.is_int4:
        quantized = int4.quantize(table, precision.block_size, precision.symmetric)
        return TokenTable(precision, t.vocab_size, t.hidden_size, quantized=quantized,
                          int4_protos=int4_initializers(data, TABLE, quantized))
    return TokenTable(precision, t.vocab_size, t.hidden_size, fp32=data.tensor(f"{TABLE}.weight", table))


def _copy_proto(proto, dims=None):
    """The same external bytes under possibly different dims (a reshape that costs nothing)."""
    copy = type(proto)()
    copy.CopyFrom(proto)
    if dims is not None:
        del copy.dims[:]
        copy.dims.extend(dims)
    return copy


def lookup(g: Graph, ids: str, table: TokenTable) -> str:
    """Token embeddings [.., hidden] for int64 ids."""
    if table.quantized is None:
        return g.op("Gather", [g.add_initializer(_copy_proto(table.fp32)), ids], axis=0)
    q = table.quantized
    padded_width = q.k_blocks * q.block_size
    packed = _copy_proto(table.int4_protos[0], dims=[table.vocab_size, padded_width // 2])
    inputs = [g.add_initializer(packed), ids, g.add_initializer(_copy_proto(table.int4_protos[1]))]
    if q.zero_points is not None:
        inputs.append(g.add_initializer(_copy_proto(table.int4_protos[2])))
    rows = g.op("GatherBlockQuantized", inputs, domain=MS_DOMAIN, name="embed_tokens",
                bits=4, block_size=q.block_size, gather_axis=0, quantize_axis=1)
    if padded_width != table.hidden_size:  # blocks padded the last few columns
        rows = g.op("Slice", [rows, g.constant("zero", np.array([0], np.int64)),
                              g.constant("hidden", np.array([table.hidden_size], np.int64)),
                              g.constant("last_axis", np.array([-1], np.int64))])
    return rows


def tied_lm_head(table: TokenTable):
    """An lm_head emitter for build_decoder that reuses the token table's bytes."""

    def emit(g: Graph, x: str) -> str:
        if table.quantized is not None:
            protos = [_copy_proto(p) for p in table.int4_protos]
            return matmul_nbits(g, x, protos, table.quantized, table.precision, "lm_head")
        # x [b, s, h] -> [b*s, h] -> Gemm with the [vocab, h] table transposed in place -> [b, s, vocab]
        flat = g.op("Reshape", [x, g.constant("flat_shape", np.array([-1, table.hidden_size], np.int64))])
        logits = g.op("Gemm", [flat, g.add_initializer(_copy_proto(table.fp32))], transB=1, name="lm_head")
        shape = g.op("Concat", [g.op("Slice", [g.op("Shape", [x]), g.constant("zero", np.array([0], np.int64)),
                                               g.constant("two", np.array([2], np.int64))]),
                                g.constant("vocab", np.array([table.vocab_size], np.int64))], axis=0)
        return g.op("Reshape", [logits, shape])

    return emit


def untied_lm_head(checkpoint: Checkpoint, precision: Precision):
    def emit(g: Graph, x: str) -> str:
        return linear(g, x, checkpoint.tensor("lm_head.weight"), "lm_head", precision)

    return emit


def _merge_features(g: Graph, flat_ids: str, embeds: str, features: str, token_id: int, hidden: int, kind: str) -> str:
    """Replace the rows of `embeds` [n, hidden] whose id is `token_id` by successive feature rows."""
    is_placeholder = g.op("Equal", [flat_ids, g.constant(f"{kind}_token_id", np.int64(token_id))])
    order = g.op("Sub", [g.op("CumSum", [g.op("Cast", [is_placeholder], to=TensorProto.INT64), g.constant("axis0", np.int64(0))]),
                         g.constant("one", np.int64(1))])
    # One zero row appended so the gather is valid even with no features; non-placeholder rows
    # and any excess placeholders point at it (the runtime rejects count mismatches up front).
    padded = g.op("Concat", [features, g.constant(f"{kind}_zero_row", np.zeros((1, hidden), np.float32))], axis=0)
    last_row = g.op("Sub", [g.op("Squeeze", [g.op("Slice", [g.op("Shape", [padded]), g.constant("zero", np.array([0], np.int64)),
                                                            g.constant("one1", np.array([1], np.int64))])]),
                            g.constant("one", np.int64(1))])
    index = g.op("Where", [is_placeholder, g.op("Min", [order, last_row]), last_row])
    rows = g.op("Gather", [padded, index], axis=0)
    return g.op("Where", [g.op("Unsqueeze", [is_placeholder, g.constant("axis_last", np.array([-1], np.int64))]), rows, embeds])


def build_embedding(g: Graph, text: TextConfig, table: TokenTable) -> None:
    ids = g.input("input_ids", TensorProto.INT64, ["batch", "sequence"])
    image = g.input("image_features", TensorProto.FLOAT, ["image_tokens", text.hidden_size])
    audio = g.input("audio_features", TensorProto.FLOAT, ["audio_tokens", text.hidden_size])
    flat_ids = g.op("Reshape", [ids, g.constant("minus_one", np.array([-1], np.int64))])
    embeds = lookup(g, flat_ids, table)
    embeds = _merge_features(g, flat_ids, embeds, image, text.image_token_id, text.hidden_size, "image")
    embeds = _merge_features(g, flat_ids, embeds, audio, text.audio_token_id, text.hidden_size, "audio")
    out_shape = g.op("Concat", [g.op("Shape", [ids]), g.constant("hidden", np.array([text.hidden_size], np.int64))], axis=0)
    g.op("Reshape", [embeds, out_shape], outputs=["inputs_embeds"], name="inputs_embeds")
    g.output("inputs_embeds", TensorProto.FLOAT, ["batch", "sequence", text.hidden_size])
