"""The language model as ONNX Runtime runs it: embedding.onnx, decoder.onnx (and, when chosen, the
int8 prompt graph decoder_prefill.onnx) over one KV cache, with an adapter's tensors bound.

Two ways to advance the cached sequence: `prefill` runs many positions at once (a prompt; in
chunks when asked), `step` appends one token through preallocated buffers (decoding). Both run
through IOBinding; the KV cache buffers are both past input and present output. The cache, the
adapters' tensors and the step's embedding row live on the sessions' device (device.py). What
the cache holds and how a run extends it (the prefix reuse, the chunks, LongRoPE's switch) is
sequence.py's CachedSequence, which the NPU decoder holds too.
"""

import numpy as np
import onnxruntime as ort

from ..artifact import (ATTENTION_MASK, AUDIO_FEATURES, IMAGE_FEATURES, INPUT_IDS, INPUTS_EMBEDS, LOGITS,
                        LOGITS_TO_KEEP, past_key_name)
from ..manifest import TextConfig
from ..errors import Phi4MMError
from .adapters import AdapterSet
from .device import on_device
from .kv_cache import KVCache
from .providers import CPU, PROVIDERS, ExecutionProvider
from .sequence import CachedSequence
from .tensor_types import as_declared, input_types, output_types

DEFAULT_CONTEXT = 4096  # tokens of KV cache allocated at load; --context raises it up to the model's maximum
# Runs of at least this many positions go through the int8 prompt graph when it is loaded: below
# it the int4 kernels win (the int8 GEMM reads twice the bytes; measured crossover 32-64 rows).
INT8_MIN_POSITIONS = 64


class Decoder:
    """The text model's sessions, bindings and KV cache for one sequence at a time (a TextDecoder)."""

    def __init__(self, text: TextConfig, embedding: ort.InferenceSession, decoder: ort.InferenceSession,
                 adapters: AdapterSet, context_length: int | None = None,
                 int8_prompt: ort.InferenceSession | None = None, prefill_chunk: int | None = None,
                 provider: ExecutionProvider = PROVIDERS[CPU]):
        """`context_length`: positions of KV cache (None: DEFAULT_CONTEXT, at most the model's maximum).
        `provider`: the sessions' row in providers.PROVIDERS (where the tensors live, whether prompts run whole)."""
        if prefill_chunk is not None and prefill_chunk < 1:
            raise Phi4MMError(f"prefill chunk {prefill_chunk}: give at least 1 token (or none for whole prompts)")
        if provider.whole_prompts and prefill_chunk is not None:
            raise Phi4MMError(f"{provider.whole_prompts}: load without --prefill-chunk")
        if context_length is None:
            context_length = min(DEFAULT_CONTEXT, text.max_position_embeddings)
        self.text, self.adapters = text, adapters
        self.embedding, self.decoder, self.int8_prompt = embedding, decoder, int8_prompt
        device = provider.device
        # The graphs' element types: fp32, or fp16 activations and KV cache (a DirectML artifact).
        declared = input_types(decoder)
        self.embeds_type, self.logits_type = declared[INPUTS_EMBEDS], output_types(decoder)[LOGITS]
        self._embedding_inputs = input_types(embedding)
        self.cache = KVCache(text.num_layers, text.num_kv_heads, text.head_dim, context_length,
                             declared[past_key_name(0)], device)
        self.no_features = np.zeros((0, text.hidden_size), self._embedding_inputs[IMAGE_FEATURES])
        self._mask = np.ones((1, context_length), np.int64)
        # Decode-step buffers, allocated once: token id in, embedding (on the device: written by
        # the embedding graph, read by the decoder), logits out to the host.
        self._step_id = np.zeros((1, 1), np.int64)
        self._step_embeds = on_device(np.zeros((1, 1, text.hidden_size), self.embeds_type), device)
        self._step_logits_array = np.zeros((1, 1, text.vocab_size), self.logits_type)
        self._step_logits = ort.OrtValue.ortvalue_from_numpy(self._step_logits_array)
        self._keep_last = np.ones(1, np.int64)
        self._step_embedding = embedding.io_binding()
        self._step_embedding.bind_cpu_input(INPUT_IDS, self._step_id)
        self._step_embedding.bind_cpu_input(IMAGE_FEATURES, self.no_features)
        self._step_embedding.bind_cpu_input(AUDIO_FEATURES, self.no_features)
        self._step_embedding.bind_ortvalue_output(INPUTS_EMBEDS, self._step_embeds)
        self._binding = decoder.io_binding()
        self.cache.bind(self._binding)
        # The int8 prompt graph, when loaded, shares the KV cache buffers and the adapter tensors.
        self._int8_binding = int8_prompt.io_binding() if int8_prompt is not None else None
        if self._int8_binding is not None:
            self.cache.bind(self._int8_binding)
        bindings = [b for b in (self._binding, self._int8_binding) if b is not None]
        self.sequence = CachedSequence(text, self.cache, adapters, bindings, reuse_prefix=not provider.whole_prompts,
                                       prefill_chunk=prefill_chunk)

    @property
    def prefill_precision(self) -> str:
        return "int8" if self.int8_prompt is not None else "int4"

    @property
    def active_adapter(self) -> str | None:
        return self.sequence.active_adapter

    @active_adapter.setter
    def active_adapter(self, adapter: str | None) -> None:
        self.sequence.active_adapter = adapter

    def activate(self, adapter: str) -> None:
        """Bind an adapter's tensors (rank-0 tensors for 'none') to the decoder inputs."""
        self.sequence.activate(adapter)

    def embed(self, input_ids: np.ndarray, image_features=None, audio_features=None) -> np.ndarray:
        """inputs_embeds [1, n, hidden] for token ids [1, n], the placeholder rows replaced by features."""
        return self.embedding.run([INPUTS_EMBEDS], as_declared({
            INPUT_IDS: input_ids,
            IMAGE_FEATURES: self.no_features if image_features is None else image_features,
            AUDIO_FEATURES: self.no_features if audio_features is None else audio_features,
        }, self._embedding_inputs))[0]

    def reusable_prefix(self, keys: np.ndarray) -> int:
        """How many leading positions of a prompt with position `keys` (kv_cache.position_keys) the
        cache holds as a fresh prefill would compute them (CachedSequence.reusable_prefix)."""
        return self.sequence.reusable_prefix(keys)

    def prefill(self, embeds: np.ndarray, start: int = 0, keep: int | None = None,
                keys: np.ndarray | None = None) -> np.ndarray:
        """Run inputs_embeds [1, n, hidden] at positions start..start+n-1 over the cached prefix;
        return the logits of the last `keep` positions (all by default), [1, keep, vocab].
        `keys` (n of them) say what the positions are computed from, so a later prompt that
        starts the same way can reuse them."""
        return self.sequence.prefill(embeds, start, keep, keys, self._run)

    def step(self, token_id: int) -> np.ndarray:
        """Logits [vocab] after appending one token to the cached sequence. The array is the
        preallocated step buffer: it is valid until the next step (copy it to keep it)."""
        return self.sequence.step(token_id, self._run_step)

    def _run(self, embeds: np.ndarray, start: int, keep: int) -> np.ndarray:
        """One run of positions start..start+n-1: the int8 prompt graph for a long one, when loaded."""
        count = embeds.shape[1]
        use_int8 = self.int8_prompt is not None and count >= INT8_MIN_POSITIONS
        session, binding = (self.int8_prompt, self._int8_binding) if use_int8 else (self.decoder, self._binding)
        logits = np.empty((1, keep, self.text.vocab_size), self.logits_type)
        binding.bind_cpu_input(LOGITS_TO_KEEP, np.array([keep], np.int64))
        binding.bind_ortvalue_input(ATTENTION_MASK, ort.OrtValue.ortvalue_from_numpy(self._mask[:, :start + count]))
        binding.bind_cpu_input(INPUTS_EMBEDS, np.ascontiguousarray(embeds, dtype=self.embeds_type))
        binding.bind_ortvalue_output(LOGITS, ort.OrtValue.ortvalue_from_numpy(logits))
        session.run_with_iobinding(binding)
        return logits.astype(np.float32, copy=False)  # sampling works in fp32

    def _run_step(self, token_id: int, position: int) -> np.ndarray:
        """The token at `position` through the preallocated step buffers."""
        self._step_id[0, 0] = token_id
        self.embedding.run_with_iobinding(self._step_embedding)
        mask = ort.OrtValue.ortvalue_from_numpy(self._mask[:, :position + 1])
        self._binding.bind_ortvalue_input(ATTENTION_MASK, mask)
        self._binding.bind_cpu_input(LOGITS_TO_KEEP, self._keep_last)
        self._binding.bind_ortvalue_input(INPUTS_EMBEDS, self._step_embeds)
        self._binding.bind_ortvalue_output(LOGITS, self._step_logits)
        self.decoder.run_with_iobinding(self._binding)
        return self._step_logits_array[0, -1].astype(np.float32, copy=False)
