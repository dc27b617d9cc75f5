"""`phi4mm-edge export CHECKPOINT OUT`: checkpoint folder -> artifact folder.

`export()` reads the target's row (targets.py) for everything that differs between targets; the
options arrive checked (options.py)."""

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from .. import artifact
from ..errors import Phi4MMError
from ..manifest import (FORMAT_NAME, MANIFEST, AdapterEntry, AudioEntry, Manifest, Source, StoredPrecision, VisionEntry,
                        file_entry, write_manifest)
from .adapters import write_adapter
from .checkpoint import Checkpoint
from .genai import write_genai_files
from .graph_adapters import write_in_graph_adapter
from .graph_files import external_data_files, write_graph
from .options import ExportOptions
from .targets import IN_GRAPH
from .text_decoder import LORA_MODULES

# Tokenizer and chat-template files copied next to the graphs when the checkpoint has them, and
# the trained reference model's held-out task set (artifact.TASK_SET_FILES).
TOKENIZER_FILES = artifact.TOKENIZER_FILES + ("special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                                               "chat_template.json", "preprocessor_config.json")
TOKENIZER_FILES += artifact.TASK_SET_FILES
MAX_CROPS = 36  # the processor's dynamic_hd when preprocessor_config.json does not say
IMAGE_MEAN = IMAGE_STD = 0.5  # the processor normalizes each channel to [-1, 1]


def _preprocessor_config(folder: Path) -> dict:
    """The checkpoint's image/audio processor settings (preprocessor_config.json), or {}."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
        int(settings.get("dynamic_hd", MAX_CROPS)), int(settings.get("sampling_rate", artifact.SAMPLE_RATE))
        return settings
    except (json.JSONDecodeError, ValueError, TypeError, AttributeError):
        raise Phi4MMError(f"{path} is not valid: re-download the checkpoint's preprocessor_config.json") from None


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
    return [name for name in files if isinstance(name, str) and "/" not in name and "\\" not in name
            and name not in ("", ".", "..")]


def prepare_output_folder(out: Path, force: bool) -> None:
    """Make `out` ready: new or empty, or a previous export (whose listed files are removed, so no
    stale graph lingers); another non-empty folder only with `force`. Files export does not
    write are never deleted."""
    if out.exists() and not out.is_dir():
        raise Phi4MMError(f"{out} is a file: give a folder for the artifact")
    out.mkdir(parents=True, exist_ok=True)
    ours = previous_export(out)
    others = [p.name for p in out.iterdir() if not p.name.startswith(".") and p.name != MANIFEST
              and p.name not in (ours or [])]
    if others and ours is None and not force:
        raise Phi4MMError(f"{out} is not empty "
                          f"({', '.join(sorted(others)[:3])}{', ...' if len(others) > 3 else ''}) and "
                          f"holds no phi4mm-edge export: give a new or empty folder, or --force to write into it "
                          f"(files export does not write are left alone)")
    # A half-written folder must not look complete: the manifest and the verification stamp go first.
    for name in [MANIFEST, ".verified.json", *(ours or [])]:
        (out / name).unlink(missing_ok=True)
    # Contexts the runtime compiled from the previous graphs (artifact.COMPILED_CONTEXT_MARK): the
    # runtime would recompile them anyway (they record what they were compiled from), but they
    # are the previous export's.
    for graph in [name for name in ours or [] if name.endswith(".onnx")]:
        for compiled in out.glob(graph.removesuffix(".onnx") + artifact.COMPILED_CONTEXT_MARK + "*"):
            compiled.unlink(missing_ok=True)


def write_in_graph_adapters(out: Path, ckpt: Checkpoint, options: ExportOptions, step) -> list:
    """The adapters as int4/int8 constants in their own data files, when the options say so;
    written before the graphs: the decode and int8 prompt graphs both name their bytes."""
    if options.adapters not in IN_GRAPH:
        return []
    prompt_bits = options.prefill_weight_bits if options.prefill == "int8" else None
    written = []
    for index, name in enumerate(ckpt.adapter_names(), start=1):
        written.append(write_in_graph_adapter(out, ckpt.lora(name, folded=True), index, options.precision, LORA_MODULES,
                                              IN_GRAPH[options.adapters], prompt_bits=prompt_bits))
        step(f"{name} adapter")
    return written


def write_encoders(out: Path, ckpt: Checkpoint, options: ExportOptions,
                   step) -> tuple[VisionEntry | None, AudioEntry | None]:
    """The target's vision and audio graphs (those the checkpoint has) and their manifest entries."""
    row, encoder = options.row, options.encoder
    processor = _preprocessor_config(ckpt.folder)
    vision = audio = None
    if ckpt.vision is not None:
        config = write_graph(out, row.vision_graph, lambda g: row.build_vision(ckpt, g, encoder), row.finish)
        vision = VisionEntry(graph=row.vision_graph, crop_size=config.crop_size, patch_size=config.patch_size,
                             max_crops=int(processor.get("dynamic_hd", MAX_CROPS)), mean=IMAGE_MEAN, std=IMAGE_STD,
                             encoder=asdict(config))
        step("vision")
    if ckpt.audio is not None:
        config = write_graph(out, row.audio_graph, lambda g: row.build_audio(ckpt, g, encoder, options), row.finish)
        audio = AudioEntry(graph=row.audio_graph, sample_rate=int(processor.get("sampling_rate", artifact.SAMPLE_RATE)),
                           mel_bins=config.input_size, compression_rate=config.time_reduction,
                           encoder=asdict(config), **row.audio_windows(config, options))
        step("audio")
    return vision, audio


def adapter_entries(out: Path, ckpt: Checkpoint, options: ExportOptions, in_graph: list, step) -> dict:
    """The manifest's adapters: the built-in ones, or each written now as an .onnx_adapter file."""
    entries = {a.name: AdapterEntry(file=a.file, rank=a.rank, alpha=a.alpha, scale=a.scale,
                                    precision=options.adapters, graph_index=a.index) for a in in_graph}
    for name in ckpt.adapter_names() if not in_graph else []:
        lora = ckpt.lora(name)
        file_name = f"{name}{artifact.ADAPTER_SUFFIX}"
        write_adapter(out / file_name, lora, options.adapters)
        entries[name] = AdapterEntry(file=file_name, rank=lora.rank, alpha=float(lora.alpha), scale=float(lora.scale),
                                     precision=options.adapters)
        step(f"{name} adapter")
    return entries


def copy_tokenizer_files(ckpt: Checkpoint, out: Path) -> list[str]:
    copied = [name for name in TOKENIZER_FILES if (ckpt.folder / name).is_file()]
    if artifact.TOKENIZER_JSON not in copied:
        raise Phi4MMError(f"{ckpt.folder} has no tokenizer.json: "
                          f"copy the model's tokenizer files into the checkpoint folder")
    for name in copied:
        shutil.copyfile(ckpt.folder / name, out / name)
    return copied


def export(checkpoint_dir, out_dir, options: ExportOptions | None = None, show_progress: bool = True,
           force: bool = False) -> Manifest:
    """Export a checkpoint to an artifact folder for `options.target` (ExportOptions, checked
    when made; default: an int4 CPU artifact). `force` writes into a non-empty folder that is not
    a previous export. Returns the manifest that was written: it lists exactly the files export
    wrote. What each target writes is its row in targets.py; a target with a graph check (the
    DirectML target's operator list) refuses to finish when a graph fails it."""
    options = options or ExportOptions()
    row, precision = options.row, options.precision
    started = time.perf_counter()
    ckpt = Checkpoint(checkpoint_dir, fold_norm_gains=options.fold_norm_gains)
    text = ckpt.text
    if (text.rotary_dim // 2) % 8:
        raise Phi4MMError(f"rotary dims {text.rotary_dim}: "
                          f"GroupQueryAttention needs rotary_dim/2 to be a multiple of 8")
    out = Path(out_dir)
    prepare_output_folder(out, force)
    steps = 2 + text.num_layers * (1 + (options.prefill == "int8")) + len(ckpt.adapter_names()) \
        + (ckpt.vision is not None) + (ckpt.audio is not None)
    with tqdm(total=steps, desc="export", unit="step", disable=not show_progress) as bar:
        def step(label):
            bar.set_postfix_str(label)
            bar.update(1)

        in_graph = write_in_graph_adapters(out, ckpt, options, step)
        graphs, shapes = row.write_text(out, ckpt, options, in_graph, step)
        vision, audio = write_encoders(out, ckpt, options, step)
        adapters = adapter_entries(out, ckpt, options, in_graph, step)
    copied = copy_tokenizer_files(ckpt, out)
    manifest = Manifest(
        source=Source(layout=ckpt.layout, config_sha256=ckpt.config_sha256()),
        precision=StoredPrecision(weights=precision.weights if precision.is_int4 else row.float_weights,
                                  block_size=precision.block_size, symmetric=precision.symmetric,
                                  accuracy_level=precision.accuracy_level, adapters=options.adapters,
                                  token_table_bits=options.token_table_bits,
                                  token_table_rescored_top=options.rescore_top(text),
                                  norm_gains_folded=options.fold_norm_gains),
        model=text, graphs=graphs, vision=vision, audio=audio, adapters=adapters, export_seconds=0.0, target=row.name,
        npu=shapes)
    if row.check_graphs:
        row.check_graphs(out, manifest.graph_files())
    manifest.graph_data = {graph: external_data_files(out / graph) for graph in manifest.graph_files()}
    manifest.export_seconds = round(time.perf_counter() - started, 2)
    written = {*manifest.graph_files(), *(d for files in manifest.graph_data.values() for d in files),
               *(entry.file for entry in adapters.values()), *copied}
    written.update(write_genai_files(out, manifest))  # onnxruntime-genai's config and graph protos (genai.py)
    manifest.files = {name: file_entry(out / name) for name in sorted(written)}
    write_manifest(out, manifest)
    return manifest
