"""The tensors of Phi-4-multimodal in the transformers-native layout, by name and shape.

Both the reference-checkpoint writer and the checkpoint reader use this table, so the two can
never disagree about what a complete checkpoint holds. Every shape comes from the config.
"""

import math

from ..artifact import ADAPTERS  # noqa: F401  the adapter names, defined with the manifest

# The two encoders' module prefixes: every vision / audio tensor name starts with one of them.
IMAGE_EMBED = "model.embed_tokens_extend.image_embed."
AUDIO_EMBED = "model.embed_tokens_extend.audio_embed."


def text_tensors(config: dict) -> dict[str, tuple[int, ...]]:
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = hidden // heads
    qkv_out = (heads + 2 * kv_heads) * head_dim
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], hidden)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "self_attn.qkv_proj.weight"] = (qkv_out, hidden)
        shapes[p + "self_attn.o_proj.weight"] = (hidden, heads * head_dim)
        shapes[p + "mlp.gate_up_proj.weight"] = (2 * inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (config["vocab_size"], hidden)
    return shapes


def vision_tensors(config: dict) -> dict[str, tuple[int, ...]]:
    v = config["vision_config"]
    width, mlp, text_hidden = v["hidden_size"], v["intermediate_size"], config["hidden_size"]
    patches = (v["image_size"] // v["patch_size"]) ** 2
    p = IMAGE_EMBED
    shapes = {
        p + "global_img_feature_extensor": (1, 1, width),
        p + "sub_img_feature_extensor": (1, 1, 1, width),
        p + "img_processor.embeddings.patch_embedding.weight": (width, v.get("num_channels", 3), v["patch_size"], v["patch_size"]),
        p + "img_processor.embeddings.patch_embedding.bias": (width,),
        p + "img_processor.embeddings.position_embedding.weight": (patches, width),
    }
    for i in range(v["num_hidden_layers"]):
        q = f"{p}img_processor.encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[q + norm + ".weight"] = (width,)
            shapes[q + norm + ".bias"] = (width,)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[q + f"self_attn.{proj}.weight"] = (width, width)
            shapes[q + f"self_attn.{proj}.bias"] = (width,)
        shapes[q + "mlp.fc1.weight"] = (mlp, width)
        shapes[q + "mlp.fc1.bias"] = (mlp,)
        shapes[q + "mlp.fc2.weight"] = (width, mlp)
        shapes[q + "mlp.fc2.bias"] = (width,)
    q = p + "img_processor."
    shapes[q + "post_layernorm.weight"] = (width,)
    shapes[q + "post_layernorm.bias"] = (width,)
    # SigLIP's pooling head: unused by Phi-4-MM (features come from layer -2) but part of the module.
    shapes[q + "head.probe"] = (1, 1, width)
    shapes[q + "head.attention.in_proj_weight"] = (3 * width, width)
    shapes[q + "head.attention.in_proj_bias"] = (3 * width,)
    shapes[q + "head.attention.out_proj.weight"] = (width, width)
    shapes[q + "head.attention.out_proj.bias"] = (width,)
    shapes[q + "head.layernorm.weight"] = (width,)
    shapes[q + "head.layernorm.bias"] = (width,)
    shapes[q + "head.mlp.fc1.weight"] = (mlp, width)
    shapes[q + "head.mlp.fc1.bias"] = (mlp,)
    shapes[q + "head.mlp.fc2.weight"] = (width, mlp)
    shapes[q + "head.mlp.fc2.bias"] = (width,)
    shapes[p + "img_projection_up.weight"] = (text_hidden, width)
    shapes[p + "img_projection_up.bias"] = (text_hidden,)
    shapes[p + "img_projection_down.weight"] = (text_hidden, text_hidden)
    shapes[p + "img_projection_down.bias"] = (text_hidden,)
    return shapes


def nemo_final_size(input_size: int, time_reduction: int) -> int:
    """Feature bins left after the conv subsampling's log2(time_reduction) stride-2 convolutions."""
    size = input_size
    for _ in range(int(math.log2(time_reduction))):
        size = (size - 1) // 2 + 1
    return size


def audio_tensors(config: dict) -> dict[str, tuple[int, ...]]:
    a = config["audio_config"]
    d, ff, channels, text_hidden = a["hidden_size"], a["intermediate_size"], a["nemo_conv_channels"], config["hidden_size"]
    p = AUDIO_EMBED
    e = p + "encoder."
    shapes = {
        e + "encoder_embedding.global_mean": (a["input_size"],),
        e + "encoder_embedding.global_invstd": (a["input_size"],),
        e + "embed.conv.0.weight": (channels, 1, 3, 3),
        e + "embed.conv.0.bias": (channels,),
    }
    # Depthwise-separable stride-2 stages after the first convolution: conv indices 2,3 then 5,6, ...
    stages = int(math.log2(a["time_reduction"])) - 1
    for s in range(stages):
        dw, pw = 2 + 3 * s, 3 + 3 * s
        shapes[e + f"embed.conv.{dw}.weight"] = (channels, 1, 3, 3)
        shapes[e + f"embed.conv.{dw}.bias"] = (channels,)
        shapes[e + f"embed.conv.{pw}.weight"] = (channels, channels, 1, 1)
        shapes[e + f"embed.conv.{pw}.bias"] = (channels,)
    shapes[e + "embed.out.weight"] = (d, channels * nemo_final_size(a["input_size"], a["time_reduction"]))
    shapes[e + "embed.out.bias"] = (d,)
    shapes[e + "relative_attention_bias_layer.bias_values.weight"] = (2 * a["bias_max_distance"], a["num_attention_heads"])
    for i in range(a["num_blocks"]):
        q = f"{e}encoders.{i}."
        for ffn in ("feed_forward_in", "feed_forward_out"):
            shapes[q + ffn + ".layer_norm.weight"] = (d,)
            shapes[q + ffn + ".layer_norm.bias"] = (d,)
            shapes[q + ffn + ".gate_up_proj.weight"] = (2 * ff, d)
            shapes[q + ffn + ".gate_up_proj.bias"] = (2 * ff,)
            shapes[q + ffn + ".down_proj.weight"] = (d, ff)
            shapes[q + ffn + ".down_proj.bias"] = (d,)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[q + f"self_attn.{proj}.weight"] = (d, d)
            shapes[q + f"self_attn.{proj}.bias"] = (d,)
        pw_out, dw_out = a["ext_pw_out_channel"], a["depthwise_separable_out_channel"]
        shapes[q + "conv.layer_norm.weight"] = (d,)
        shapes[q + "conv.layer_norm.bias"] = (d,)
        shapes[q + "conv.glu.b1"] = (1, pw_out, 1)
        shapes[q + "conv.glu.b2"] = (1, pw_out, 1)
        shapes[q + "conv.glu.ext_pw_conv_1d.weight"] = (2 * pw_out, d, 1)
        shapes[q + "conv.glu.ext_pw_conv_1d.bias"] = (2 * pw_out,)
        shapes[q + "conv.dw_sep_conv_1d.dw_conv.weight"] = (d * a.get("depthwise_multiplier", 1), 1, a["kernel_size"])
        shapes[q + "conv.dw_sep_conv_1d.dw_conv.bias"] = (d * a.get("depthwise_multiplier", 1),)
        shapes[q + "conv.dw_sep_conv_1d.pw_conv.weight"] = (dw_out, d * a.get("depthwise_multiplier", 1), 1)
        shapes[q + "conv.dw_sep_conv_1d.pw_conv.bias"] = (dw_out,)
        shapes[q + "conv.ext_pw_conv_1d.weight"] = (d, pw_out, 1)
        shapes[q + "conv.ext_pw_conv_1d.bias"] = (d,)
        for norm in ("layer_norm_att", "layer_norm"):
            shapes[q + norm + ".weight"] = (d,)
            shapes[q + norm + ".bias"] = (d,)
    for mode in ("speech", "vision_speech"):
        shapes[p + f"up_proj_for_{mode}.weight"] = (text_hidden, d)
        shapes[p + f"up_proj_for_{mode}.bias"] = (text_hidden,)
        shapes[p + f"down_proj_for_{mode}.weight"] = (text_hidden, text_hidden)
        shapes[p + f"down_proj_for_{mode}.bias"] = (text_hidden,)
    return shapes


def all_tensors(config: dict) -> dict[str, tuple[int, ...]]:
    return {**text_tensors(config), **vision_tensors(config), **audio_tensors(config)}


LORA_TARGETS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


def lora_target_shape(config: dict, target: str) -> tuple[int, int]:
    """(out_features, in_features) of one LoRA target linear."""
    shapes = text_tensors(config)
    return shapes[f"model.layers.0.{target}.weight"]
