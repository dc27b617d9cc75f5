"""manifest.json, typed: the contract between export/ (which fills and writes it) and runtime/
(which reads it back). `Manifest` and its parts are dataclasses; `read_manifest` checks every
field's type and range, so a damaged or hand-edited manifest gets a clear error naming the field
instead of a traceback later.
"""

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .artifact import sha256_of
from .errors import Phi4MMError

FORMAT_NAME = "phi4mm-edge-artifact"
# 3: typed manifest, audio.onnx; 4: adapters as int4 constants in the decoder graph; 5: targets (npu)
FORMAT_VERSION = 5
READABLE_VERSIONS = (4, 5)  # 5 only added fields whose defaults describe a version-4 (CPU) artifact
# What the graphs were built for (ONNX Runtime's CPU EP, Qualcomm's QNN HTP, or DirectML), and
# whether they are compiled for fixed shapes: then the manifest holds those shapes (`npu`) and a
# prompt graph. Each target is a row in export/targets.py and in runtime/targets.py.
STATIC_SHAPES = {"cpu": False, "npu": True, "dml": False}
TARGETS = tuple(STATIC_SHAPES)
MANIFEST = "manifest.json"


# -- the manifest's parts ---------------------------------------------------------------------
@dataclass
class TextConfig:
    """The language model's dimensions, rotary settings and ids (the manifest's `model`)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rotary_dim: int
    rope_theta: float
    short_factor: list[float]
    long_factor: list[float]
    attention_factor: float  # LongRoPE's scaling of cos/sin, applied to both factor sets
    original_max_position_embeddings: int  # past this total length the long factors apply
    max_position_embeddings: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    bos_token_id: int
    eos_token_ids: list[int]
    pad_token_id: int
    image_token_id: int
    audio_token_id: int


@dataclass(frozen=True)
class Source:
    layout: str  # "native" (transformers) or "original" (the remote-code repository)
    config_sha256: str


@dataclass(frozen=True)
class StoredPrecision:
    """How the artifact's weights are stored."""

    weights: str  # "int4" or "fp32"; "fp16" (target "dml": float weights are stored as fp16)
    block_size: int
    symmetric: bool
    accuracy_level: int
    adapters: str  # "fp32" or "fp16"
    token_table_bits: int = 4  # an int4 export's token table (and tied lm_head): 4 or 8
    token_table_rescored_top: int = 0  # the lm_head logits recomputed from the table's residual (export/embedding.py)
    norm_gains_folded: bool = False  # the decoder's norm gains moved into their readers (export/norm_gains.py)


@dataclass(frozen=True)
class Graphs:
    embedding: str
    decoder: str
    prefill_int8: str | None = None  # the int8 prompt graph, when exported with --prefill int8
    prefill_int8_weight_bits: int = 7  # 8: for CPUs whose int8 dot products do not saturate (runtime/cpu.py)
    prompt: str | None = None  # NPU: the static prompt graph (`decoder` is then the one-position graph)


@dataclass(frozen=True)
class NpuShapes:
    """The static shapes an NPU artifact's text graphs were compiled for."""

    chunk: int  # positions per prompt-graph run (the last run padded)
    context: int  # KV cache positions: prompt + answer
    lora_rank: int  # every adapter is bound at this rank (smaller ones padded with zeros)
    # LongRoPE's inverse frequencies (float32 values) for the rotary tables the runtime feeds:
    # computed once, by export, as the CPU graphs compute them in-graph.
    inv_freq_short: list[float]
    inv_freq_long: list[float]


@dataclass(frozen=True)
class VisionEntry:
    """The vision encoder's graph and the image geometry its preprocessing must produce."""

    graph: str
    crop_size: int  # pixels per side of one crop
    patch_size: int  # pixels per side of one patch
    max_crops: int  # the HD tiling's crop limit (the processor's dynamic_hd)
    mean: float
    std: float
    encoder: dict  # the encoder's sizes, for people reading the manifest

    @property
    def patches_per_side(self) -> int:
        return self.crop_size // self.patch_size


@dataclass(frozen=True)
class AudioEntry:
    """The audio encoder's graph and the features it takes."""

    graph: str
    sample_rate: int
    mel_bins: int
    compression_rate: int  # feature frames per audio token (the encoder's time reduction)
    encoder: dict
    window_frames: int | None = None  # NPU: the static graph's window of feature frames (its left context not counted)
    chunk_frames: int | None = None  # NPU: the reference encodes clips in independent chunks of this many frames


@dataclass(frozen=True)
class AdapterEntry:
    """One adapter, in its own file: int4 constants the decoder graph reads (`graph_index` > 0,
    the value of its `adapter_index` input), or an AdapterFormat file of fp32/fp16 A and B that
    the runtime binds to the decoder's LoRA inputs (`graph_index` 0)."""

    file: str
    rank: int
    alpha: float
    scale: float  # alpha / rank, already folded into B
    precision: str  # "int4" (in the graph), "fp32" or "fp16" (bound as inputs)
    graph_index: int = 0


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass
class Manifest:
    source: Source
    precision: StoredPrecision
    model: TextConfig
    graphs: Graphs
    vision: VisionEntry | None
    audio: AudioEntry | None
    adapters: dict[str, AdapterEntry]
    export_seconds: float
    graph_data: dict[str, list[str]] = field(default_factory=dict)  # graph file -> the data files it reads
    files: dict[str, FileEntry] = field(default_factory=dict)  # every file export wrote: sha256 and size
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    target: str = "cpu"  # one of TARGETS
    npu: NpuShapes | None = None  # the NPU graphs' static shapes (target "npu")

    def adapter_names(self) -> list[str]:
        return list(self.adapters)

    def graph_files(self) -> list[str]:
        """Every graph the runtime may open."""
        return [g for g in (self.graphs.embedding, self.graphs.decoder, self.graphs.prefill_int8, self.graphs.prompt,
                            self.vision and self.vision.graph, self.audio and self.audio.graph) if g]

    def data_hashes(self, graph: str) -> dict[str, str]:
        """The sha256 of each data file `graph` reads, by name (verified at load: runtime/verify.py)."""
        return {name: self.files[name].sha256 for name in self.graph_data.get(graph, ()) if name in self.files}

    def file_names(self) -> list[str]:
        """Every file name the manifest mentions (each must be a plain name inside the folder)."""
        return [*self.files, *self.graph_files(), *(a.file for a in self.adapters.values()),
                *self.graph_data, *(d for files in self.graph_data.values() for d in files)]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# Fields that must be positive (a zero or negative size would only fail deep inside a graph).
POSITIVE = {"vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
            "rotary_dim", "original_max_position_embeddings", "max_position_embeddings", "crop_size", "patch_size",
            "max_crops", "sample_rate", "mel_bins", "compression_rate", "rank", "block_size", "rope_theta", "std",
            "chunk", "context", "lora_rank", "window_frames", "chunk_frames"}
NON_NEGATIVE = {"size", "graph_index", "accuracy_level", "export_seconds", "rms_norm_eps", "bos_token_id",
                "pad_token_id", "image_token_id", "audio_token_id"}
# Bounds far above the real model (vocab 200064, hidden 3072, 131072 positions) that keep a
# tampered manifest from asking for absurd buffers.
UPPER_BOUNDS = {"vocab_size": 1 << 22, "hidden_size": 1 << 16, "intermediate_size": 1 << 18, "num_layers": 1024,
                "num_heads": 1024, "num_kv_heads": 1024, "head_dim": 4096, "rotary_dim": 4096,
                "max_position_embeddings": 1 << 24, "original_max_position_embeddings": 1 << 24,
                "crop_size": 8192, "max_crops": 1024, "chunk": 1 << 16, "context": 1 << 24, "lora_rank": 1 << 16,
                "sample_rate": 384000, "mel_bins": 1024, "compression_rate": 1024}


class ManifestError(Phi4MMError):
    pass


def _fail(where: str, problem: str):
    raise ManifestError(f"{MANIFEST}: {where} {problem}: the manifest is damaged or from another tool; "
                        f"re-export the artifact")


def _check_number(where: str, name: str, value) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        _fail(where, f"is {value}")
    if name in POSITIVE and not value > 0:
        _fail(where, f"is {value}, it must be positive")
    if name in NON_NEGATIVE and value < 0:
        _fail(where, f"is {value}, it must not be negative")
    if name in UPPER_BOUNDS and value > UPPER_BOUNDS[name]:
        _fail(where, f"is {value}, beyond any Phi-4-multimodal ({UPPER_BOUNDS[name]})")


def _parse(kind, value, where: str, name: str = ""):
    """`value` (parsed JSON) as `kind`, checked; raises ManifestError naming the field."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        return _parse(next(o for o in options if o is not type(None)), value, where, name)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            _fail(where, f"must be an object, not {type(value).__name__}")
        hints = typing.get_type_hints(kind)
        parsed = {}
        for f in dataclasses.fields(kind):
            if f.name not in value:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    _fail(f"{where}.{f.name}".lstrip("."), "is missing")
                continue
            parsed[f.name] = _parse(hints[f.name], value[f.name], f"{where}.{f.name}".lstrip("."), f.name)
        return kind(**parsed)
    if origin is dict:
        key_kind, value_kind = typing.get_args(kind)
        if not isinstance(value, dict):
            _fail(where, f"must be an object, not {type(value).__name__}")
        return {key: _parse(value_kind, item, f"{where}[{key!r}]", name) for key, item in value.items()}
    if origin is list:
        (item_kind,) = typing.get_args(kind)
        if not isinstance(value, list):
            _fail(where, f"must be a list, not {type(value).__name__}")
        return [_parse(item_kind, item, f"{where}[{i}]", name) for i, item in enumerate(value)]
    if kind is dict:
        if not isinstance(value, dict):
            _fail(where, f"must be an object, not {type(value).__name__}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            _fail(where, f"must be true or false, not {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(where, f"must be a whole number, not {value!r}")
        _check_number(where, name, value)
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(where, f"must be a number, not {value!r}")
        _check_number(where, name, float(value))
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            _fail(where, f"must be a string, not {value!r}")
        return value
    raise TypeError(f"no parser for {kind}")  # a field type added without teaching _parse: a bug here


def manifest_from_json(data) -> Manifest:
    """A checked Manifest from parsed JSON; raises ManifestError naming the first bad field."""
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ManifestError(f"{MANIFEST} is not a phi4mm-edge manifest: re-export the artifact")
    if data.get("format_version") not in READABLE_VERSIONS:
        raise ManifestError(
            f"{MANIFEST} has format version {data.get('format_version')}, this runtime reads version "
            f"{FORMAT_VERSION}: re-export the artifact with this version of phi4mm-edge"
        )
    manifest = _parse(Manifest, data, "")
    if manifest.target not in TARGETS or \
            STATIC_SHAPES[manifest.target] != (manifest.npu is not None and manifest.graphs.prompt is not None):
        _fail("target", f"{manifest.target!r} does not match its graphs (targets: {', '.join(TARGETS)})")
    text = manifest.model
    if text.num_heads % text.num_kv_heads or text.rotary_dim > text.head_dim:
        _fail("model", f"has {text.num_heads} heads over {text.num_kv_heads} KV heads and rotary_dim {text.rotary_dim} "
                       f"of head_dim {text.head_dim}, which no Phi-4-multimodal has")
    if text.original_max_position_embeddings > text.max_position_embeddings:
        _fail("model.original_max_position_embeddings", "exceeds max_position_embeddings")
    for name in manifest.file_names():
        if not is_plain_file_name(name):
            _fail("a file name", f"{name!r} is not a plain name inside the artifact folder")
    if not text.eos_token_ids or any(not 0 <= i < text.vocab_size for i in
                                     [*text.eos_token_ids, text.image_token_id, text.audio_token_id]):
        _fail("model", "has special token ids outside the vocabulary (or no end-of-sequence id)")
    return manifest


def is_plain_file_name(name: str) -> bool:
    """A name of a file directly in the folder: no path separators, no '..', no hidden files."""
    # ':' a Windows drive or stream
    return bool(name) and not any(c in name for c in "/\\\0:") and not name.startswith(".")


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256=sha256_of(path), size=path.stat().st_size)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")


def read_manifest(folder: Path) -> Manifest:
    """Read and check `manifest.json`; raise Phi4MMError naming the fix when it is unusable."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise Phi4MMError(f"{folder} is a file, not an artifact folder: pass the folder `phi4mm-edge export` wrote")
    if not folder.is_dir():
        raise Phi4MMError(f"artifact folder {folder} does not exist: "
                          f"export one with `phi4mm-edge export CHECKPOINT {folder}`")
    path = folder / MANIFEST
    if not path.is_file():
        raise Phi4MMError(f"{folder} has no {MANIFEST}: it is not a phi4mm-edge artifact; "
                          f"export one with `phi4mm-edge export`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:  # RecursionError: nested thousands deep
        raise Phi4MMError(f"{path} is not valid JSON ({type(error).__name__}: {error}): "
                          f"re-export the artifact") from None
    return manifest_from_json(data)
