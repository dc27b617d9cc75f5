"""`phi4mm-edge make-reference`: a random-weight Phi-4-multimodal in the real on-disk layout.

Tiny in width and depth, faithful in everything that is not a size: the real vocabulary and
special ids, partial rotary 0.75, LongRoPE with distinct short/long factors (and a small
original_max_position_embeddings so tests cross the switch cheaply), grouped KV heads, the four
LoRA targets in every layer with alpha = 2r, different ranks per adapter and non-zero LoRA B.
Values are a pure function of (seed, tensor name), so both layouts hold identical weights.
"""

import json
import zlib
from pathlib import Path

import numpy as np

from . import architecture, layouts
from .reference_tokenizer import build_tokenizer_json, tokenizer_config
from .safetensors_file import write_safetensors

IMAGE_TOKEN_ID = 200010
AUDIO_TOKEN_ID = 200011
BOS_TOKEN_ID = 199999
EOS_TOKEN_IDS = [199999, 200020]


def _factors(rng: np.random.Generator, count: int, low: float, high: float) -> list[float]:
    return [round(float(x), 4) for x in np.sort(rng.uniform(low, high, count))]


# Phi-4-multimodal-instruct's long_factor (its config.json): used by the full-size checkpoint.
REAL_LONG_FACTOR = [
    1, 1.118320672, 1.250641126, 1.398617824, 1.564103225, 1.74916897, 1.956131817, 2.187582649, 2.446418898,
    2.735880826, 3.059592084, 3.421605075, 3.826451687, 4.279200023, 4.785517845, 5.351743533, 5.984965424,
    6.693110555, 7.485043894, 8.370679318, 9.36110372, 10.4687158, 11.70738129, 13.09260651, 14.64173252,
    16.37415215, 18.31155283, 20.47818807, 22.90118105, 25.61086418, 28.64115884, 32.03, 32.1, 32.13, 32.23,
    32.6, 32.61, 32.64, 32.66, 32.7, 32.71, 32.93, 32.97, 33.28, 33.49, 33.5, 44.16, 47.77,
]


def full_size_config(seed: int = 0) -> dict:
    """The real Phi-4-multimodal sizes (text 3072 x 32 layers, 24/8 heads; SigLIP 1152 x 27;
    conformer 1024 x 24; LoRA ranks 256 and 320) with random weights."""
    config = tiny_config(seed)
    config.update({
        "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32, "num_attention_heads": 24,
        "num_key_value_heads": 8, "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
        "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 48, "long_factor": list(REAL_LONG_FACTOR)},
    })
    config["vision_config"].update(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16)
    config["audio_config"].update(hidden_size=1024, intermediate_size=1536, num_blocks=24, num_attention_heads=16,
                                  ext_pw_out_channel=1024, depthwise_separable_out_channel=1024, nemo_conv_channels=1024)
    config["lora"] = {"vision": {"r": 256, "lora_alpha": 512}, "speech": {"r": 320, "lora_alpha": 640}}
    return config


def tiny_config(seed: int = 0) -> dict:
    """The text, vision and audio sizes of the tiny reference model (transformers-native keys)."""
    heads, head_dim = 4, 64  # head_dim 64: 0.75 * 64 = 48 rotary dims, ORT's GQA wants a multiple of 16
    rotary_half = int(head_dim * 0.75) // 2
    rng = np.random.default_rng([seed, 1])
    return {
        "vocab_size": 200064,
        "hidden_size": heads * head_dim,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "original_max_position_embeddings": 64,
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.75,
        "rope_scaling": {
            "type": "longrope",
            "short_factor": _factors(rng, rotary_half, 1.0, 1.5),
            "long_factor": _factors(rng, rotary_half, 2.0, 8.0),
        },
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_IDS,
        "pad_token_id": BOS_TOKEN_ID,
        "vision_config": {
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
            "num_attention_heads": 16,  # the remote code's fixed SigLIP head count, so both layouts agree
            "image_size": 448, "patch_size": 14, "crop_size": 448, "num_channels": 3,
            "image_token_id": IMAGE_TOKEN_ID, "feature_layer": -2,
        },
        "audio_config": {
            "hidden_size": 64, "intermediate_size": 128, "num_blocks": 2, "num_attention_heads": 2,
            "ext_pw_out_channel": 64, "depthwise_separable_out_channel": 64, "nemo_conv_channels": 64,
            "input_size": 80, "time_reduction": 8, "kernel_size": 3, "left_chunk": 18, "chunk_size": -1,
            "bias_max_distance": 500, "audio_token_id": AUDIO_TOKEN_ID, "feature_layer": -2,
        },
        "lora": {"vision": {"r": 8, "lora_alpha": 16}, "speech": {"r": 12, "lora_alpha": 24}},
    }


def tensor_values(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Deterministic random float32 values for one tensor, scaled like a trained network's:
    linears ~ N(0, 1/fan_in), norms ~ 1, embeddings 0.1. Generated in float32 and scaled in
    place, so a full-size embedding costs one copy of itself."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if name.endswith("global_invstd"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    values = rng.standard_normal(shape, dtype=np.float32)
    if "norm" in name and name.endswith(".weight") and len(shape) == 1:
        values *= 0.1
        values += 1.0
    elif name.endswith("embed_tokens.weight") or name == "lm_head.weight":
        values *= 0.1
    elif name.endswith("lora_B.weight"):
        values *= 0.5 / np.sqrt(shape[1])
    elif len(shape) >= 2 and not name.endswith(("extensor", "probe", "position_embedding.weight", "bias_values.weight")):
        values *= 1.0 / np.sqrt(np.prod(shape[1:]))
    else:
        values *= 0.1
    return values


def lora_tensors(config: dict, adapter: str) -> dict[str, tuple[int, ...]]:
    """PEFT adapter tensor names (native layout) -> shapes: A [r, in], B [out, r]."""
    rank = config["lora"][adapter]["r"]
    shapes = {}
    for layer in range(config["num_hidden_layers"]):
        for target in architecture.LORA_TARGETS:
            out_features, in_features = architecture.lora_target_shape(config, target)
            prefix = f"base_model.model.model.layers.{layer}.{target}"
            shapes[f"{prefix}.lora_A.weight"] = (rank, in_features)
            shapes[f"{prefix}.lora_B.weight"] = (out_features, rank)
    return shapes


def _adapter_config(config: dict, adapter: str) -> dict:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": config["lora"][adapter]["r"],
        "lora_alpha": config["lora"][adapter]["lora_alpha"],
        "lora_dropout": 0.0,
        "bias": "none",
        # A regex, as transformers' converter writes it: the bare names would also hit the conformer's
        # o_proj / gate_up_proj / down_proj.
        "target_modules": r"model.layers.\d+.((self_attn.(qkv|o)_proj)|(mlp.(gate_up|down)_proj))",
        "base_model_name_or_path": None,
        "inference_mode": True,
        "fan_in_fan_out": False,
        "use_rslora": False,
    }


def _generation_config() -> dict:
    return {"bos_token_id": BOS_TOKEN_ID, "eos_token_id": EOS_TOKEN_IDS, "pad_token_id": BOS_TOKEN_ID, "do_sample": False}


def _preprocessor_config(config: dict) -> dict:
    """The image/audio processor settings transformers' Phi4MultimodalProcessor reads."""
    crop = config["vision_config"]["crop_size"]
    return {
        "image_processor_type": "Phi4MultimodalImageProcessor",
        "feature_extractor_type": "Phi4MultimodalFeatureExtractor",
        "processor_class": "Phi4MultimodalProcessor",
        "dynamic_hd": 36,
        "patch_size": config["vision_config"]["patch_size"],
        "size": {"height": crop, "width": crop},
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "audio_compression_rate": config["audio_config"]["time_reduction"],
        "audio_downsample_rate": 1,
        "audio_feat_stride": 1,
        "feature_size": config["audio_config"]["input_size"],
        "sampling_rate": 16000,
    }


def write_reference(folder: Path, seed: int = 0, layout: str = "native", dtype: str = "BF16", config: dict | None = None) -> Path:
    """Write a reference checkpoint folder and return its path. `layout` is 'native' or 'original'."""
    config = config or tiny_config(seed)
    return write_checkpoint(folder, config, layout, dtype, lambda name, shape: tensor_values(name, shape, seed),
                            build_tokenizer_json())


def write_checkpoint(folder: Path, config: dict, layout: str, dtype: str, value_of, tokenizer_json: str) -> Path:
    """Write a checkpoint folder of `config`'s tensors in `layout` ('native' or 'original'), each
    one's float32 values from `value_of(native name, shape)` (a LoRA matrix's name is
    `<adapter>:<PEFT key>`), so both layouts hold identical weights; and the tokenizer and
    processor files around them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shapes = architecture.all_tensors(config)

    if layout == "native":
        (folder / "config.json").write_text(json.dumps(layouts.native_config(config), indent=2))
        write_safetensors(folder / "model.safetensors", shapes, lambda name: value_of(name, shapes[name]), dtype)
    elif layout == "original":
        original = layouts.original_tensor_shapes(config)
        (folder / "config.json").write_text(json.dumps(layouts.original_config(config), indent=2))

        def produce(name):  # values keyed by the native name, so both layouts hold the same weights
            return value_of(layouts.original_to_native(name), original[name])

        layouts.write_sharded(folder, original, produce, dtype)
    else:
        raise ValueError(f"unknown layout {layout!r}: use 'native' or 'original'")

    for adapter in architecture.ADAPTERS:
        lora_folder = folder / f"{adapter}-lora"
        lora_folder.mkdir(exist_ok=True)
        (lora_folder / "adapter_config.json").write_text(json.dumps(_adapter_config(config, adapter), indent=2))
        lora_shapes = lora_tensors(config, adapter)
        write_safetensors(
            lora_folder / "adapter_model.safetensors", lora_shapes,
            lambda name, a=adapter: value_of(f"{a}:{name}", lora_shapes[name]), dtype,
        )

    (folder / "tokenizer.json").write_text(tokenizer_json)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2))
    (folder / "generation_config.json").write_text(json.dumps(_generation_config(), indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps(_preprocessor_config(config), indent=2))
    return folder
