"""The trained reference model's sizes, and the PyTorch model that is trained: transformers'
Phi4MultimodalForCausalLM with the vision and speech LoRAs as PEFT adapters, over a compact
vocabulary (the trained tokenizer's entries and the special tokens the prompts use).

Why a compact vocabulary: a 200064-row tied table would cost a 200064-wide lm_head at every
position and an optimizer state for 51M unused numbers, most of the CPU time for nothing.
Training over the used rows is a restricted softmax; `UNUSED_LOGIT` stands in for the ~199.5k
rows that are not trained (they are written tiny, ~1e-3, so their logits sit near 0): the loss
is the full-vocabulary cross-entropy as if each of them scored exactly 0, so training pushes the
right token above them too, and the expanded model's argmax is the compact one's (checked on the
held-out set by training/evaluate.py).
"""

import copy
import math

import numpy as np
import torch

from ..export import layouts
from ..export.reference_checkpoint import AUDIO_TOKEN_ID, IMAGE_TOKEN_ID, tiny_config
from .batches import ENDOFTEXT, END, Vocabulary

VOCAB_SIZE = 200064
LORA_TARGETS = r"model.layers.\d+.((self_attn.(qkv|o)_proj)|(mlp.(gate_up|down)_proj))"
ADAPTER_PREFIXES = {"vision": "model.embed_tokens_extend.image_embed.",
                    "speech": "model.embed_tokens_extend.audio_embed."}


def trained_config() -> dict:
    """The trained model's sizes (transformers-native keys, the real 200064 vocabulary).

    - text: 4 layers of 256 (4 query heads, 2 KV heads, head_dim 64: 48 rotary dims, ORT's
      GroupQueryAttention wants rotary_dim/2 a multiple of 8), MLP 768. Two layers do not learn to
      reverse or add; wider costs time the vision and audio stages need. LongRoPE keeps distinct
      short and long factors, switching at 1024 positions: every task prompt is below it, so one
      set of factors is learned (the random reference's 64 is for tests that cross the switch).
    - vision: SigLIP 128 wide (the remote code's 16 heads), MLP 512, 3 layers (features after the
      second, as the real model takes layer -2), 112-pixel crops of 14-pixel patches: 64 patches
      and 16 tokens per crop, so a 224x224 picture is 4 crops + the global one (93 tokens) and a
      vision step costs about what a text step of twice the items does.
    - audio: conformer 128 wide, 3 blocks, 4 heads, 64 subsampling channels.
    - LoRA ranks 32 (vision) and 40 (speech), alpha = 2r as in the real model (256 and 320 there).
    """
    config = tiny_config(0)
    config.update(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=8192, original_max_position_embeddings=1024)
    config["vision_config"].update(hidden_size=128, intermediate_size=512, num_hidden_layers=3, image_size=112,
                                   crop_size=112, patch_size=14)
    config["audio_config"].update(hidden_size=128, intermediate_size=256, num_blocks=3, num_attention_heads=4,
                                  ext_pw_out_channel=128, depthwise_separable_out_channel=128, nemo_conv_channels=32)
    config["lora"] = {"vision": {"r": 32, "lora_alpha": 64}, "speech": {"r": 40, "lora_alpha": 80}}
    return config


def unused_logit(vocabulary: Vocabulary) -> float:
    """log(number of untrained rows): their total probability mass when each scores 0."""
    return math.log(VOCAB_SIZE - len(vocabulary))


def compact_config(config: dict, vocabulary: Vocabulary) -> dict:
    """`config` over the compact vocabulary: the special ids renumbered, nothing else changed."""
    compact = copy.deepcopy(config)
    ids = vocabulary.compact
    compact.update(vocab_size=len(vocabulary), bos_token_id=ids[ENDOFTEXT], pad_token_id=ids[ENDOFTEXT],
                   eos_token_id=[ids[ENDOFTEXT], ids[END]])
    compact["vision_config"]["image_token_id"] = ids[IMAGE_TOKEN_ID]
    compact["audio_config"]["audio_token_id"] = ids[AUDIO_TOKEN_ID]
    return compact


def lora_config(config: dict, adapter: str):
    from peft import LoraConfig

    settings = config["lora"][adapter]
    return LoraConfig(r=settings["r"], lora_alpha=settings["lora_alpha"], target_modules=LORA_TARGETS,
                      lora_dropout=0.0, bias="none")


def build_model(config: dict, vocabulary: Vocabulary, seed: int):
    """The compact PyTorch model with both adapters (LoRA B zero: each starts as the base
    model), float32, eager attention (the parity tests' reference: transformers' SDPA path
    runs SigLIP causally whenever no patch is padded), in eval mode (no dropout; the conformer's
    training-mode streaming mask draws from numpy's global generator)."""
    from peft import get_peft_model
    from transformers import Phi4MultimodalConfig, Phi4MultimodalForCausalLM

    torch.manual_seed(seed)
    settings = Phi4MultimodalConfig(**layouts.native_config(compact_config(config, vocabulary)))
    settings._attn_implementation = "eager"
    base = Phi4MultimodalForCausalLM(settings).to(torch.float32)
    _fan_in_init(base.model.embed_tokens_extend.audio_embed.encoder)
    _fan_in_init(base.model.embed_tokens_extend.image_embed.img_processor)
    model = get_peft_model(base, lora_config(config, "vision"), adapter_name="vision")
    model.add_adapter("speech", lora_config(config, "speech"))
    return model.eval()


def _fan_in_init(module) -> None:
    """PyTorch's own fan-in initialization for every linear and convolution of an encoder.
    transformers' initialization (measured on these sizes): the conformer's three subsampling
    convolutions at N(0, 0.02) shrink 80 log-mel bins to ~4e-7, so its output hardly depends on
    the clip and no objective moved it (0% of clips heard after 600 steps); SigLIP's hidden
    states grow to std 225-423 over three layers. With fan-in weights both stay near 1."""
    for layer in module.modules():
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)):
            layer.reset_parameters()


def native_name(peft_name: str) -> str:
    """A PEFT model's parameter name -> the checkpoint's: base weights by their native name, LoRA
    matrices as `<adapter>:<PEFT adapter file key>` (layouts.original_to_native's spelling)."""
    name = peft_name.removeprefix("base_model.model.")
    for adapter in ("vision", "speech"):
        for matrix in ("lora_A", "lora_B"):
            marker = f".{matrix}.{adapter}.weight"
            if name.endswith(marker):
                return f"{adapter}:base_model.model.{name[: -len(marker)]}.{matrix}.weight"
    return name.replace(".base_layer.", ".")


def trained_tensors(model, config: dict) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint as float32 numpy under its checkpoint name: parameters and
    the audio normalization's buffers (the compact token table included)."""
    from ..export.architecture import all_tensors
    from ..export.reference_checkpoint import lora_tensors

    expected = set(all_tensors(config)) | {f"{a}:{n}" for a in ADAPTER_PREFIXES for n in lora_tensors(config, a)}
    tensors = {native_name(name): value.detach().numpy().copy() for name, value in model.state_dict().items()}
    missing = expected - set(tensors)
    assert not missing, f"the model lacks {sorted(missing)[:3]}"
    return {name: tensors[name] for name in sorted(expected)}


def round_to_bf16(parameters) -> None:
    """Round in place to the nearest bf16 (ties to even), kept as float32: the checkpoint is
    bf16, so the next stage trains on top of exactly what ships and the expansion is exact."""
    with torch.no_grad():
        for parameter in parameters:
            bits = parameter.view(torch.int32)
            rounding = ((bits >> 16) & 1) + 0x7FFF
            parameter.copy_(((bits + rounding) & ~0xFFFF).view(torch.float32))
