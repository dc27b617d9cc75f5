"""The language model as ONNX Runtime runs it: embedding.onnx, decoder.onnx (and, when chosen, the
int8 prompt graph decoder_prefill.onnx) over one KV cache, with an adapter's tensors bound.

Two ways to advance the cached sequence: `prefill` runs many positions at once (a prompt; in
chunks when asked), `step` appends one token through preallocated buffers (decoding). Both run
through IOBinding; the KV cache buffers are both past input and present output. The cache, the
adapters' tensors and the step's embedding row live on the sessions' device (device.py).

LongRoPE: past `original_max_position_embeddings` total positions, the model rotates *every*
position with the long factors, so a sequence that grows past that switch must be recomputed
from its start. `crosses_longrope_switch` is that rule, the only place it is written.
"""

import numpy as np
import onnxruntime as ort

from ..artifact import past_key_name
from ..manifest import TextConfig
from ..errors import Phi4MMError
from .adapters import AdapterSet
from .device import on_device
from .kv_cache import KVCache
from .tensor_types import as_declared, input_types, output_types

# Runs of at least this many positions go through the int8 prompt graph when it is loaded: below
# it the int4 kernels win (the int8 GEMM reads twice the bytes; measured crossover 32-64 rows).
INT8_MIN_POSITIONS = 64


def crosses_longrope_switch(text: TextConfig, start: int, end: int) -> bool:
    """True when a sequence of `start` positions grown to `end` passes LongRoPE's switch: the
    rotary factors of all positions change, so the positions before `start` must be recomputed."""
    return start <= text.original_max_position_embeddings < end


def chunk_bounds(text: TextConfig, start: int, count: int, chunk: int | None) -> list[tuple[int, int]]:
    """(offset, end) pieces of a run of `count` positions from `start`, each at most `chunk` long,
    except that no piece may end at or below the LongRoPE switch while the run passes it (the
    first piece then reaches past it)."""
    chunk = chunk or count
    first = chunk
    if crosses_longrope_switch(text, start, start + count):
        first = max(chunk, text.original_max_position_embeddings + 1 - start)
    offsets = [0, *range(first, count, chunk)]
    return list(zip(offsets, [*offsets[1:], count]))


class Decoder:
    """The text model's sessions, bindings and KV cache for one sequence at a time."""

    def __init__(self, text: TextConfig, embedding: ort.InferenceSession, decoder: ort.InferenceSession,
                 adapters: AdapterSet, context_length: int, prompt_int8: ort.InferenceSession | None = None,
                 prefill_chunk: int | None = None, device: str = "cpu"):
        if prefill_chunk is not None and prefill_chunk < 1:
            raise Phi4MMError(f"prefill chunk {prefill_chunk}: give at least 1 token (or none for whole prompts)")
        # DirectML's GroupQueryAttention treats the past as empty when given more than one new
        # position (read in its 1.24.4 source; never run here): there prompts run whole from
        # position 0, so no prefix of an earlier turn is reused and no prompt is chunked.
        whole_prompts = device == "dml"
        if whole_prompts and prefill_chunk is not None:
            raise Phi4MMError("DirectML runs every prompt whole (its attention kernel takes no past with several new "
                              "positions): load without --prefill-chunk")
        self.text, self.adapters, self.prefill_chunk = text, adapters, prefill_chunk
        self.embedding, self.decoder, self.prompt_int8 = embedding, decoder, prompt_int8
        # The graphs' element types: fp32, or fp16 activations and KV cache (a DirectML artifact).
        declared = input_types(decoder)
        self.embeds_type, self.logits_type = declared["inputs_embeds"], output_types(decoder)["logits"]
        self._embedding_inputs = input_types(embedding)
        self.cache = KVCache(text.num_layers, text.num_kv_heads, text.head_dim, context_length, declared[past_key_name(0)],
                             device)
        self.no_features = np.zeros((0, text.hidden_size), self._embedding_inputs["image_features"])
        self._mask = np.ones((1, context_length), np.int64)
        # Decode-step buffers, allocated once: token id in, embedding (on the device: written by
        # the embedding graph, read by the decoder), logits out to the host.
        self._step_id = np.zeros((1, 1), np.int64)
        self._step_embeds = on_device(np.zeros((1, 1, text.hidden_size), self.embeds_type), device)
        self._step_logits_array = np.zeros((1, 1, text.vocab_size), self.logits_type)
        self._step_logits = ort.OrtValue.ortvalue_from_numpy(self._step_logits_array)
        self._keep_last = np.ones(1, np.int64)
        self._step_embedding = embedding.io_binding()
        self._step_embedding.bind_cpu_input("input_ids", self._step_id)
        self._step_embedding.bind_cpu_input("image_features", self.no_features)
        self._step_embedding.bind_cpu_input("audio_features", self.no_features)
        self._step_embedding.bind_ortvalue_output("inputs_embeds", self._step_embeds)
        self._binding = decoder.io_binding()
        self.cache.bind(self._binding)
        # The int8 prompt graph, when loaded, shares the KV cache buffers and the adapter tensors.
        self._int8_binding = prompt_int8.io_binding() if prompt_int8 is not None else None
        if self._int8_binding is not None:
            self.cache.bind(self._int8_binding)
        self.reuse_prefix = not whole_prompts
        self.active_adapter = None
        self.activate(adapters.none)

    @property
    def prefill_precision(self) -> str:
        return "int8" if self.prompt_int8 is not None else "int4"

    def activate(self, adapter: str) -> None:
        """Bind an adapter's tensors (rank-0 tensors for 'none') to the decoder inputs."""
        if adapter != self.active_adapter:
            self.cache.forget()  # the adapter's LoRA shapes every cached key and value
            self.adapters.bind(self._binding, adapter)
            if self._int8_binding is not None:
                self.adapters.bind(self._int8_binding, adapter)
            self.active_adapter = adapter

    def embed(self, input_ids: np.ndarray, image_features=None, audio_features=None) -> np.ndarray:
        """inputs_embeds [1, n, hidden] for token ids [1, n], the placeholder rows replaced by features."""
        return self.embedding.run(["inputs_embeds"], as_declared({
            "input_ids": input_ids,
            "image_features": self.no_features if image_features is None else image_features,
            "audio_features": self.no_features if audio_features is None else audio_features,
        }, self._embedding_inputs))[0]

    def reusable_prefix(self, keys: np.ndarray) -> int:
        """How many leading positions of a prompt with position `keys` (kv_cache.position_keys)
        the cache holds as a fresh prefill would compute them; at least the last position is
        always run again, for its logits."""
        if not self.reuse_prefix:
            return 0
        long_rope = len(keys) > self.text.original_max_position_embeddings
        return min(self.cache.reusable(keys, long_rope), len(keys) - 1)

    def prefill(self, embeds: np.ndarray, start: int = 0, keep: int | None = None, keys: np.ndarray | None = None) -> np.ndarray:
        """Run inputs_embeds [1, n, hidden] at positions start..start+n-1 over the cached prefix;
        return the logits of the last `keep` positions (all by default), [1, keep, vocab].
        `keys` (n of them) say what the positions are computed from, so a later prompt that
        starts the same way can reuse them."""
        count = embeds.shape[1]
        if start + count > self.cache.capacity:
            raise Phi4MMError(f"{start + count} positions do not fit the context of {self.cache.capacity} tokens")
        keep = count if keep is None else keep
        kept = []
        for offset, end in chunk_bounds(self.text, start, count, self.prefill_chunk):
            # This chunk's share of the last `keep` positions; a chunk with none keeps one row, unused.
            wanted = min(end - offset, max(0, end - (count - keep)))
            logits = self._run(embeds[:, offset:end], start + offset, max(wanted, 1), None if keys is None else keys[offset:end])
            if wanted:
                kept.append(logits[:, -wanted:])
        return kept[0] if len(kept) == 1 else np.concatenate(kept, axis=1)

    def _run(self, embeds: np.ndarray, start: int, keep: int, keys: np.ndarray | None) -> np.ndarray:
        count = embeds.shape[1]
        self._will_write(start, start + count)
        use_int8 = self.prompt_int8 is not None and count >= INT8_MIN_POSITIONS
        session, binding = (self.prompt_int8, self._int8_binding) if use_int8 else (self.decoder, self._binding)
        logits = np.empty((1, keep, self.text.vocab_size), self.logits_type)
        binding.bind_cpu_input("logits_to_keep", np.array([keep], np.int64))
        binding.bind_ortvalue_input("attention_mask", ort.OrtValue.ortvalue_from_numpy(self._mask[:, :start + count]))
        binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, dtype=self.embeds_type))
        binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        session.run_with_iobinding(binding)
        self.cache.length = start + count
        self.cache.record(start, keys)
        return logits.astype(np.float32, copy=False)  # sampling works in fp32

    def _will_write(self, start: int, end: int) -> None:
        """Before positions start..end-1 are computed: they no longer hold what they did; and when
        the earlier positions were rotated with the other LongRoPE factors (a run that crosses the
        switch without recomputing from the start) the sequence is mixed: none of it is reusable."""
        self.cache.overwrite_from(start)
        long_rope = end > self.text.original_max_position_embeddings
        if start > 0 and long_rope != self.cache.long_rope:
            self.cache.forget()
        self.cache.long_rope = long_rope

    def step(self, token_id: int) -> np.ndarray:
        """Logits [vocab] after appending one token to the cached sequence. The array is the
        preallocated step buffer: it is valid until the next step (copy it to keep it)."""
        self._step_id[0, 0] = token_id
        self._will_write(self.cache.length, self.cache.length + 1)
        self.embedding.run_with_iobinding(self._step_embedding)
        self._binding.bind_ortvalue_input("attention_mask", ort.OrtValue.ortvalue_from_numpy(self._mask[:, :self.cache.length + 1]))
        self._binding.bind_cpu_input("logits_to_keep", self._keep_last)
        self._binding.bind_ortvalue_input("inputs_embeds", self._step_embeds)
        self._binding.bind_ortvalue_output("logits", self._step_logits)
        self.decoder.run_with_iobinding(self._binding)
        self.cache.length += 1
        self.cache.record(self.cache.length - 1, self._step_id[0])
        return self._step_logits_array[0, -1].astype(np.float32, copy=False)
