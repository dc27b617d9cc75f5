"""Each target's text graphs (embedding and decoder(s)) written into the artifact folder: the
`write_text` of a row of targets.py. Each returns the manifest's `Graphs` and, for static
graphs, the `NpuShapes` they were built for."""

from dataclasses import replace
from pathlib import Path

from .. import artifact
from ..errors import Phi4MMError
from ..manifest import Graphs, NpuShapes
from .checkpoint import Checkpoint
from .dml import DML_GRAPH, ROTARY_BEFORE_ATTENTION
from .embedding import build_embedding, tied_lm_head, untied_lm_head, write_token_table
from .graph_files import write_graph, write_graph_to
from .npu import NPU_GRAPH
from .onnx_graph import ExternalData, SharedExternalData
from .text_decoder import build_decoder, inverse_frequencies
from .text_decoder_npu import build_npu_decoder, build_npu_embedding

# NPU graphs are compiled for fixed shapes. 4096 positions of KV cache: the CPU runtime's default
# context (a fixed cache is allocated whole, on the device).
NPU_CONTEXT = 4096


def write_cpu_text_graphs(out: Path, ckpt: Checkpoint, options, in_graph: list, step) -> tuple[Graphs, None]:
    """embedding.onnx, decoder.onnx and (prefill "int8") decoder_prefill.onnx over one token table."""
    precision = options.precision
    shared = ExternalData(out / "embed_tokens.onnx.data")
    table = write_token_table(ckpt, shared, precision, options.token_table_bits,
                              options.rescore_top(ckpt.text))
    step("token table")
    write_graph(out, artifact.EMBEDDING_GRAPH, lambda g: build_embedding(g, ckpt.text, table))
    lm_head = tied_lm_head(table) if ckpt.text.tie_word_embeddings else untied_lm_head(ckpt, precision)
    write_graph(out, artifact.DECODER_GRAPH,
                lambda g: build_decoder(ckpt, g, precision, lm_head, progress=step, adapters=in_graph))
    graphs = Graphs(embedding=artifact.EMBEDDING_GRAPH, decoder=artifact.DECODER_GRAPH)
    if options.prefill == "int8":
        # The decoder with int8 linears; its lm_head reads the decoder's table (one row per prompt).
        int8 = replace(precision, weights="int8", int8_weight_bits=options.prefill_weight_bits)
        write_graph(out, artifact.INT8_PROMPT_GRAPH,
                    lambda g: build_decoder(ckpt, g, int8, lm_head, progress=step, adapters=in_graph))
        graphs = replace(graphs, prefill_int8=artifact.INT8_PROMPT_GRAPH,
                         prefill_int8_weight_bits=options.prefill_weight_bits)
    shared.close()
    step("lm_head")
    return graphs, None


def npu_shapes(ckpt: Checkpoint, adapters: list[str], chunk: int, context: int | None) -> NpuShapes:
    """The static shapes of the NPU graphs, checked against the checkpoint's maximum length."""
    text = ckpt.text
    context = min(NPU_CONTEXT, text.max_position_embeddings) if context is None else context
    if isinstance(context, bool) or not isinstance(context, int) or not 1 <= context <= text.max_position_embeddings:
        raise Phi4MMError(f"--npu-context {context}: give 1..{text.max_position_embeddings} positions, "
                          f"the model's maximum")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or not 1 <= chunk <= context:
        raise Phi4MMError(f"--npu-chunk {chunk}: give 1..{context} positions per prompt run")
    rank = max([ckpt.lora(name).rank for name in adapters] or [1])
    return NpuShapes(chunk=chunk, context=context, lora_rank=rank,
                     inv_freq_short=inverse_frequencies(text, text.short_factor).tolist(),
                     inv_freq_long=inverse_frequencies(text, text.long_factor).tolist())


def write_npu_text_graphs(out: Path, ckpt: Checkpoint, options, in_graph: list, step) -> tuple[Graphs, NpuShapes]:
    """The NPU target's embedding, one-position decoder and prompt decoder (text_decoder_npu.py),
    finished for the HTP (npu.py); the two decoders share one data file of int4 weights."""
    precision = options.precision
    shapes = npu_shapes(ckpt, ckpt.adapter_names(), options.npu_chunk, options.npu_context)
    write_graph(out, artifact.NPU_EMBEDDING_GRAPH, lambda g: build_npu_embedding(ckpt, g, shapes.chunk), NPU_GRAPH)
    shared = SharedExternalData(out / f"{artifact.NPU_DECODE_GRAPH}.data")
    table = write_token_table(ckpt, shared, precision, options.token_table_bits) \
        if ckpt.text.tie_word_embeddings else None
    lm_head = tied_lm_head(table) if table else untied_lm_head(ckpt, precision)
    for name, positions in ((artifact.NPU_DECODE_GRAPH, 1), (artifact.NPU_PROMPT_GRAPH, shapes.chunk)):
        write_graph_to(out, name, shared,
                       lambda g, positions=positions: build_npu_decoder(ckpt, g, precision, lm_head, positions,
                                                                        shapes.context, shapes.lora_rank,
                                                                        progress=step if positions == 1 else None),
                       NPU_GRAPH)
    shared.close()
    step("token table")
    step("lm_head")
    graphs = Graphs(embedding=artifact.NPU_EMBEDDING_GRAPH, decoder=artifact.NPU_DECODE_GRAPH,
                    prompt=artifact.NPU_PROMPT_GRAPH)
    return graphs, shapes


def write_dml_text_graphs(out: Path, ckpt: Checkpoint, options, in_graph: list, step) -> tuple[Graphs, None]:
    """The DirectML target's embedding and decoder: fp16 activations and KV cache, linears at
    the export's precision (int4 MatMulNBits, or fp16 weights for an fp32 export), adapters as fp16
    inputs. DirectML has no GatherBlockQuantized, so the token table is fp16 for a plain Gather; a
    tied lm_head shares its bytes at fp16, or is quantized into a weight of its own at int4."""
    precision = options.precision
    table_data = ExternalData(out / artifact.DML_TOKEN_TABLE_DATA, float16=True)
    table = write_token_table(ckpt, table_data, replace(precision, weights="fp32"))  # written as fp16
    step("token table")
    write_graph_to(out, artifact.DML_EMBEDDING_GRAPH, table_data, lambda g: build_embedding(g, ckpt.text, table),
                   DML_GRAPH)
    tied = ckpt.text.tie_word_embeddings
    lm_head = (tied_lm_head(table) if tied and not precision.is_int4
               else untied_lm_head(ckpt, precision, "model.embed_tokens." if tied else "lm_head."))
    write_graph(out, artifact.DML_DECODER_GRAPH,
                lambda g: build_decoder(ckpt, g, precision, lm_head, progress=step, rotary=ROTARY_BEFORE_ATTENTION),
                DML_GRAPH)
    table_data.close()
    step("lm_head")
    return Graphs(embedding=artifact.DML_EMBEDDING_GRAPH, decoder=artifact.DML_DECODER_GRAPH), None
