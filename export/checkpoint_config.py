"""The vision and audio encoders' sizes, read from a checkpoint of either layout.

The native config.json describes both encoders; the original one describes the audio encoder
only (its remote code fixes the vision encoder), so widths and layer counts come from the
tensor shapes wherever the tensors hold them. `Checkpoint.vision` / `.audio` call these.
"""

import math
from dataclasses import dataclass

from ..errors import Phi4MMError
from .architecture import AUDIO_EMBED, IMAGE_EMBED

SO400M_LAYERS = 27  # the remote code builds SigLIP so400m-patch14-448: 27 layers
SO400M_WIDTH = 1152
REMOTE_CODE_HEADS = 16  # the remote code's fixed head count (not in the original config.json)
REMOTE_CODE_FEATURE_LAYER = -2
REMOTE_CODE_CROP_SIZE = 448
SIGLIP_LAYER_NORM_EPS = 1e-6
CONFORMER_HEADS = 16  # the remote code's defaults, for configs that omit them
CONFORMER_BIAS_MAX_DISTANCE = 1000
CONFORMER_TIME_REDUCTION = 8
CONFORMER_KERNEL_SIZE = 3
FULL_ATTENTION = -1  # chunk_size of an encoder whose frames all see each other


@dataclass
class VisionConfig:
    """The SigLIP encoder's sizes, as the vision graph and the manifest use them."""

    hidden_size: int
    intermediate_size: int
    num_layers: int  # encoder layers in the model (features come from `feature_layer`)
    num_heads: int
    patch_size: int
    image_size: int  # the size the position embeddings were trained for
    crop_size: int
    feature_layer: int
    layer_norm_eps: float

    @property
    def layers_used(self) -> int:
        """hidden_states[k] is the output after k layers; a negative k counts from the end."""
        return self.feature_layer if self.feature_layer >= 0 else self.num_layers + 1 + self.feature_layer

    @property
    def patches_per_side(self) -> int:
        return self.crop_size // self.patch_size

    @property
    def trained_patches_per_side(self) -> int:
        """Patches per side of the images the position table was trained on."""
        return self.image_size // self.patch_size


@dataclass
class AudioConfig:
    """The conformer encoder's sizes, as the audio graph and the manifest use them."""

    hidden_size: int
    num_heads: int
    num_blocks: int
    kernel_size: int
    time_reduction: int
    conv_channels: int
    input_size: int
    bias_max_distance: int
    ext_pw_out_channel: int
    chunk_size: int


def _count(weights, pattern: str) -> int:
    """How many of pattern.format(0), pattern.format(1), ... the checkpoint holds, in a row."""
    count = 0
    while pattern.format(count) in weights:
        count += 1
    return count


def vision_config(checkpoint) -> VisionConfig | None:
    """Read from config.json (native layout) or from the tensor shapes (original layout, whose
    config.json does not describe the encoder: the remote code fixes it). None without an encoder."""
    encoder = checkpoint.weights(IMAGE_EMBED + "img_processor.")
    if "embeddings.patch_embedding.weight" not in encoder:
        return None
    width, _, patch, _ = encoder.shape("embeddings.patch_embedding.weight")  # [hidden, 3, patch, patch]
    positions = encoder.shape("embeddings.position_embedding.weight")[0]  # (image_size / patch)^2
    intermediate = encoder.shape("encoder.layers.0.mlp.fc1.weight")[0]  # fc1.weight rows
    stored_layers = _count(encoder, "encoder.layers.{}.mlp.fc1.weight")
    trained_size = int(math.isqrt(positions)) * patch
    if checkpoint.layout == "native":
        v = checkpoint.raw_config.get("vision_config") or {}
        config = VisionConfig(
            hidden_size=width, intermediate_size=intermediate,
            num_layers=v.get("num_hidden_layers", stored_layers), num_heads=v.get("num_attention_heads", REMOTE_CODE_HEADS),
            patch_size=patch, image_size=v.get("image_size", trained_size),
            crop_size=v.get("crop_size", v.get("image_size", REMOTE_CODE_CROP_SIZE)),
            feature_layer=v.get("feature_layer", REMOTE_CODE_FEATURE_LAYER),
            layer_norm_eps=v.get("layer_norm_eps", SIGLIP_LAYER_NORM_EPS),
        )
    else:
        image_layer = (checkpoint.raw_config.get("embd_layer") or {}).get("image_embd_layer") or {}
        # The checkpoint may omit the last layer (its output is never used): so400m-wide encoders
        # then still have 27 layers, with features after 26.
        so400m_without_last = width == SO400M_WIDTH and stored_layers == SO400M_LAYERS - 1
        config = VisionConfig(
            hidden_size=width,  # patch_embedding.weight rows
            intermediate_size=intermediate,
            num_layers=SO400M_LAYERS if so400m_without_last else stored_layers,  # encoder.layers.N present
            num_heads=REMOTE_CODE_HEADS,
            patch_size=patch,  # patch_embedding kernel
            image_size=trained_size,  # position_embedding rows = (size / patch)^2
            crop_size=image_layer.get("crop_size", REMOTE_CODE_CROP_SIZE),  # embd_layer.image_embd_layer.crop_size
            feature_layer=REMOTE_CODE_FEATURE_LAYER,
            layer_norm_eps=SIGLIP_LAYER_NORM_EPS,
        )
    if config.hidden_size % config.num_heads:
        raise Phi4MMError(f"vision width {config.hidden_size} is not divisible by {config.num_heads} heads: unsupported checkpoint")
    return config


def audio_config(checkpoint) -> AudioConfig | None:
    """From the native `audio_config` or the original `audio_processor.config`; widths that both
    layouts store in the tensors are read from the shapes. None without an encoder."""
    encoder = checkpoint.weights(AUDIO_EMBED + "encoder.")
    if "embed.conv.0.weight" not in encoder:
        return None
    if checkpoint.layout == "native":
        a = checkpoint.raw_config.get("audio_config") or {}
        heads, distance = a.get("num_attention_heads", CONFORMER_HEADS), a.get("bias_max_distance", CONFORMER_BIAS_MAX_DISTANCE)
    else:
        a = ((checkpoint.raw_config.get("audio_processor") or {}).get("config")) or {}
        heads = a.get("attention_heads", CONFORMER_HEADS)
        distance = (a.get("relative_attention_bias_args") or {}).get("t5_bias_max_distance", CONFORMER_BIAS_MAX_DISTANCE)
    config = AudioConfig(
        hidden_size=encoder.shape("embed.out.weight")[0],
        num_heads=heads,
        num_blocks=_count(encoder, "encoders.{}.self_attn.q_proj.weight"),
        kernel_size=a.get("kernel_size", CONFORMER_KERNEL_SIZE),
        time_reduction=a.get("time_reduction", CONFORMER_TIME_REDUCTION),
        conv_channels=encoder.shape("embed.conv.0.weight")[0],
        input_size=encoder.shape("encoder_embedding.global_mean")[0],
        bias_max_distance=encoder.shape("relative_attention_bias_layer.bias_values.weight")[0] // 2,
        ext_pw_out_channel=encoder.shape("encoders.0.conv.glu.b1")[1],
        chunk_size=a.get("chunk_size", FULL_ATTENTION),
    )
    if distance != config.bias_max_distance:
        raise Phi4MMError(f"the config's relative-bias distance {distance} does not match the bias table "
                          f"({2 * config.bias_max_distance} rows): the checkpoint is inconsistent")
    if config.chunk_size > 0:
        raise Phi4MMError(f"audio chunk_size {config.chunk_size}: streaming (chunked) attention is not supported; "
                          f"Phi-4-multimodal uses -1 (full attention)")
    return config
