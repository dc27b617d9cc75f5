"""`phi4mm-edge export CHECKPOINT OUT`: checkpoint folder -> artifact folder."""

import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import onnx
from tqdm import tqdm

from .. import artifact
from ..manifest import (FORMAT_NAME, MANIFEST, TARGETS, AdapterEntry, AudioEntry, Graphs, Manifest, NpuShapes, Source,
                        StoredPrecision, VisionEntry, file_entry, write_manifest)
from ..errors import Phi4MMError
from ..quant import int8
from .adapters import ADAPTER_DTYPES, write_adapter
from .graph_adapters import write_in_graph_adapter
from .audio_encoder import build_audio_encoder
from .checkpoint import Checkpoint
from .directml import for_directml
from .dml_operators import ONNXRUNTIME_VERSION, unregistered_nodes
from .embedding import build_embedding, tied_lm_head, untied_lm_head, write_token_table
from .genai import write_genai_files
from .graph_blocks import Precision
from .onnx_graph import ExternalData, Graph, SharedExternalData, every_graph
from .text_decoder import LORA_MODULES, build_decoder, inverse_frequencies
from .text_decoder_npu import build_npu_decoder, build_npu_embedding
from .vision_encoder import build_vision_encoder
from .audio_encoder_npu import WINDOW_TOKENS, build_audio_window_encoder
from .vision_encoder_npu import build_vision_crop_encoder
from .audio_encoder import MAX_CHUNK

# Tokenizer and chat-template files copied next to the graphs when the checkpoint has them.
TOKENIZER_FILES = artifact.TOKENIZER_FILES + ("special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                                               "chat_template.json", "preprocessor_config.json")
IN_GRAPH = {"int4": 4, "int8": 8}  # the adapters as constants in the decoder graph (graph_adapters.py), by bits
ENCODER_PRECISIONS = ("auto", "int4", "int8", "fp32")
MAX_CROPS = 36  # the processor's dynamic_hd when preprocessor_config.json does not say
SAMPLE_RATE = 16000  # the feature extractor's sampling_rate when preprocessor_config.json does not say
IMAGE_MEAN = IMAGE_STD = 0.5  # the processor normalizes each channel to [-1, 1]
# NPU graphs are compiled for fixed shapes. 64 positions per prompt run: a 545-token photo prompt
# is 9 runs, and a short question pads at most 63 positions. 4096 positions of KV cache: the CPU
# runtime's default context (a fixed cache is allocated whole, on the device).
NPU_CHUNK = 64
NPU_CONTEXT = 4096
VISION_GRAPHS = {"cpu": artifact.VISION_GRAPH, "npu": artifact.NPU_VISION_GRAPH, "dml": artifact.DML_VISION_GRAPH}
AUDIO_GRAPHS = {"cpu": artifact.AUDIO_GRAPH, "npu": artifact.NPU_AUDIO_GRAPH, "dml": artifact.DML_AUDIO_GRAPH}


def _preprocessor_config(folder: Path) -> dict:
    """The checkpoint's image/audio processor settings (preprocessor_config.json), or {}."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
        int(settings.get("dynamic_hd", MAX_CROPS)), int(settings.get("sampling_rate", SAMPLE_RATE))
        return settings
    except (json.JSONDecodeError, ValueError, TypeError, AttributeError):
        raise Phi4MMError(f"{path} is not valid: re-download the checkpoint's preprocessor_config.json") from None


def encoder_precision_for(precision: Precision, choice: str = "auto") -> Precision:
    """How the vision and audio encoders store their linears. "auto" is int8 with an int4 base and
    fp32 with an fp32 one (exactness is what an fp32 export is for). Why int8: an encoder
    multiplies crops x 1024 patch rows (or every audio frame) at once, so its linears are
    compute-bound, where MLAS's uint8 x int8 GEMM runs ~1.7x MatMulNBits on AVX2
    (an encoder ~1.5x overall: benchmarks/RESULTS.md, "Encoder latency"); its 7-bit per-channel
    weights come from the checkpoint and are ~5x closer to it than int4 blocks (quant/int8.py).
    Its cost: activations are rounded per row (row_scaled_int8_matmul), not per block of 32, and
    the encoders take ~1.6x the int4 bytes (0.87 vs 0.55 GB at full size)."""
    if choice not in ENCODER_PRECISIONS:
        raise Phi4MMError(f"encoder precision {choice!r} is not one of {list(ENCODER_PRECISIONS)}")
    if choice == "auto":
        choice = "int8" if precision.is_int4 else "fp32"
    return replace(precision, weights=choice)


def write_graph(out: Path, file_name: str, build, directml: bool = False):
    """Build one graph with its weights streaming to `<file_name>.data`; returns build's result.
    `directml`: the weights are written as fp16, and the graph is made DirectML's (directml.py)."""
    data = ExternalData(out / f"{file_name}.data", float16=directml)
    result = write_graph_to(out, file_name, data, build, directml)
    data.close()
    return result


def write_graph_to(out: Path, file_name: str, data: ExternalData, build, directml: bool = False):
    """Build one graph whose weights go to `data` (which may be shared) and save it."""
    graph = Graph(file_name.removesuffix(".onnx"), data)
    result = build(graph)
    if directml:
        for_directml(graph)
    graph.save(out / file_name)
    return result


def external_data_files(graph_path: Path) -> list[str]:
    """The files a saved graph's initializers point at (its weights outside the .onnx file)."""
    model = onnx.load(str(graph_path), load_external_data=False)
    return sorted({e.value for graph in every_graph(model.graph) for tensor in graph.initializer
                   for e in tensor.external_data if e.key == "location"})


def previous_export(out: Path) -> list[str] | None:
    """The files a previous export listed in `out`'s manifest (any format version), or None when
    `out` holds no manifest of ours."""
    try:
        data = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) and data.get("format") == FORMAT_NAME else None
    if not isinstance(files, dict):
        return None
    return [name for name in files if isinstance(name, str) and "/" not in name and "\\" not in name and name not in ("", ".", "..")]


def prepare_output_folder(out: Path, force: bool) -> None:
    """Make `out` ready: new or empty, or a previous export (whose listed files are removed, so no
    stale graph lingers); another non-empty folder only with `force`. Files export does not
    write are never deleted."""
    if out.exists() and not out.is_dir():
        raise Phi4MMError(f"{out} is a file: give a folder for the artifact")
    out.mkdir(parents=True, exist_ok=True)
    ours = previous_export(out)
    others = [p.name for p in out.iterdir() if not p.name.startswith(".") and p.name != MANIFEST and p.name not in (ours or [])]
    if others and ours is None and not force:
        raise Phi4MMError(f"{out} is not empty ({', '.join(sorted(others)[:3])}{', ...' if len(others) > 3 else ''}) and "
                          f"holds no phi4mm-edge export: give a new or empty folder, or --force to write into it "
                          f"(files export does not write are left alone)")
    # A half-written folder must not look complete: the manifest and the verification stamp go first.
    for name in [MANIFEST, ".verified.json", *(ours or [])]:
        (out / name).unlink(missing_ok=True)


def write_cpu_text_graphs(out: Path, ckpt: Checkpoint, precision: Precision, in_graph: list, prefill: str,
                          prefill_weight_bits: int, step) -> Graphs:
    """embedding.onnx, decoder.onnx and (prefill "int8") decoder_prefill.onnx over one token table."""
    shared = ExternalData(out / "embed_tokens.onnx.data")
    table = write_token_table(ckpt, shared, precision)
    step("token table")
    write_graph(out, artifact.EMBEDDING_GRAPH, lambda g: build_embedding(g, ckpt.text, table))
    lm_head = tied_lm_head(table) if ckpt.text.tie_word_embeddings else untied_lm_head(ckpt, precision)
    write_graph(out, artifact.DECODER_GRAPH, lambda g: build_decoder(ckpt, g, precision, lm_head, progress=step, adapters=in_graph))
    graphs = Graphs(embedding=artifact.EMBEDDING_GRAPH, decoder=artifact.DECODER_GRAPH)
    if prefill == "int8":
        # The decoder with int8 linears; its lm_head still reads the int4 table (one row per prompt).
        write_graph(out, artifact.PREFILL_INT8_GRAPH,
                    lambda g: build_decoder(ckpt, g, replace(precision, weights="int8", int8_weight_bits=prefill_weight_bits),
                                            lm_head, progress=step, adapters=in_graph))
        graphs = replace(graphs, prefill_int8=artifact.PREFILL_INT8_GRAPH, prefill_int8_weight_bits=prefill_weight_bits)
    shared.close()
    return graphs


def write_npu_text_graphs(out: Path, ckpt: Checkpoint, precision: Precision, shapes: NpuShapes, step) -> Graphs:
    """The NPU target's embedding, one-position decoder and prompt decoder (text_decoder_npu.py);
    the two decoders share one data file of int4 weights."""
    write_graph(out, artifact.NPU_EMBEDDING_GRAPH, lambda g: build_npu_embedding(ckpt, g, shapes.chunk))
    shared = SharedExternalData(out / f"{artifact.NPU_DECODE_GRAPH}.data")
    table = write_token_table(ckpt, shared, precision) if ckpt.text.tie_word_embeddings else None
    lm_head = tied_lm_head(table) if table else untied_lm_head(ckpt, precision)
    for name, positions in ((artifact.NPU_DECODE_GRAPH, 1), (artifact.NPU_PROMPT_GRAPH, shapes.chunk)):
        graph = Graph(name.removesuffix(".onnx"), shared)
        build_npu_decoder(ckpt, graph, precision, lm_head, positions, shapes.context, shapes.lora_rank,
                          progress=step if positions == 1 else None)
        graph.save(out / name)
    shared.close()
    return Graphs(embedding=artifact.NPU_EMBEDDING_GRAPH, decoder=artifact.NPU_DECODE_GRAPH, prompt=artifact.NPU_PROMPT_GRAPH)


def write_dml_text_graphs(out: Path, ckpt: Checkpoint, precision: Precision, step) -> Graphs:
    """The DirectML target's embedding and decoder: fp16 activations and KV cache, linears at
    `precision` (int4 MatMulNBits, or fp16 weights for an fp32 export), adapters as fp16 inputs.
    DirectML has no GatherBlockQuantized, so the token table is fp16 for a plain Gather; a tied
    lm_head shares its bytes at fp16, or is quantized into a weight of its own at int4."""
    table_data = ExternalData(out / artifact.DML_TOKEN_TABLE_DATA, float16=True)
    table = write_token_table(ckpt, table_data, replace(precision, weights="fp32"))  # written as fp16
    step("token table")
    write_graph_to(out, artifact.DML_EMBEDDING_GRAPH, table_data, lambda g: build_embedding(g, ckpt.text, table), directml=True)
    tied = ckpt.text.tie_word_embeddings
    lm_head = (tied_lm_head(table) if tied and not precision.is_int4
               else untied_lm_head(ckpt, precision, "model.embed_tokens." if tied else "lm_head."))
    write_graph(out, artifact.DML_DECODER_GRAPH,
                lambda g: build_decoder(ckpt, g, precision, lm_head, progress=step, rotary_outside_attention=True), directml=True)
    table_data.close()
    return Graphs(embedding=artifact.DML_EMBEDDING_GRAPH, decoder=artifact.DML_DECODER_GRAPH)


def refuse_unregistered(out: Path, graph_files: list[str]) -> None:
    """Raise naming the nodes of the DirectML graphs that DirectML has no kernel for (dml_operators.py)."""
    found = [node for name in graph_files for node in unregistered_nodes(out / name)]
    if found:
        listed = "; ".join(f"{n.graph}/{n.node} ({n.domain or 'ai.onnx'} {n.op_type}-{n.opset}: {n.reason})" for n in found[:5])
        raise Phi4MMError(f"{len(found)} node(s) of the DirectML graphs have no DirectML kernel in ONNX Runtime {ONNXRUNTIME_VERSION}, so "
                          f"they would run on the CPU: {listed}{' ...' if len(found) > 5 else ''}. This checkpoint or these "
                          f"export options make graphs DirectML cannot run whole: export with --target cpu, or report it")


def target_adapter_precision(target: str, prefill: str, adapter_precision: str, encoder_precision: str) -> str:
    """Refuse the export options a target's graphs cannot hold; returns the target's adapter
    precision. The NPU and DirectML run neither the int8 linears (the int8 prompt graph and int8
    encoders: uint8 rows through MLAS's GEMM, a CPU kernel) nor `If` (adapters built into the graph): their
    adapters are files bound as inputs, fp16 unless asked otherwise (the NPU also takes fp32)."""
    if target not in TARGETS:
        raise Phi4MMError(f"--target {target!r}: give one of {', '.join(TARGETS)}")
    if target == "cpu":
        return adapter_precision
    where = {"npu": "the NPU", "dml": "DirectML"}[target]
    if prefill != "int4":
        raise Phi4MMError(f"--prefill int8 is a CPU graph (MLAS's int8 GEMM): {where} runs prompts through its own decoder")
    if encoder_precision == "int8":
        raise Phi4MMError(f"--encoder-precision int8 is a CPU kernel (MLAS's int8 GEMM): give int4 or fp32 for {where}")
    accepted = ("auto", "fp16", "fp32") if target == "npu" else ("auto", "fp16")
    if adapter_precision not in accepted:
        raise Phi4MMError(f"--adapter-precision {adapter_precision}: {where}'s adapters are files bound as the decoder's "
                          f"inputs; give {' or '.join(accepted[1:])}")
    return "fp16" if adapter_precision == "auto" else adapter_precision


def npu_shapes(ckpt: Checkpoint, adapters: list[str], chunk: int, context: int | None) -> NpuShapes:
    text = ckpt.text
    context = min(NPU_CONTEXT, text.max_position_embeddings) if context is None else context
    if isinstance(context, bool) or not isinstance(context, int) or not 1 <= context <= text.max_position_embeddings:
        raise Phi4MMError(f"--npu-context {context}: give 1..{text.max_position_embeddings} positions, the model's maximum")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or not 1 <= chunk <= context:
        raise Phi4MMError(f"--npu-chunk {chunk}: give 1..{context} positions per prompt run")
    rank = max([ckpt.lora(name).rank for name in adapters] or [1])
    return NpuShapes(chunk=chunk, context=context, lora_rank=rank,
                     inv_freq_short=inverse_frequencies(text, text.short_factor).tolist(),
                     inv_freq_long=inverse_frequencies(text, text.long_factor).tolist())


def export(checkpoint_dir, out_dir, precision: Precision = Precision(), adapter_precision: str = "auto",
           show_progress: bool = True, prefill: str = "int4", force: bool = False,
           encoder_precision: str = "auto", prefill_weight_bits: int = 7, target: str = "cpu",
           npu_chunk: int = NPU_CHUNK, npu_context: int | None = None, npu_audio_window: int = WINDOW_TOKENS) -> Manifest:
    """Export a checkpoint. `prefill="int8"` adds decoder_prefill.onnx: the decoder with 7-bit
    per-channel weights (quant/int8.py), for ~2x faster prompts at ~1.9x the decoder's bytes.
    `prefill_weight_bits` 8 makes that graph's weights 8-bit: twice as fine, for CPUs with VNNI, AMX
    or ARM dotprod only (the runtime will not run it elsewhere; runtime/cpu.py).
    `encoder_precision` ("auto", "int4", "int8", "fp32") is how vision.onnx and audio.onnx store
    their linears (see encoder_precision_for).
    `force` writes into a non-empty folder that is not a previous export. Returns the manifest
    that was written: it lists exactly the files export wrote.
    `target` "npu" writes static graphs for Qualcomm's QNN HTP (text_decoder_npu.py) with
    `npu_chunk` positions per prompt run and `npu_context` positions of KV cache; its adapters are
    files bound as inputs (fp16 unless asked otherwise), its vision graph runs one crop and its
    audio graph one window of `npu_audio_window` tokens (the reference's 500-token chunk by
    default: any clip, split exactly; fewer tokens cap the clip length) per run.
    `target` "dml" writes graphs for DirectML (directml.py): fp16 activations and KV cache, int4
    MatMulNBits (or fp16 weights with an fp32 `precision`), GroupQueryAttention, adapters as fp16
    files bound as inputs; export refuses to finish if DirectML lacks a kernel for any node."""
    adapter_precision = target_adapter_precision(target, prefill, adapter_precision, encoder_precision)
    if prefill not in ("int4", "int8"):
        raise Phi4MMError(f"prefill {prefill!r} is not int4 or int8")
    if prefill_weight_bits not in int8.WEIGHT_BITS or (prefill_weight_bits != 7 and prefill != "int8"):
        raise Phi4MMError(f"--prefill-weight-bits {prefill_weight_bits}: give 7 or 8, with --prefill int8")
    if prefill == "int8" and not precision.is_int4:
        raise Phi4MMError("--prefill int8 pairs with an int4 decoder: an fp32 export already runs prompts in fp32")
    if adapter_precision == "auto":  # the adapters follow the base: int4 in the graph, or fp32 files
        adapter_precision = "int4" if precision.is_int4 else "fp32"
    if adapter_precision not in (*IN_GRAPH, *ADAPTER_DTYPES):
        raise Phi4MMError(f"adapter precision {adapter_precision!r} is not one of {[*IN_GRAPH, *sorted(ADAPTER_DTYPES)]}")
    if precision.weights not in ("int4", "fp32"):
        raise Phi4MMError(f"precision {precision.weights!r} is not int4 or fp32")
    encoder = encoder_precision_for(precision, encoder_precision)
    if target != "cpu" and encoder.weights == "int8":  # auto: MatMulNBits, which the NPU and DirectML run
        encoder = precision
    started = time.perf_counter()
    ckpt = Checkpoint(checkpoint_dir)
    text = ckpt.text
    if (text.rotary_dim // 2) % 8:
        raise Phi4MMError(f"rotary dims {text.rotary_dim}: GroupQueryAttention needs rotary_dim/2 to be a multiple of 8")
    out = Path(out_dir)
    prepare_output_folder(out, force)
    adapters = ckpt.adapter_names()
    has_vision = ckpt.vision is not None
    has_audio = ckpt.audio is not None
    bar = tqdm(total=2 + text.num_layers * (1 + (prefill == "int8")) + len(adapters) + has_vision + has_audio, desc="export", unit="step", disable=not show_progress)

    def step(label):
        bar.set_postfix_str(label)
        bar.update(1)

    # Built-in adapters are written first: the decode and int8 prefill graphs both name their bytes.
    in_graph = []
    if adapter_precision in IN_GRAPH:
        for index, name in enumerate(adapters, start=1):
            in_graph.append(write_in_graph_adapter(out, ckpt.lora(name), index, precision, LORA_MODULES, IN_GRAPH[adapter_precision],
                                                   prompt_bits=prefill_weight_bits if prefill == "int8" else None))
            step(f"{name} adapter")

    shapes = npu_shapes(ckpt, adapters, npu_chunk, npu_context) if target == "npu" else None
    if shapes:
        graphs = write_npu_text_graphs(out, ckpt, precision, shapes, step)
        step("token table")
    elif target == "dml":
        graphs = write_dml_text_graphs(out, ckpt, precision, step)
    else:
        graphs = write_cpu_text_graphs(out, ckpt, precision, in_graph, prefill, prefill_weight_bits, step)
    step("lm_head")

    processor = _preprocessor_config(ckpt.folder)
    vision_entry = None
    if has_vision:
        name = VISION_GRAPHS[target]
        build = build_vision_crop_encoder if target == "npu" else build_vision_encoder
        config = write_graph(out, name, lambda g: build(ckpt, g, encoder), directml=target == "dml")
        vision_entry = VisionEntry(graph=name, crop_size=config.crop_size, patch_size=config.patch_size,
                                   max_crops=int(processor.get("dynamic_hd", MAX_CROPS)), mean=IMAGE_MEAN, std=IMAGE_STD, encoder=asdict(config))
        step("vision")

    audio_entry = None
    if has_audio:
        if target == "npu":
            config = write_graph(out, artifact.NPU_AUDIO_GRAPH, lambda g: build_audio_window_encoder(ckpt, g, encoder, npu_audio_window))
            windows = dict(window_frames=npu_audio_window * config.time_reduction, chunk_frames=MAX_CHUNK * config.time_reduction)
        else:
            config = write_graph(out, AUDIO_GRAPHS[target], lambda g: build_audio_encoder(ckpt, g, encoder, directml=target == "dml"),
                                 directml=target == "dml")
            windows = {}
        audio_entry = AudioEntry(graph=AUDIO_GRAPHS[target],
                                 sample_rate=int(processor.get("sampling_rate", SAMPLE_RATE)), mel_bins=config.input_size,
                                 compression_rate=config.time_reduction, encoder=asdict(config), **windows)
        step("audio")

    adapter_entries = {a.name: AdapterEntry(file=a.file, rank=a.rank, alpha=a.alpha, scale=a.scale, precision=adapter_precision,
                                            graph_index=a.index) for a in in_graph}
    for name in adapters if not in_graph else []:
        lora = ckpt.lora(name)
        file_name = f"{name}{artifact.ADAPTER_SUFFIX}"
        write_adapter(out / file_name, lora, adapter_precision)
        adapter_entries[name] = AdapterEntry(file=file_name, rank=lora.rank, alpha=float(lora.alpha), scale=float(lora.scale),
                                             precision=adapter_precision)
        step(f"{name} adapter")
    bar.close()

    copied = [name for name in TOKENIZER_FILES if (ckpt.folder / name).is_file()]
    if "tokenizer.json" not in copied:
        raise Phi4MMError(f"{ckpt.folder} has no tokenizer.json: copy the model's tokenizer files into the checkpoint folder")
    for name in copied:
        shutil.copyfile(ckpt.folder / name, out / name)
    graph_files = [g for g in (graphs.embedding, graphs.decoder, graphs.prefill_int8, graphs.prompt,
                               vision_entry and vision_entry.graph, audio_entry and audio_entry.graph) if g]
    if target == "dml":
        refuse_unregistered(out, graph_files)
    graph_data = {graph: external_data_files(out / graph) for graph in graph_files}
    written = {*graph_files, *(d for files in graph_data.values() for d in files),
               *(entry.file for entry in adapter_entries.values()), *copied}

    manifest = Manifest(
        source=Source(layout=ckpt.layout, config_sha256=ckpt.config_sha256()),
        precision=StoredPrecision(weights="fp16" if target == "dml" and not precision.is_int4 else precision.weights,
                                  block_size=precision.block_size, symmetric=precision.symmetric,
                                  accuracy_level=precision.accuracy_level, adapters=adapter_precision),
        model=text,
        graphs=graphs,
        vision=vision_entry,
        audio=audio_entry,
        adapters=adapter_entries,
        graph_data=graph_data,
        export_seconds=round(time.perf_counter() - started, 2),
        target=target,
        npu=shapes,
    )
    written.update(write_genai_files(out, manifest))  # onnxruntime-genai's config and graph protos (genai.py)
    manifest.files = {name: file_entry(out / name) for name in sorted(written)}
    write_manifest(out, manifest)
    return manifest
