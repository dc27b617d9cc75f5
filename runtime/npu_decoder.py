"""The language model of an NPU artifact (export/text_decoder_npu.py): static graphs the runtime
feeds with what the CPU graphs compute inside themselves.

Per run of S positions (S = the prompt chunk, or 1 for a decode step) starting at position p:
- inputs_embeds padded to S rows;
- attention_bias: the cache's first p positions and the new positions up to each row (causal)
  are visible, the rest of the fixed-length cache is not; one row per query head of a KV group;
- cos/sin of positions p..p+S-1 with the LongRoPE factors the whole sequence uses;
- the logits of the last real row; the new keys and values come back for the S rows, and the
  real ones are written into the cache here.
Everything else (the prefix cache, LongRoPE's recompute at the switch, the adapters) is the CPU
Decoder's logic, inherited.
"""

import numpy as np
import onnxruntime as ort

from ..artifact import NPU_MASKED_SCORE, past_key_name, past_value_name, present_key_name, present_value_name
from ..errors import Phi4MMError
from ..manifest import NpuShapes, TextConfig
from .adapters import AdapterSet
from .decoder import Decoder
from .kv_cache import KVCache

MASKED = np.float32(NPU_MASKED_SCORE)


def rotary_tables(text: TextConfig, shapes: NpuShapes, positions: np.ndarray, long_factors: bool):
    """cos, sin [len(positions), rotary_dim/2] float32, scaled by LongRoPE's attention factor, as
    the CPU decoder graph computes them (export/text_decoder.py rotary_tables)."""
    inv_freq = np.asarray(shapes.inv_freq_long if long_factors else shapes.inv_freq_short, np.float32)
    angles = np.asarray(positions, np.float32)[:, None] * inv_freq[None, :]
    factor = np.float32(text.attention_factor)
    return np.cos(angles) * factor, np.sin(angles) * factor


class NpuDecoder(Decoder):
    def __init__(self, text: TextConfig, embedding: ort.InferenceSession, decode: ort.InferenceSession,
                 prompt: ort.InferenceSession, adapters: AdapterSet, shapes: NpuShapes, context_length: int | None):
        if context_length is not None and context_length > shapes.context:
            raise Phi4MMError(f"context {context_length}: this NPU artifact's graphs hold {shapes.context} positions "
                              f"(re-export with --npu-context {context_length} for more)")
        self.text, self.adapters, self.shapes, self.prefill_chunk = text, adapters, shapes, None
        self.embedding, self.decode, self.prompt = embedding, decode, prompt
        self.cache = KVCache(text.num_layers, text.num_kv_heads, text.head_dim, shapes.context)
        self.cache.capacity = context_length or shapes.context  # a smaller context only limits requests
        self.no_features = np.zeros((0, text.hidden_size), np.float32)
        self.group = text.num_heads // text.num_kv_heads
        self._sessions = {1: decode, shapes.chunk: prompt}  # by positions per run (one graph when chunk is 1)
        self._bindings = {positions: session.io_binding() for positions, session in self._sessions.items()}
        self.reuse_prefix = True
        self.active_adapter = None
        self.activate(adapters.none)

    @property
    def prefill_precision(self) -> str:
        return "npu"

    def activate(self, adapter: str) -> None:
        """Bind an adapter's A/B tensors (zeros for 'none') to both graphs: a rebind, no recompile."""
        if adapter != self.active_adapter:
            self.cache.forget()
            for binding in self._bindings.values():
                self.adapters.bind(binding, adapter)
            self.active_adapter = adapter

    def embed(self, input_ids: np.ndarray, image_features=None, audio_features=None) -> np.ndarray:
        """inputs_embeds [1, n, hidden]: the token table's rows through the embedding graph, chunk by
        chunk, then the image and audio placeholder rows replaced by the feature rows in order."""
        ids = np.asarray(input_ids, np.int64).reshape(-1)
        chunk = self.shapes.chunk
        padded = np.zeros(-(-len(ids) // chunk) * chunk, np.int32)
        padded[:len(ids)] = ids
        rows = [self.embedding.run(["inputs_embeds"], {"input_ids": padded[None, i:i + chunk]})[0]
                for i in range(0, len(padded), chunk)]
        embeds = np.concatenate(rows, axis=1)[:, :len(ids)]
        for token_id, features in ((self.text.image_token_id, image_features), (self.text.audio_token_id, audio_features)):
            where = np.flatnonzero(ids == token_id)
            count = 0 if features is None else len(features)
            if len(where) != count and (count or features is not None):
                raise Phi4MMError(f"the prompt has {len(where)} placeholder tokens {token_id} for {count} feature rows")
            if count:
                embeds[0, where] = features
        return embeds

    def _run(self, embeds: np.ndarray, start: int, keep: int, keys: np.ndarray | None) -> np.ndarray:
        if keep != 1:
            raise Phi4MMError("the NPU graphs give the logits of one position per run: ask for the last one (keep=1)")
        count = embeds.shape[1]
        self._will_write(start, start + count)
        chunk = self.shapes.chunk if count > 1 else 1
        for offset in range(0, count, chunk):
            logits = self._run_static(embeds[:, offset:offset + chunk], start + offset, chunk)
        self.cache.length = start + count
        self.cache.record(start, keys)
        return logits

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
        binding.bind_cpu_input("inputs_embeds", padded)
        binding.bind_cpu_input("attention_bias", np.tile(bias, (self.group, 1))[None, None])
        binding.bind_cpu_input("cos", cos)
        binding.bind_cpu_input("sin", sin)
        binding.bind_cpu_input("logits_index", np.array([n - 1], np.int32))
        buffers = self.cache.arrays()
        names = ["logits"]
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
        return outputs["logits"]

    def step(self, token_id: int) -> np.ndarray:
        """Logits [vocab] after appending one token (a fresh array)."""
        start = self.cache.length
        self._will_write(start, start + 1)
        logits = self._run_static(self.embed(np.array([[token_id]])), start, 1)
        self.cache.length = start + 1
        self.cache.record(start, np.array([token_id], np.int64))
        return logits[0, -1]
