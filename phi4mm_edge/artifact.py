"""The artifact folder: the contract between export/ (which writes it) and runtime/ (which reads it).

An artifact folder holds one ONNX graph per model part, the LoRA adapter files, the tokenizer
files and `manifest.json`, which lists every file with its sha256 and size, the model's
dimensions and ids, the adapters and the precision.
"""

import hashlib
import json
from pathlib import Path

from .errors import Phi4MMError

FORMAT_NAME = "phi4mm-edge-artifact"
FORMAT_VERSION = 2  # 2: decoder takes logits_to_keep; vision.onnx and speech.onnx
MANIFEST = "manifest.json"
EMBEDDING_GRAPH = "embedding.onnx"
DECODER_GRAPH = "decoder.onnx"
PREFILL_GRAPH = "decoder_prefill.onnx"  # optional: the decoder with int8 linears, for prompts
VISION_GRAPH = "vision.onnx"
SPEECH_GRAPH = "speech.onnx"
ADAPTER_SUFFIX = ".onnx_adapter"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
# Decoder graph input names: the runtime binds adapter tensors to these names.
LORA_INPUT_PREFIX = "lora."


def lora_input_name(layer: int, module: str, matrix: str) -> str:
    """Graph input (and adapter tensor) name of one LoRA matrix, e.g. `lora.layers.3.qkv_proj.A`."""
    return f"{LORA_INPUT_PREFIX}layers.{layer}.{module}.{matrix}"


def past_key_name(layer: int) -> str:
    return f"past_key_values.{layer}.key"


def past_value_name(layer: int) -> str:
    return f"past_key_values.{layer}.value"


def present_key_name(layer: int) -> str:
    return f"present.{layer}.key"


def present_value_name(layer: int) -> str:
    return f"present.{layer}.value"


def sha256_of(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks so large files never sit in memory whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path: Path) -> dict:
    return {"sha256": sha256_of(path), "size": path.stat().st_size}


def write_manifest(folder: Path, manifest: dict) -> None:
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(folder: Path) -> dict:
    """Read and sanity-check `manifest.json`; raise Phi4MMError naming the fix when it is unusable."""
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise Phi4MMError(f"artifact folder {folder} does not exist: export one with `phi4mm-edge export CHECKPOINT {folder}`")
    if not path.is_file():
        raise Phi4MMError(f"{folder} has no {MANIFEST}: it is not a phi4mm-edge artifact; export one with `phi4mm-edge export`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise Phi4MMError(f"{path} is not valid JSON ({error}): re-export the artifact") from None
    if manifest.get("format") != FORMAT_NAME:
        raise Phi4MMError(f"{path} is not a phi4mm-edge manifest: re-export the artifact")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise Phi4MMError(
            f"{path} has format version {manifest.get('format_version')}, this runtime reads version "
            f"{FORMAT_VERSION}: re-export the artifact with this version of phi4mm-edge"
        )
    return manifest
