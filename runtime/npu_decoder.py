"""The language model of an NPU artifact (export/text_decoder_npu.py): static graphs the runtime
feeds with what the CPU graphs compute inside themselves.

Per run of S positions (S = the prompt chunk, or 1 for a decode step) starting at position p:
- inputs_embeds padded to S rows;
- attention_bias: the cache's first p positions and the new positions up to each row (causal)
  are visible, the rest of the fixed-length cache is not; one row per query head of a KV group;
- cos/sin of positions p..p+S-1 with the LongRoPE factors the whole sequence uses;
- the logits of the last real row; the new keys and values come back for the S rows, and the
  real ones are written into the cache here.
Everything else (the prefix cache, LongRoPE's recompute at the switch, the adapters) is the
sequence's bookkeeping, sequence.py's CachedSequence, which the CPU Decoder holds too.
"""

import numpy as np
import onnxruntime as ort

from ..artifact import (ATTENTION_BIAS, INPUT_IDS, INPUTS_EMBEDS, LOGITS, LOGITS_INDEX, NPU_MASKED_SCORE, ROTARY_COS,
                        ROTARY_SIN, past_key_name, past_value_name, present_key_name, present_value_name)
from ..errors import Phi4MMError
from ..manifest import NpuShapes, TextConfig
from .adapters import AdapterSet
from .kv_cache import KVCache
from .sequence import CachedSequence

MASKED = np.float32(NPU_MASKED_SCORE)


def rotary_tables(text: TextConfig, shapes: NpuShapes, positions: np.ndarray, long_factors: bool):
    """cos, sin [len(positions), rotary_dim/2] float32, scaled by LongRoPE's attention factor, as
    the CPU decoder graph computes them (export/text_decoder.py rotary_tables)."""
    inv_freq = np.asarray(shapes.inv_freq_long if long_factors else shapes.inv_freq_short, np.float32)
    angles = np.asarray(positions, np.float32)[:, None] * inv_freq[None, :]
    factor = np.float32(text.attention_factor)
    return np.cos(angles) * factor, np.sin(angles) * factor


class NpuDecoder:
    """The NPU artifact's text graphs over one KV cache in host memory, one sequence at a time (a TextDecoder)."""

    def __init__(self, text: TextConfig, embedding: ort.InferenceSession, decode: ort.InferenceSession,
                 prompt: ort.InferenceSession, adapters: AdapterSet, shapes: NpuShapes, context_length: int | None):
        """`context_length`: the positions requests may use, at most the graphs' (None: all of them)."""
        if context_length is not None and context_length > shapes.context:
            raise Phi4MMError(f"context {context_length}: this NPU artifact's graphs hold {shapes.context} positions "
                              f"(re-export with --npu-context {context_length} for more)")
        self.text, self.adapters, self.shapes = text, adapters, shapes
        self.embedding, self.decode, self.prompt = embedding, decode, prompt
        self.cache = KVCache(text.num_layers, text.num_kv_heads, text.head_dim, shapes.context)
        self.cache.capacity = context_length or shapes.context  # a smaller context only limits requests
        self.no_features = np.zeros((0, text.hidden_size), np.float32)
        self.group = text.num_heads // text.num_kv_heads
        self._sessions = {1: decode, shapes.chunk: prompt}  # by positions per run (one graph when chunk is 1)
        self._bindings = {positions: session.io_binding() for positions, session in self._sessions.items()}
        # Both graphs take the adapters' A/B tensors (zeros for 'none'): a swap is a rebind, no recompile.
        self.sequence = CachedSequence(text, self.cache, adapters, self._bindings.values())

    @property
    def prefill_precision(self) -> str:
        return "npu"

    @property
    def active_adapter(self) -> str | None:
        return self.sequence.active_adapter

    @active_adapter.setter
    def active_adapter(self, adapter: str | None) -> None:
        self.sequence.active_adapter = adapter

    def activate(self, adapter: str) -> None:
        """Bind an adapter's A/B tensors (zeros for 'none') to both graphs: a rebind, no recompile."""
        self.sequence.activate(adapter)

    def reusable_prefix(self, keys: np.ndarray) -> int:
        """How many leading positions of a prompt with position `keys` (kv_cache.position_keys) the
        cache holds as a fresh prefill would compute them (CachedSequence.reusable_prefix)."""
        return self.sequence.reusable_prefix(keys)

    def embed(self, input_ids: np.ndarray, image_features=None, audio_features=None) -> np.ndarray:
        """inputs_embeds [1, n, hidden]: the token table's rows through the embedding graph, chunk by
        chunk, then the image and audio placeholder rows replaced by the feature rows in order."""
        ids = np.asarray(input_ids, np.int64).reshape(-1)
        chunk = self.shapes.chunk
        padded = np.zeros(-(-len(ids) // chunk) * chunk, np.int32)
        padded[:len(ids)] = ids
        rows = [self.embedding.run([INPUTS_EMBEDS], {INPUT_IDS: padded[None, i:i + chunk]})[0]
                for i in range(0, len(padded), chunk)]
        embeds = np.concatenate(rows, axis=1)[:, :len(ids)]
        for token_id, features in ((self.text.image_token_id, image_features),
                                   (self.text.audio_token_id, audio_features)):
            where = np.flatnonzero(ids == token_id)
            count = 0 if features is None else len(features)
            if len(where) != count and (count or features is not None):
                raise Phi4MMError(f"the prompt has {len(where)} placeholder tokens {token_id} for {count} feature rows")
            if count:
                embeds[0, where] = features
        return embeds

    def prefill(self, embeds: np.ndarray, start: int = 0, keep: int | None = None,
                keys: np.ndarray | None = None) -> np.ndarray:
        """Run inputs_embeds [1, n, hidden] at positions start..start+n-1 over the cached prefix;
        return the logits of the last position, [1, 1, vocab] (`keep` must be 1, or None for n = 1).
        `keys` (n of them) say what the positions are computed from (Decoder.prefill)."""
        if (embeds.shape[1] if keep is None else keep) != 1:
            raise Phi4MMError("the NPU graphs give the logits of one position per run: ask for the last one (keep=1)")
        return self.sequence.prefill(embeds, start, 1, keys, self._run)

    def step(self, token_id: int) -> np.ndarray:
        """Logits [vocab] after appending one token (a fresh array)."""
        return self.sequence.step(token_id, self._run_step)

    def _run(self, embeds: np.ndarray, start: int, keep: int) -> np.ndarray:
        """Positions start..start+n-1 through the prompt graph chunk by chunk (the decode graph for one)."""
        count = embeds.shape[1]
        chunk = self.shapes.chunk if count > 1 else 1
        for offset in range(0, count, chunk):
            logits = self._run_static(embeds[:, offset:offset + chunk], start + offset, chunk)
        return logits

    def _run_step(self, token_id: int, position: int) -> np.ndarray:
        return self._run_static(self.embed(np.array([[token_id]])), position, 1)[0, -1]

    def _run_static(self, embeds: np.ndarray, start: int, positions: int) -> np.ndarray:
        """One run of the `positions`-row graph over `embeds` (n <= positions rows) at `start`."""
        n, context = embeds.shape[1], self.shapes.context
        padded = np.zeros((1, positions, self.text.hidden_size), np.float32)
        padded[:, :n] = embeds
        bias = np.full((positions, context + positions), MASKED, np.float32)
        bias[:, :start] = 0.0  # the cached positions before this run
        bias[:, context:][np.tril_indices(positions)] = 0.0  # each new position sees itself and those before it
        cos, sin = rotary_tables(self.text, self.shapes, np.arange(start, start + positions), self.cache.long_rope)
        binding = self._bindings[positions]
        binding.bind_cpu_input(INPUTS_EMBEDS, padded)
        binding.bind_cpu_input(ATTENTION_BIAS, np.tile(bias, (self.group, 1))[None, None])
        binding.bind_cpu_input(ROTARY_COS, cos)
        binding.bind_cpu_input(ROTARY_SIN, sin)
        binding.bind_cpu_input(LOGITS_INDEX, np.array([n - 1], np.int32))
        buffers = self.cache.arrays()
        names = [LOGITS]
        for layer in range(self.text.num_layers):
            binding.bind_cpu_input(past_key_name(layer), buffers[2 * layer])
            binding.bind_cpu_input(past_value_name(layer), buffers[2 * layer + 1])
            names += [present_key_name(layer), present_value_name(layer)]
        for name in names:
            binding.bind_output(name)
        self._sessions[positions].run_with_iobinding(binding)
        outputs = dict(zip(names, binding.copy_outputs_to_cpu()))
        binding.clear_binding_outputs()
        for layer in range(self.text.num_layers):
            buffers[2 * layer][:, :, start:start + n] = outputs[present_key_name(layer)][:, :, :n]
            buffers[2 * layer + 1][:, :, start:start + n] = outputs[present_value_name(layer)][:, :, :n]
        return outputs[LOGITS]
