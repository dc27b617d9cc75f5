"""The manifest's sizes checked against the graphs they describe, when a session opens.

The runtime sizes its buffers (KV cache, step rows, feature rows, crops, mel bins) from
manifest.json; a manifest whose numbers disagree with the graphs (edited, or from another export)
would fail deep inside ONNX Runtime with its own traceback, or run with a wrong shape. Every static
dimension a graph declares for a name below must equal the manifest's number for it.
"""

import re

import onnxruntime as ort

from ..artifact import (ATTENTION_MASK, AUDIO_FEATURES, CROP_FEATURES, IMAGE_FEATURES, INPUT_FEATURES, INPUTS_EMBEDS,
                        LOGITS, PIXEL_VALUES, SPEECH_FEATURES, VISION_SPEECH_FEATURES)
from ..errors import Phi4MMError
from ..manifest import Manifest

PAST_KEY = re.compile(r"past_key_values\.(\d+)\.(key|value)")


def expected_dims(manifest: Manifest) -> dict[str, dict[int, tuple[str, int]]]:
    """Input/output name -> {axis: (manifest field, size)} for every graph of the artifact."""
    text = manifest.model
    hidden = ("model.hidden_size", text.hidden_size)
    dims = {INPUTS_EMBEDS: {-1: hidden}, IMAGE_FEATURES: {-1: hidden}, AUDIO_FEATURES: {-1: hidden},
            CROP_FEATURES: {-1: hidden}, SPEECH_FEATURES: {-1: hidden}, VISION_SPEECH_FEATURES: {-1: hidden},
            LOGITS: {-1: ("model.vocab_size", text.vocab_size)},
            "past": {1: ("model.num_kv_heads", text.num_kv_heads), -1: ("model.head_dim", text.head_dim)}}
    if manifest.npu is not None:
        dims["past"][2] = ("npu.context", manifest.npu.context)
    if manifest.vision is not None:
        crop = ("vision.crop_size", manifest.vision.crop_size)
        side = ("vision.crop_size / vision.patch_size", manifest.vision.patches_per_side)
        dims[PIXEL_VALUES] = {-1: crop, -2: crop}
        dims[ATTENTION_MASK] = {-1: side, -2: side}  # the patch mask (the decoder's attention_mask is dynamic)
    if manifest.audio is not None:
        dims[INPUT_FEATURES] = {-1: ("audio.mel_bins", manifest.audio.mel_bins)}
    return dims


def check_session(session: ort.InferenceSession, graph: str, manifest: Manifest) -> ort.InferenceSession:
    """`session` (the artifact's `graph`) when its declared sizes agree with the manifest; else a
    Phi4MMError naming the first disagreement."""
    dims = expected_dims(manifest)
    values = [*session.get_inputs(), *session.get_outputs()]
    layers = {int(m.group(1)) for v in values if (m := PAST_KEY.fullmatch(v.name))}
    if layers and layers != set(range(manifest.model.num_layers)):
        _refuse(graph, f"has a KV cache for {len(layers)} layers", "model.num_layers", manifest.model.num_layers)
    for value in values:
        expected = dims["past"] if PAST_KEY.fullmatch(value.name) else dims.get(value.name, {})
        for axis, (field, size) in expected.items():
            shape = value.shape or []
            if len(shape) >= abs(axis) and isinstance(shape[axis], int) and shape[axis] != size:
                _refuse(graph, f"declares {value.name} with {shape[axis]} on axis {axis}", field, size)
    return session


def _refuse(graph: str, found: str, field: str, size: int):
    raise Phi4MMError(f"manifest.json does not match {graph}: the graph {found}, the manifest says {field} {size}: "
                      f"the manifest was altered or comes from another export; re-export the artifact")
