"""Open a Phi-4-multimodal checkpoint folder (either layout) and read it one tensor at a time.

`Checkpoint.tensor(name)` takes transformers-native names whatever the layout on disk;
`Checkpoint.weights(prefix)` reads the tensors under one module by the rest of their names;
`Checkpoint.text` / `.vision` / `.audio` are the three parts' configs; `Checkpoint.lora(adapter)`
returns one adapter's (A, B) pairs from the inline tensors of the original layout or from the
PEFT folder of the native one. Nothing here builds a torch model.
"""

import hashlib
import json
import math
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..manifest import TextConfig
from ..errors import Phi4MMError
from . import architecture, checkpoint_config, layouts, norm_gains
from .checkpoint_config import AudioConfig, VisionConfig
from .safetensors_file import SafetensorsFile

NATIVE_MODEL_TYPE = "phi4_multimodal"
ORIGINAL_MODEL_TYPE = "phi4mm"
IMAGE_TOKEN_ID = 200010  # the remote code's constants; the native config may override them
AUDIO_TOKEN_ID = 200011


def text_shapes(text: "TextConfig") -> dict[str, tuple[int, ...]]:
    """The language model's tensors (native names) and shapes for these dimensions."""
    return architecture.text_tensors({
        "vocab_size": text.vocab_size, "hidden_size": text.hidden_size, "intermediate_size": text.intermediate_size,
        "num_attention_heads": text.num_heads, "num_key_value_heads": text.num_kv_heads,
        "num_hidden_layers": text.num_layers, "tie_word_embeddings": text.tie_word_embeddings,
    })


@dataclass
class LoraAdapter:
    """One adapter: rank, scale (alpha / r), and `pairs()`: per target ((layer, target), A [r, in],
    B [out, r]) as stored, read one pair at a time (a full-size adapter is ~1.8 GB in fp32)."""

    name: str
    rank: int
    alpha: float
    scale: float
    pairs: object  # () -> iterator of ((layer, target), A, B)


@dataclass(frozen=True)
class Weights:
    """The checkpoint's tensors under one module: `weights["mlp.fc1.weight"]` reads
    `<prefix>mlp.fc1.weight` (float32) and `weights.scope("mlp.")` narrows to a submodule.
    A graph names what it stores from this module `<graph_prefix><rest of the name>`."""

    checkpoint: "Checkpoint"
    prefix: str
    graph_prefix: str

    def __getitem__(self, name: str) -> np.ndarray:
        return self.checkpoint.tensor(self.prefix + name)

    def __contains__(self, name: str) -> bool:
        return self.checkpoint.has(self.prefix + name)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.checkpoint.shape(self.prefix + name)

    def scope(self, prefix: str) -> "Weights":
        return Weights(self.checkpoint, self.prefix + prefix, self.graph_prefix + prefix)

    def graph_name(self, name: str = "") -> str:
        """The graph's name for tensor `name` of this module, or for the module itself."""
        return (self.graph_prefix + name).rstrip(".")


def _rope_settings(config: dict, head_dim: int) -> dict:
    """Partial rotary and LongRoPE, whichever of the config spellings the checkpoint uses."""
    rope = dict(config.get("rope_scaling") or config.get("rope_parameters") or {})
    partial = rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    rotary_dim = int(head_dim * partial)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    max_positions = config.get("max_position_embeddings", 4096)
    original_max = config.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings") or max_positions
    if rope_type in ("longrope", "su"):
        short_factor, long_factor = rope["short_factor"], rope["long_factor"]
        factor = rope.get("factor") or max_positions / original_max
        attention_factor = rope.get("attention_factor") or (
            1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original_max))
        )
    elif rope_type == "default":
        short_factor = long_factor = [1.0] * (rotary_dim // 2)
        attention_factor = 1.0
    else:
        raise Phi4MMError(f"rope type {rope_type!r} is not Phi-4-multimodal's (longrope): this checkpoint is not supported")
    if len(short_factor) != rotary_dim // 2 or len(long_factor) != rotary_dim // 2:
        raise Phi4MMError(f"rope factors must have rotary_dim/2 = {rotary_dim // 2} entries: the config.json is inconsistent")
    return {
        "rotary_dim": rotary_dim,
        "rope_theta": float(config.get("rope_theta", rope.get("rope_theta", 10000.0))),
        "short_factor": [float(x) for x in short_factor],
        "long_factor": [float(x) for x in long_factor],
        "attention_factor": float(attention_factor),
        "original_max_position_embeddings": int(original_max),
        "max_position_embeddings": int(max_positions),
    }


def _as_list(value) -> list[int]:
    return [value] if isinstance(value, int) else list(value or [])


class Checkpoint:
    """A checkpoint folder. Raises Phi4MMError for anything missing, corrupt or of another model.
    `fold_norm_gains`: read the decoder's norm gains folded into their readers (norm_gains.py)."""

    def __init__(self, folder, fold_norm_gains: bool = False):
        self.folder = Path(folder)
        self.fold_norm_gains = fold_norm_gains
        if not self.folder.is_dir():
            raise Phi4MMError(f"checkpoint folder {self.folder} does not exist: pass the folder holding config.json and the safetensors")
        config_path = self.folder / "config.json"
        if not config_path.is_file():
            raise Phi4MMError(f"{self.folder} has no config.json: pass a Hugging Face Phi-4-multimodal checkpoint folder")
        self.config_bytes = config_path.read_bytes()
        try:
            self.raw_config = json.loads(self.config_bytes)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise Phi4MMError(f"{config_path} is not valid JSON ({error}): re-download the checkpoint") from None
        model_type = self.raw_config.get("model_type")
        if model_type == NATIVE_MODEL_TYPE:
            self.layout = "native"
        elif model_type == ORIGINAL_MODEL_TYPE:
            self.layout = "original"
        else:
            raise Phi4MMError(
                f"{self.folder} holds a {model_type!r} model, not Phi-4-multimodal (model_type 'phi4mm' or "
                f"'phi4_multimodal'): point export at a Phi-4-multimodal checkpoint"
            )
        self._files = self._index_weights()
        self.text = self._text_config()

    # -- weights ---------------------------------------------------------------------------
    def _index_weights(self) -> dict[str, SafetensorsFile]:
        index_path = self.folder / "model.safetensors.index.json"
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as error:
                raise Phi4MMError(f"{index_path} is unreadable ({error}): re-download the checkpoint") from None
            names = sorted(set(weight_map.values()))
        else:
            names = sorted(p.name for p in self.folder.glob("*.safetensors"))
        if not names:
            raise Phi4MMError(f"{self.folder} has no .safetensors weights: download the model's weight files too")
        files = {}
        for file_name in names:
            path = self.folder / file_name
            if not path.is_file():
                raise Phi4MMError(f"{path} is listed in the index but missing: finish downloading the checkpoint")
            shard = SafetensorsFile(path)
            for name in shard.names():
                native = name if self.layout == "native" else layouts.original_to_native(name)
                files[native] = (shard, name)
        return files

    def has(self, name: str) -> bool:
        return name in self._files

    def shape(self, name: str) -> tuple[int, ...]:
        shard, stored = self._lookup(name)
        return shard.shape(stored)

    def tensor(self, name: str) -> np.ndarray:
        """One tensor by its native name, as float32 (folded when the checkpoint was opened so)."""
        values = self.stored_tensor(name)
        return norm_gains.folded(name, values, self.stored_tensor) if self.fold_norm_gains else values

    def stored_tensor(self, name: str) -> np.ndarray:
        """One tensor as the checkpoint stores it (never folded)."""
        shard, stored = self._lookup(name)
        return shard.read(stored)

    def input_scale(self, target: str) -> np.ndarray | None:
        """What the input of linear `target` (`model.layers.N.self_attn.qkv_proj`) must be
        multiplied by to reach the checkpoint's own: the folded norm gain, or None."""
        gain = norm_gains.reader_gain_name(target) if self.fold_norm_gains else None
        return None if gain is None else norm_gains.gain_scale(self.stored_tensor(gain))

    def _lookup(self, name: str):
        if name not in self._files:
            raise Phi4MMError(f"{self.folder} lacks tensor {name}: the checkpoint is incomplete or not Phi-4-multimodal")
        return self._files[name]

    def weights(self, prefix: str, graph_prefix: str | None = None) -> Weights:
        """The tensors whose names start with `prefix`; a graph names them with `graph_prefix`
        in its place (default: the prefix itself)."""
        return Weights(self, prefix, prefix if graph_prefix is None else graph_prefix)

    def config_sha256(self) -> str:
        return hashlib.sha256(self.config_bytes).hexdigest()

    # -- config ----------------------------------------------------------------------------
    @cached_property
    def vision(self) -> VisionConfig | None:
        """The vision encoder's sizes; None when the checkpoint has no vision encoder."""
        return checkpoint_config.vision_config(self)

    @cached_property
    def audio(self) -> AudioConfig | None:
        """The audio encoder's sizes; None when the checkpoint has no audio encoder."""
        return checkpoint_config.audio_config(self)

    def _text_config(self) -> TextConfig:
        c = self.raw_config
        try:
            hidden, heads = c["hidden_size"], c["num_attention_heads"]
            head_dim = c.get("head_dim") or hidden // heads
            rope = _rope_settings(c, head_dim)
            eos = _as_list(c.get("eos_token_id"))
            generation_path = self.folder / "generation_config.json"
            if generation_path.is_file():
                eos += [i for i in _as_list(json.loads(generation_path.read_text()).get("eos_token_id")) if i not in eos]
            text = TextConfig(
                vocab_size=c["vocab_size"], hidden_size=hidden, intermediate_size=c["intermediate_size"],
                num_layers=c["num_hidden_layers"], num_heads=heads,
                num_kv_heads=c.get("num_key_value_heads") or heads, head_dim=head_dim,
                rms_norm_eps=float(c.get("rms_norm_eps", 1e-5)),
                tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
                bos_token_id=c.get("bos_token_id", 199999), eos_token_ids=eos, pad_token_id=c.get("pad_token_id", 199999),
                image_token_id=(c.get("vision_config") or {}).get("image_token_id", IMAGE_TOKEN_ID),
                audio_token_id=(c.get("audio_config") or {}).get("audio_token_id", AUDIO_TOKEN_ID),
                **rope,
            )
        except KeyError as error:
            raise Phi4MMError(f"{self.folder / 'config.json'} lacks {error}: the checkpoint's config is incomplete") from None
        if not self.has("lm_head.weight") and not text.tie_word_embeddings:
            text.tie_word_embeddings = True  # an untied config without lm_head weights: the head is the embedding
        for name, shape in text_shapes(text).items():
            if self.shape(name) != shape:
                raise Phi4MMError(
                    f"tensor {name} has shape {self.shape(name)}, config.json implies {shape}: "
                    f"the weights do not belong to this config"
                )
        return text

    # -- adapters --------------------------------------------------------------------------
    def adapter_names(self) -> list[str]:
        """The adapters this checkpoint carries, of 'vision' and 'speech'."""
        return [a for a in architecture.ADAPTERS if self._adapter_source(a) is not None]

    def _adapter_source(self, adapter: str):
        if self.layout == "original" and self.has(f"{adapter}:base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight"):
            return "inline"
        if (self.folder / f"{adapter}-lora" / "adapter_config.json").is_file():
            return "peft"
        return None

    def lora(self, adapter: str, folded: bool = False) -> LoraAdapter:
        """One adapter's pairs as stored; `folded`: each A multiplied by its target's input_scale
        (the built-in adapters of a folded export read the folded norms' output)."""
        source = self._adapter_source(adapter)
        if source == "inline":
            settings = self.raw_config.get(f"{adapter}_lora") or {}
            rank, alpha = settings.get("r"), settings.get("lora_alpha")
            if rank is None or alpha is None:
                raise Phi4MMError(f"config.json has no {adapter}_lora {{r, lora_alpha}}: the checkpoint is incomplete")
            scale = alpha / rank
            read = lambda key: self.tensor(f"{adapter}:base_model.model.{key}")  # noqa: E731
        elif source == "peft":
            rank, alpha, scale, read = self._peft(adapter)
        else:
            raise Phi4MMError(f"{self.folder} has no {adapter} adapter (neither inline nor {adapter}-lora/)")
        def pairs():
            for layer in range(self.text.num_layers):
                for target in architecture.LORA_TARGETS:
                    key = f"model.layers.{layer}.{target}"
                    a, b = read(f"{key}.lora_A.weight"), read(f"{key}.lora_B.weight")
                    out_features, in_features = self.shape(f"{key}.weight")
                    if a.shape != (rank, in_features) or b.shape != (out_features, rank):
                        raise Phi4MMError(
                            f"{adapter} adapter tensor {key} has A {a.shape}, B {b.shape}; expected A ({rank}, {in_features}) "
                            f"and B ({out_features}, {rank}): the adapter does not belong to this model"
                        )
                    gain = self.input_scale(key) if folded else None
                    yield (layer, target), (a if gain is None else a * gain[None, :]), b

        return LoraAdapter(adapter, rank, alpha, scale, pairs)

    def _peft(self, adapter: str):
        folder = self.folder / f"{adapter}-lora"
        try:
            settings = json.loads((folder / "adapter_config.json").read_text())
        except json.JSONDecodeError as error:
            raise Phi4MMError(f"{folder / 'adapter_config.json'} is not valid JSON ({error})") from None
        if settings.get("peft_type", "LORA") != "LORA":
            raise Phi4MMError(f"{folder} is a {settings.get('peft_type')} adapter; only LoRA adapters are supported")
        rank, alpha = settings["r"], settings["lora_alpha"]
        scale = alpha / math.sqrt(rank) if settings.get("use_rslora") else alpha / rank
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise Phi4MMError(f"{folder} has no adapter_model.safetensors: download the adapter weights")
        tensors = {}
        for shard in map(SafetensorsFile, files):
            for name in shard.names():
                # PEFT writes `base_model.model.<module>.lora_A.weight`; some tools drop the prefix
                # or keep the adapter name (`lora_A.default.weight`).
                key = re.sub(r"^base_model\.model\.", "", name)
                key = re.sub(r"\.lora_([AB])\.[^.]+\.weight$", r".lora_\1.weight", key)
                tensors[key] = (shard, name)

        def read(key):
            if key not in tensors:
                raise Phi4MMError(f"{folder} lacks {key}: the adapter does not cover this model's layers")
            shard, name = tensors[key]
            return shard.read(name)

        return rank, alpha, scale, read
