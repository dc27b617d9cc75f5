"""Norm gains folded into the linears that read them: what an int4 export does by default.

Each decoder layer's two RMSNorms multiply the normalized hidden state by a gain g before one
linear reads it: input_layernorm feeds qkv_proj, post_attention_layernorm feeds gate_up_proj.
W (g * x) = (W diag(g)) x, so the export can move g into W's input columns and leave the norm a
gain of ones: the float function is unchanged, but what the int4 quantizers see changes. A real
LLM's "massive activation" channels are carried this way (a gain channel many times the others,
its column of W as many times smaller): int4 blocks along W's rows then round that tiny column
to almost nothing, and accuracy level 4 rounds each block of 32 activations to int8 next to a
channel 100x larger. Folded, the activations are plain normalized values and the column holds
the gain's size, so both roundings see ordinary numbers. Measured on the trained reference
model's outlier variant (README "The trained reference model"), with the plain int4 token table:
its int4 export's KL against fp32 drops from 9.0e-3 to 2.7e-3, the trained model's own from
2.9e-3 to 2.7e-3 (with the rescored table: 4.5e-3 and 1.0e-3 to 5.8e-4).

Which tensors change: the gains (-> ones, zeros where g is 0), the two linears' weights, and
the built-in (int4/int8) adapters' LoRA A of those linears (graph_adapters.py). Adapter *files*
(fp32/fp16, or a user's own) stay in the checkpoint's terms: the decoder multiplies their
input by g again (text_decoder.lora_linear), so any adapter file of this model fits any export.
The final norm stays: with tied embeddings its reader is the token table, which the embedding
reads unscaled. An fp32 export keeps the checkpoint as it is (nothing is rounded to help).
"""

import re

import numpy as np

NORM_READERS = {"input_layernorm": "self_attn.qkv_proj", "post_attention_layernorm": "mlp.gate_up_proj"}
LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def gain_scale(gain: np.ndarray) -> np.ndarray:
    """What the reader's columns are multiplied by: the gain itself, 1 where it is 0 (a zero
    gain stays in the norm, so the fold never divides by zero)."""
    return np.where(gain == 0, np.float32(1), gain).astype(np.float32)


def reader_gain_name(name: str) -> str | None:
    """The norm gain read by linear (or LoRA target) `name` (`model.layers.N.<target>[.weight]`),
    or None when `name` is not a folded reader."""
    match = LAYER.match(name)
    if not match:
        return None
    for norm, reader in NORM_READERS.items():
        if match.group(2) in (reader, f"{reader}.weight"):
            return f"model.layers.{match.group(1)}.{norm}.weight"
    return None


def is_gain(name: str) -> bool:
    match = LAYER.match(name)
    return bool(match) and match.group(2) in {f"{norm}.weight" for norm in NORM_READERS}


def folded(name: str, values: np.ndarray, read_gain) -> np.ndarray:
    """Tensor `name`'s values with the gains folded; `read_gain(name)` reads a gain unfolded."""
    if is_gain(name):
        return values / gain_scale(values)
    gain = reader_gain_name(name)
    if gain is not None:
        return values * gain_scale(read_gain(gain))[None, :]
    return values
