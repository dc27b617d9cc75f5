"""The artifact folder: the names export/ (which writes it) and runtime/ (which reads it) share.

An artifact folder holds one ONNX graph per model part, the LoRA adapter files, the tokenizer
files and `manifest.json` (typed in manifest.py). Here: the files' names, the graphs' input
and output names, the adapter names and the audio sample rate. A graph that export writes uses
no input or output name this module does not know (`is_graph_name`; tests/test_export.py).
"""

import hashlib
import re
from pathlib import Path

EMBEDDING_GRAPH = "embedding.onnx"
DECODER_GRAPH = "decoder.onnx"
INT8_PROMPT_GRAPH = "decoder_prefill.onnx"  # optional: the decoder with int8 linears, for prompts
VISION_GRAPH = "vision.onnx"
# The NPU target's static graphs (export/text_decoder_npu.py)
NPU_EMBEDDING_GRAPH = "embedding_npu.onnx"
NPU_DECODE_GRAPH = "decoder_npu.onnx"
NPU_PROMPT_GRAPH = "decoder_prompt_npu.onnx"
NPU_VISION_GRAPH = "vision_crop.onnx"  # one crop per run (export/vision_encoder_npu.py)
NPU_AUDIO_GRAPH = "audio_window.onnx"  # one fixed window of frames per run (export/audio_encoder_npu.py)
# The DirectML target's graphs: fp16 activations, KV cache and adapter inputs (export/dml.py)
DML_EMBEDDING_GRAPH = "embedding_dml.onnx"
DML_DECODER_GRAPH = "decoder_dml.onnx"
DML_VISION_GRAPH = "vision_dml.onnx"
DML_AUDIO_GRAPH = "audio_dml.onnx"
DML_TOKEN_TABLE_DATA = "embed_tokens_dml.onnx.data"  # the fp16 token table (shared with a tied fp16 lm_head)
# A hidden key's attention bias in the NPU graphs: finite in fp16 (the HTP's precision), and
# exp() of it is exactly 0 there.
NPU_MASKED_SCORE = -30000.0
AUDIO_GRAPH = "audio.onnx"
# The runtime writes an NPU graph's compiled context beside it on first use (runtime/qnn.py):
# `<graph stem>.qnn_ctx.onnx`, its binaries and a `.qnn_ctx.json` record. Not listed in the
# manifest (made on the device that runs it); a new export into the folder removes them.
COMPILED_CONTEXT_MARK = ".qnn_ctx"
ADAPTER_SUFFIX = ".onnx_adapter"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"  # holds the chat template (and the bos/eos strings)
CHAT_TEMPLATE = "chat_template.jinja"  # a checkpoint's template file, preferred to tokenizer_config's
TOKENIZER_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG, "generation_config.json")
# Files the runtime opens by name rather than through the manifest: each present one must be
# listed in the manifest (and so verified), or the artifact is refused.
READ_BY_NAME = (TOKENIZER_JSON, TOKENIZER_CONFIG, CHAT_TEMPLATE)
# The trained reference model's held-out task set (tasks/task_set.py): make-reference --trained
# writes it into the checkpoint, export copies it into the artifact (listed in the manifest),
# eval and the demo read it. One JSON file of tasks, one zip of their pictures and clips (the
# manifest lists plain file names only, so the media travel as one file).
HELDOUT_TASKS = "heldout_tasks.json"
HELDOUT_MEDIA = "heldout_media.zip"
# The PyTorch reference's greedy answers to the shipped held-out tasks and its next-token
# distributions along them (tasks/reference.py); absent for a task set drawn with another seed.
HELDOUT_REFERENCE = "heldout_reference.npz"
TASK_SET_FILES = (HELDOUT_TASKS, HELDOUT_MEDIA, HELDOUT_REFERENCE)
SAMPLE_RATE = 16000  # Hz: the audio encoder's log-mel features are made from audio at this rate

# -- graph inputs and outputs ------------------------------------------------------------------
# The text model: embedding.onnx (token ids and media features in, embeddings out), decoder.onnx.
INPUT_IDS = "input_ids"
IMAGE_FEATURES = "image_features"  # also vision.onnx's output: rows for the image placeholders
AUDIO_FEATURES = "audio_features"  # also audio.onnx's output: rows for the audio placeholders
INPUTS_EMBEDS = "inputs_embeds"
ATTENTION_MASK = "attention_mask"  # decoder: 1 per visible position; vision: 1 per real patch
LOGITS_TO_KEEP = "logits_to_keep"  # how many of the last positions get logits
ADAPTER_INDEX = "adapter_index"  # which built-in adapter runs (0: the ones bound as LoRA inputs)
LOGITS = "logits"
# The NPU's static decoders take what the CPU graphs compute inside themselves.
ATTENTION_BIAS = "attention_bias"
ROTARY_COS, ROTARY_SIN = "cos", "sin"
LOGITS_INDEX = "logits_index"  # which of the run's positions gets logits
# vision.onnx (crops in, image_features out) and the NPU's one-crop graph.
PIXEL_VALUES = "pixel_values"
CROP_GRID = "crop_grid"
CROP_FEATURES = "crop_features"
SEPARATORS = "separators"
# audio.onnx (log-mel in, audio_features out) and the NPU's one-window graph.
INPUT_FEATURES = "input_features"
VISION_MODE = "vision_mode"  # the audio projection for a prompt that also has an image
FRAME_MASK = "frame_mask"
KEY_MASK = "key_mask"
SPEECH_FEATURES, VISION_SPEECH_FEATURES = "speech_features", "vision_speech_features"  # by vision_mode

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


GRAPH_NAMES = frozenset({INPUT_IDS, IMAGE_FEATURES, AUDIO_FEATURES, INPUTS_EMBEDS, ATTENTION_MASK, LOGITS_TO_KEEP,
                         ADAPTER_INDEX, LOGITS, ATTENTION_BIAS, ROTARY_COS, ROTARY_SIN, LOGITS_INDEX, PIXEL_VALUES,
                         CROP_GRID, CROP_FEATURES, SEPARATORS, INPUT_FEATURES, VISION_MODE, FRAME_MASK, KEY_MASK,
                         SPEECH_FEATURES, VISION_SPEECH_FEATURES})
PER_LAYER_NAMES = re.compile(r"(past_key_values|present)\.\d+\.(key|value)|"
                             + re.escape(LORA_INPUT_PREFIX) + r"layers\.\d+\.\w+\.[AB]")


def is_graph_name(name: str) -> bool:
    """True for every input and output name of the graphs export writes for the runtime."""
    return name in GRAPH_NAMES or PER_LAYER_NAMES.fullmatch(name) is not None



def sha256_of(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks so large files never sit in memory whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
