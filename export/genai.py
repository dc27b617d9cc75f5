"""onnxruntime-genai's files for a CPU artifact, over the artifact's own weights.

onnxruntime-genai (0.18) opens a folder through its `genai_config.json`. Everything written here
is JSON or a graph proto whose initializers name the artifact's existing `.data` files (ONNX
external data), so no weight is stored twice: the protos hold only the graph and its small inline
constants. They sit in the artifact folder itself, since ONNX Runtime refuses external data
reached through a symlink or a hard link, and genai refuses a graph path with `..` in it.

Three ways in, chosen by the folder's config and two overlays (og.Config + config.overlay(json),
genai's documented way to change a config in code; only one genai_config.json fits a folder):

- `genai_config.json`, type `phi4mm`: text, images and audio through genai's multimodal
  processor (`vision_processor.json`, `speech_processor.json`), over embedding.onnx as it is,
  `vision_genai.onnx`, `audio_genai.onnx` and `decoder_genai.onnx`. This pipeline feeds its
  decoder inputs_embeds, attention_mask and the KV cache only: no extra inputs, and og.Adapters
  never reach the decoder session (tests/test_genai.py pins both). Its adapter is therefore built
  into the decoder proto: the vision adapter (see BUILT_IN_ADAPTER for why).
- `genai_speech.json`: an overlay swapping in `decoder_genai_speech.onnx`, the same pipeline with
  the speech adapter built in, for audio prompts without an image.
- `genai_text.json`: an overlay making the folder a decoder-only model (type `phi3`) over
  `text_genai.onnx`, the embedding and decoder graphs in one proto. genai runs that model's
  session with the generator's run options, so og.Adapters + set_active_adapter do reach it
  (text prompts, any adapter, switched per generator). Adapter files: `<name>.genai_adapter`
  (AdapterFormat, holding only `adapter_index` [1]) for adapters built into the decoder graph
  (int4/int8, graph_adapters.py); the artifact's own `<name>.onnx_adapter` for fp32/fp16 ones.

The graph protos are built in genai_graphs.py; this module writes them and the JSON files.
"""

import json
from pathlib import Path

from ..artifact import (ATTENTION_MASK, AUDIO_FEATURES, IMAGE_FEATURES, INPUT_IDS, INPUTS_EMBEDS, LOGITS, PIXEL_VALUES,
                        SPEECH_ADAPTER, VISION_ADAPTER)
from ..manifest import AudioEntry, Manifest, VisionEntry
from .genai_graphs import audio_graph, index_adapters, pipeline_decoder, save_proto, text_graph, vision_graph
from .targets import EXPORT_TARGETS

GENAI_CONFIG = "genai_config.json"
VISION_PROCESSOR = "vision_processor.json"
SPEECH_PROCESSOR = "speech_processor.json"
DECODER = "decoder_genai.onnx"  # the phi4mm pipeline's decoder, BUILT_IN_ADAPTER built in
SPEECH_DECODER = "decoder_genai_speech.onnx"  # the same, the speech adapter built in
TEXT = "text_genai.onnx"  # embedding + decoder, for the decoder-only (og.Adapters) route
VISION = "vision_genai.onnx"
AUDIO = "audio_genai.onnx"
TEXT_OVERLAY = "genai_text.json"
SPEECH_OVERLAY = "genai_speech.json"

# Why vision: genai's own Phi-4-multimodal builder bakes the vision LoRA into its text decoder as
# the one adapter, and Microsoft's published Phi-4-multimodal ONNX models run that way, so a genai
# user gets the behaviour genai documents; an image with or without audio takes the vision adapter
# in the reference's routing, the case the phi4mm pipeline exists for. Audio alone wants the
# speech adapter (genai_speech.json); text alone no adapter (genai_text.json).
BUILT_IN_ADAPTER = VISION_ADAPTER
# genai allocates the KV cache for search.max_length positions up front (past and present share
# one buffer): 131072 positions would be ~34 GB at full size. 4096 is our runtime's default
# context (runtime/model.py DEFAULT_CONTEXT); set_search_options(max_length=...) raises it.
MAX_LENGTH = 4096
# genai's Phi4AudioEmbed settings: Phi-4-multimodal's log-mel (n_fft 512, a 400-sample Hamming
# window, hop 160 at 16 kHz; half of each at 8 kHz), the values of the feature extractor that
# runtime/audio.py implements for our runtime.
STFT_16K = {"n_fft": 512, "frame_length": 400, "hop_length": 160}
STFT_8K = {"n_fft": 256, "frame_length": 200, "hop_length": 80}
LOGMEL_CHUNK_SECONDS = 30


def write_genai_files(out: Path, manifest: Manifest) -> list[str]:
    """Write onnxruntime-genai's config, processor configs, overlays, graph protos and adapter
    files into the artifact folder `out` (whose graphs and manifest fields are final); returns the
    names written. Only for a target whose row says so (targets.py: the CPU's): the NPU graphs are
    static, one crop / one audio window per
    run and fed by our runtime's loops, and the DirectML graphs take fp16 inputs and their adapters
    as bound fp16 tensors; genai's pipeline fits neither as it is, so they get nothing ([])."""
    if not EXPORT_TARGETS[manifest.target].genai_files:
        return []
    out = Path(out)
    text = text_graph(out, manifest)
    save_proto(text, out / TEXT)
    written = [TEXT, *index_adapters(out, manifest)]
    multimodal = manifest.vision is not None and manifest.audio is not None
    if multimodal:  # genai's phi4mm type needs both a vision and a speech graph
        save_proto(pipeline_decoder(out, manifest, BUILT_IN_ADAPTER), out / DECODER)
        save_proto(vision_graph(out, manifest.vision, manifest.model.hidden_size), out / VISION)
        save_proto(audio_graph(out, manifest.audio, manifest.model.hidden_size), out / AUDIO)
        _write_json(out / VISION_PROCESSOR, vision_processor(manifest.vision))
        _write_json(out / SPEECH_PROCESSOR, speech_processor(manifest.audio))
        _write_json(out / GENAI_CONFIG, genai_config(manifest))
        _write_json(out / TEXT_OVERLAY, text_overlay())
        written += [DECODER, VISION, AUDIO, VISION_PROCESSOR, SPEECH_PROCESSOR, GENAI_CONFIG, TEXT_OVERLAY]
        if SPEECH_ADAPTER in manifest.adapters:
            save_proto(pipeline_decoder(out, manifest, SPEECH_ADAPTER), out / SPEECH_DECODER)
            _write_json(out / SPEECH_OVERLAY, speech_overlay())
            written += [SPEECH_DECODER, SPEECH_OVERLAY]
    else:  # a text-only checkpoint: the folder's config is the decoder-only one
        _write_json(out / GENAI_CONFIG, _merge(genai_config(manifest, multimodal=False), text_overlay()))
        written.append(GENAI_CONFIG)
    return written


# -- configs ------------------------------------------------------------------------------------
def genai_config(manifest: Manifest, multimodal: bool = True) -> dict:
    """genai_config.json for the phi4mm pipeline: ids, sizes and lengths from the manifest. genai's
    names (left) map to our graphs' (right); the vision and speech graphs take genai's own names
    (image_attention_mask, audio_attention_mask) because genai keeps one name -> type table for
    all sessions, and the decoder's int64 attention_mask would clash with the vision graph's float
    one."""
    model = manifest.model
    decoder = {
        "filename": DECODER,
        # 0: ONNX Runtime's default, a thread per physical core; left out, genai 0.18 runs one
        # thread (measured at full size: 3.0 vs 5.0 tokens/s on 2 cores).
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": [], "intra_op_num_threads": 0},
        "head_size": model.head_dim, "hidden_size": model.hidden_size, "num_attention_heads": model.num_heads,
        "num_hidden_layers": model.num_layers, "num_key_value_heads": model.num_kv_heads,
        "inputs": {"inputs_embeds": INPUTS_EMBEDS, "attention_mask": ATTENTION_MASK,
                   "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": LOGITS, "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"},
    }
    config = {"type": "phi4mm", "bos_token_id": model.bos_token_id, "eos_token_id": list(model.eos_token_ids),
              "pad_token_id": model.pad_token_id, "vocab_size": model.vocab_size,
              "context_length": model.max_position_embeddings, "decoder": decoder}
    if multimodal:
        config["embedding"] = {
            "filename": manifest.graphs.embedding,
            "inputs": {"input_ids": INPUT_IDS, "image_features": IMAGE_FEATURES, "audio_features": AUDIO_FEATURES},
            "outputs": {"inputs_embeds": INPUTS_EMBEDS}}
        config["vision"] = {
            "filename": VISION, "config_filename": VISION_PROCESSOR,
            "inputs": {"pixel_values": PIXEL_VALUES, "image_sizes": "image_sizes",
                       "attention_mask": "image_attention_mask"},
            "outputs": {"image_features": IMAGE_FEATURES}}
        config["speech"] = {
            "filename": AUDIO, "config_filename": SPEECH_PROCESSOR,
            "inputs": {"audio_embeds": "audio_embeds", "attention_mask": "audio_attention_mask",
                       "audio_sizes": "audio_sizes", "audio_projection_mode": "audio_projection_mode"},
            "outputs": {"audio_features": AUDIO_FEATURES}}
    search = {"do_sample": False, "num_beams": 1, "past_present_share_buffer": True,
              "max_length": min(MAX_LENGTH, model.max_position_embeddings)}
    return {"model": config, "search": search}


def text_overlay() -> dict:
    """The overlay making the folder a decoder-only model over text_genai.onnx. An empty embedding
    filename: genai's decoder-only model with an embedding graph wants its batching Engine."""
    return {"model": {"type": "phi3", "embedding": {"filename": ""}, "decoder": {"filename": TEXT}}}


def speech_overlay() -> dict:
    """The overlay swapping in the pipeline decoder with the speech adapter built in."""
    return {"model": {"decoder": {"filename": SPEECH_DECODER}}}


def vision_processor(vision: VisionEntry) -> dict:
    """vision_processor.json: genai's Phi-4 image transforms (op names as in genai 0.18's library):
    HD tiling up to the manifest's crop limit, rescale to [0, 1], normalize, crops + masks."""
    channels = 3
    return {"processor": {
        "name": "phi_4_vision_processor",
        "transforms": [
            {"operation": {"name": "decode_image", "type": "DecodeImage", "attrs": {"color_space": "RGB"}}},
            {"operation": {"name": "phi4_vision_dynamic_preprocess", "type": "Phi4VisionDynamicPreprocess",
                           "attrs": {"dynamic_hd": vision.max_crops, "dyhd_base_resolution": vision.crop_size}}},
            {"operation": {"name": "rescale", "type": "Rescale", "inputs": [":0"]}},
            {"operation": {"name": "normalize", "type": "Normalize",
                           "attrs": {"mean": [vision.mean] * channels, "std": [vision.std] * channels}}},
            {"operation": {"name": "phi4_vision_processor", "type": "Phi4VisionProcessor",
                           "inputs": [":0", "phi4_vision_dynamic_preprocess:1"],
                           "attrs": {"dyhd_base_resolution": vision.crop_size, "interpolation": "CUBIC"}}},
        ],
        "output_aligner": "phi4-vision-aligner"}}


def speech_processor(audio: AudioEntry) -> dict:
    """speech_processor.json: genai's audio decoding (resampled to 8 or 16 kHz) and Phi-4 log-mel.
    max_samples 0: without it genai 0.18's decoder silently keeps a clip's first 30 s (a 45 s clip
    gave 375 of its 563 audio tokens); audio.onnx encodes any length, in the reference's chunks."""
    attrs = {"audio_compression_rate": audio.compression_rate}
    for suffix, stft in (("", STFT_16K), ("_8k", STFT_8K)):
        attrs.update({f"stft_normal{suffix}/{key}": value for key, value in stft.items()})
        attrs[f"stft_normal{suffix}/win_fn"] = "hamming"
        attrs.update({f"logmel{suffix}/chunk_size": LOGMEL_CHUNK_SECONDS,
                      f"logmel{suffix}/hop_length": stft["hop_length"],
                      f"logmel{suffix}/n_fft": STFT_16K["n_fft"], f"logmel{suffix}/n_mel": audio.mel_bins,
                      f"logmel{suffix}/feature_first": 0, f"logmel{suffix}/no_padding": 1})
    return {"feature_extraction": {
        "sequence": [
            {"operation": {"name": "audio_decoder", "type": "AudioDecoderEx",
                           "attrs": {"target_sample_rates": [8000, audio.sample_rate], "max_samples": 0}}},
            {"operation": {"name": "phi_4_audio_embed", "type": "Phi4AudioEmbed", "attrs": attrs}},
        ],
        "output_aligner": "phi4-audio-aligner"}}


def _merge(base: dict, overlay: dict) -> dict:
    """`base` with `overlay`'s keys set, recursively (what genai's config overlay does)."""
    merged = dict(base)
    for key, value in overlay.items():
        merged[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")
