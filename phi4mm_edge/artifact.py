"""The artifact folder: the names export/ (which writes it) and runtime/ (which reads it) share.

An artifact folder holds one ONNX graph per model part, the LoRA adapter files, the tokenizer
files and `manifest.json` (typed in manifest.py). Here: the files' names, the graphs' input
and output names, and the adapter names.
"""

import hashlib
from pathlib import Path

EMBEDDING_GRAPH = "embedding.onnx"
DECODER_GRAPH = "decoder.onnx"
PREFILL_INT8_GRAPH = "decoder_prefill.onnx"  # optional: the decoder with int8 linears, for prompts
VISION_GRAPH = "vision.onnx"
# The NPU target's static graphs (export/text_decoder_npu.py)
NPU_EMBEDDING_GRAPH = "embedding_npu.onnx"
NPU_DECODE_GRAPH = "decoder_npu.onnx"
NPU_PROMPT_GRAPH = "decoder_prompt_npu.onnx"
NPU_VISION_GRAPH = "vision_crop.onnx"  # one crop per run (export/vision_encoder_npu.py)
NPU_AUDIO_GRAPH = "audio_window.onnx"  # one fixed window of frames per run (export/audio_encoder_npu.py)
# The DirectML target's graphs: fp16 activations, KV cache and adapter inputs (export/directml.py)
DML_EMBEDDING_GRAPH = "embedding_dml.onnx"
DML_DECODER_GRAPH = "decoder_dml.onnx"
DML_VISION_GRAPH = "vision_dml.onnx"
DML_AUDIO_GRAPH = "audio_dml.onnx"
DML_TOKEN_TABLE_DATA = "embed_tokens_dml.onnx.data"  # the fp16 token table (shared with a tied fp16 lm_head)
# A hidden key's attention bias in the NPU graphs: finite in fp16 (the HTP's precision), and
# exp() of it is exactly 0 there.
NPU_MASKED_SCORE = -30000.0
AUDIO_GRAPH = "audio.onnx"
ADAPTER_SUFFIX = ".onnx_adapter"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"  # holds the chat template (and the bos/eos strings)
CHAT_TEMPLATE = "chat_template.jinja"  # a checkpoint's template file, preferred to tokenizer_config's
TOKENIZER_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG, "generation_config.json")
# Files the runtime opens by name rather than through the manifest: each present one must be
# listed in the manifest (and so verified), or the artifact is refused.
READ_BY_NAME = (TOKENIZER_JSON, TOKENIZER_CONFIG, CHAT_TEMPLATE)
# Decoder graph input names: the runtime binds adapter tensors to these names.
LORA_INPUT_PREFIX = "lora."
NO_ADAPTER = "none"  # the adapter choice that runs the base model alone
# The checkpoint's two LoRA adapters ("Mixture-of-LoRAs"), by the names it gives them.
VISION_ADAPTER = "vision"  # trained for prompts with an image (with or without audio)
SPEECH_ADAPTER = "speech"  # trained for prompts with audio and no image
ADAPTERS = (VISION_ADAPTER, SPEECH_ADAPTER)


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
