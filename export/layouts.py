"""The two on-disk layouts of a Phi-4-multimodal checkpoint and the name mapping between them.

- native: transformers' `Phi4MultimodalForCausalLM` (`model_type` "phi4_multimodal"); base
  weights only, the LoRAs as PEFT folders `vision-lora/` and `speech-lora/`.
- original: the Hugging Face repository's remote code (`model_type` "phi4mm"); LoRA-wrapped
  decoder linears stored inline as `<module>.base_layer.weight` / `<module>.lora_A.vision.weight`
  ..., and older names for the conformer, the projections and the image separators.

The renames are the ones transformers' `convert_phi4_multimodal_weights_to_hf.py` applies.
"""

import json
import re
from pathlib import Path

from . import architecture
from .safetensors_file import write_safetensors

_AUDIO_BLOCK = r"audio_embed\.encoder\.encoders\.\d+\."
# (context, name part in the original layout, name part in the native layout): a name is renamed
# where the part follows its context. One table serves both directions.
_RENAMES = [
    (_AUDIO_BLOCK + r"feed_forward_(?:in|out)\.", "net.0.linear.", "gate_up_proj."),
    (_AUDIO_BLOCK + r"feed_forward_(?:in|out)\.", "net.2.", "down_proj."),
    (_AUDIO_BLOCK + r"self_attn\.", "linear_q.", "q_proj."),
    (_AUDIO_BLOCK + r"self_attn\.", "linear_k.", "k_proj."),
    (_AUDIO_BLOCK + r"self_attn\.", "linear_v.", "v_proj."),
    (_AUDIO_BLOCK + r"self_attn\.", "linear_out.", "o_proj."),
    (r"image_embed\.", "img_projection.0.", "img_projection_up."),
    (r"image_embed\.", "img_projection.2.", "img_projection_down."),
    (r"image_embed\.", "glb_GN", "global_img_feature_extensor"),
    (r"image_embed\.", "sub_GN", "sub_img_feature_extensor"),
    (r"audio_embed\.", "audio_projection.speech.0.", "up_proj_for_speech."),
    (r"audio_embed\.", "audio_projection.speech.2.", "down_proj_for_speech."),
    (r"audio_embed\.", "audio_projection.vision.0.", "up_proj_for_vision_speech."),
    (r"audio_embed\.", "audio_projection.vision.2.", "down_proj_for_vision_speech."),
    # The LoRA-wrapped decoder linears keep their base weight under `base_layer`.
    (r"^model\.layers\.\d+\.(?:self_attn\.(?:qkv|o)_proj|mlp\.(?:gate_up|down)_proj)\.", "base_layer.weight", "weight"),
]
_INLINE_LORA = re.compile(r"^(model\.layers\.\d+\.[\w.]+)\.lora_([AB])\.(vision|speech)\.weight$")


def _rename(name: str, source: int) -> str:
    """Apply the first rule whose context + part matches; `source` 1 = original, 2 = native.
    A part ending in "." is followed by more of the name; any other part ends the name."""
    for rule in _RENAMES:
        part, replacement = rule[source], rule[3 - source]
        pattern = f"({rule[0]}){re.escape(part)}" + ("" if part.endswith(".") else "$")
        renamed, count = re.subn(pattern, lambda match: match.group(1) + replacement, name)
        if count:
            return renamed
    return name


def original_to_native(name: str) -> str:
    """Native name of an original-layout tensor; an inline LoRA tensor maps to its PEFT name,
    prefixed by the adapter name (`vision:base_model.model.model.layers.0...lora_A.weight`)."""
    lora = _INLINE_LORA.match(name)
    if lora:
        module, matrix, adapter = lora.groups()
        return f"{adapter}:base_model.model.{module}.lora_{matrix}.weight"
    return _rename(name, 1)


def native_to_original(name: str) -> str:
    return _rename(name, 2)


def native_config(config: dict) -> dict:
    """config.json of the transformers-native layout."""
    native = {k: v for k, v in config.items() if k != "lora"}
    native.update({"model_type": "phi4_multimodal", "architectures": ["Phi4MultimodalForCausalLM"], "torch_dtype": "bfloat16"})
    return native


def original_config(config: dict) -> dict:
    """config.json of the original (remote code) layout. The vision encoder's sizes are not in it:
    the remote code fixes them and a reader takes them from the tensor shapes."""
    text_keys = (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings", "original_max_position_embeddings", "rope_theta",
        "partial_rotary_factor", "rope_scaling", "rms_norm_eps", "tie_word_embeddings", "bos_token_id", "pad_token_id",
    )
    audio, vision = config["audio_config"], config["vision_config"]
    lora_layers = r"layers.*((self_attn\.(qkv_proj|o_proj))|(mlp\.(gate_up|down)_proj))"
    original = {k: config[k] for k in text_keys}
    original.update({
        "model_type": "phi4mm",
        "architectures": ["Phi4MMForCausalLM"],
        "eos_token_id": config["bos_token_id"],
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
        "embd_layer": {
            "embedding_cls": "image_audio",
            "image_embd_layer": {
                "crop_size": vision["crop_size"], "embedding_cls": "tune_image", "hd_transform_order": "sub_glb",
                "image_token_compression_cls": "avg_pool_2d", "projection_cls": "mlp", "use_hd_transform": True,
                "with_learnable_separator": True,
            },
            "audio_embd_layer": {
                "compression_rate": audio["time_reduction"], "downsample_rate": 1, "embedding_cls": "audio",
                "projection_cls": "mlp", "use_conv_downsample": False, "use_qformer": False,
            },
        },
        "audio_processor": {"name": "cascades", "config": {
            "activation": "swish", "attention_dim": audio["hidden_size"], "attention_heads": audio["num_attention_heads"],
            "bias_in_glu": True, "causal": True, "chunk_size": audio["chunk_size"], "conv_activation": "swish",
            "conv_glu_type": "swish", "depthwise_multiplier": 1,
            "depthwise_seperable_out_channel": audio["depthwise_separable_out_channel"],
            "ext_pw_out_channel": audio["ext_pw_out_channel"], "input_layer": "nemo_conv",
            "input_size": audio["input_size"], "kernel_size": audio["kernel_size"], "left_chunk": audio["left_chunk"],
            "linear_units": audio["intermediate_size"], "nemo_conv_settings": {"conv_channels": audio["nemo_conv_channels"]},
            "num_blocks": audio["num_blocks"],
            "relative_attention_bias_args": {"t5_bias_max_distance": audio["bias_max_distance"], "type": "t5"},
            "time_reduction": audio["time_reduction"],
        }},
        "vision_lora": {"dp": 0.0, "layer": lora_layers, **config["lora"]["vision"]},
        "speech_lora": {"dp": 0.01, "layer": lora_layers, **config["lora"]["speech"]},
    })
    return original


def original_tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Original-layout tensor names -> shapes: renamed base tensors plus the inline LoRA pairs."""
    shapes = {}
    for name, shape in architecture.all_tensors(config).items():
        original = native_to_original(name)
        shapes[original] = shape
        if original.endswith(".base_layer.weight"):
            module = original[: -len(".base_layer.weight")]
            out_features, in_features = shape
            for adapter in architecture.ADAPTERS:
                rank = config["lora"][adapter]["r"]
                shapes[f"{module}.lora_A.{adapter}.weight"] = (rank, in_features)
                shapes[f"{module}.lora_B.{adapter}.weight"] = (out_features, rank)
    return shapes


def write_sharded(folder: Path, shapes: dict, produce, dtype: str, shards: int = 3) -> None:
    """Write `model-0000K-of-0000N.safetensors` files and `model.safetensors.index.json`."""
    names = list(shapes)
    per_shard = -(-len(names) // shards)
    weight_map = {}
    for k in range(shards):
        part = names[k * per_shard : (k + 1) * per_shard]
        file_name = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(folder / file_name, {n: shapes[n] for n in part}, produce, dtype)
        weight_map.update({n: file_name for n in part})
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
