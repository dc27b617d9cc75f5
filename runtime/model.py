"""Phi4MMEdge: load an artifact folder once, then generate for any number of requests.

    model = Phi4MMEdge.load("artifact/")
    generation = model.generate("Hello", max_new_tokens=32)
    for piece in generation:        # text as it streams
        print(piece, end="")
    generation.result               # text, token_ids, adapter, prompt_tokens, timings

Per request: the prompt is rendered with the artifact's chat template, embedded
(embedding.onnx), prefilled and decoded one token at a time (decoder.onnx) through IOBinding
over a KV cache allocated once, with the chosen adapter's tensors bound as decoder inputs.
"""

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..artifact import DECODER_GRAPH, EMBEDDING_GRAPH, PREFILL_GRAPH, read_manifest
from ..errors import Phi4MMError
from .adapters import NONE, AdapterSet
from .audio import MAX_SECONDS
from .chat import ChatTokenizer
from .cpu import choose_prefill
from .kv_cache import KVCache
from .prompt import PLACEHOLDER, expand, place_media
from .providers import open_session, session_options
from .sampling import choose_token
from .verify import verify_artifact
from .speech import SpeechEncoder
from .vision import VisionEncoder

DEFAULT_CONTEXT = 4096  # tokens of KV cache allocated at load; --context raises it up to the model's maximum
# Runs of at least this many positions go through the int8 prefill graph when it is chosen: below
# it the int4 kernels win (the int8 GEMM reads twice the bytes; measured crossover 32-64 rows).
PREFILL_MIN_POSITIONS = 64


def route(adapter: str, has_image: bool = False, has_audio: bool = False) -> str:
    """The adapter a request runs with. `auto`: image -> vision, audio alone -> speech, text -> none."""
    if adapter != "auto":
        return adapter
    if has_image:
        return "vision"
    return "speech" if has_audio else NONE


class Generation:
    """An iterator over streamed text pieces; `.result` is filled once it is exhausted."""

    def __init__(self, pieces):
        self._pieces = pieces
        self.result = None

    def __iter__(self):
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def text(self) -> str:
        """Run to the end and return the whole answer."""
        for _ in self:
            pass
        return self.result["text"]


class Phi4MMEdge:
    def __init__(self, folder, manifest, embedding, decoder, tokenizer, adapters, context_length, load_ms, vision=None,
                 speech=None, prefill=None, prefill_chunk: int | None = None):
        self.folder, self.manifest = Path(folder), manifest
        self.embedding, self.decoder, self.vision, self.speech = embedding, decoder, vision, speech
        self.tokenizer, self.adapters = tokenizer, adapters
        self.model = manifest["model"]
        self.eos_ids = set(self.model["eos_token_ids"])
        self.cache = KVCache(self.model["num_layers"], self.model["num_kv_heads"], self.model["head_dim"], context_length)
        self.load_ms = load_ms
        hidden = self.model["hidden_size"]
        self._no_features = np.zeros((0, hidden), np.float32)
        # Decode-step buffers, allocated once: token id in, embedding, logits out.
        self._step_id = np.zeros((1, 1), np.int64)
        self._step_embeds = np.zeros((1, 1, hidden), np.float32)
        self._step_logits = np.zeros((1, 1, self.model["vocab_size"]), np.float32)
        self._mask = np.ones((1, context_length), np.int64)
        self._keep_last = np.ones(1, np.int64)
        self._step_embeds_value = ort.OrtValue.ortvalue_from_numpy(self._step_embeds)
        self._step_logits_value = ort.OrtValue.ortvalue_from_numpy(self._step_logits)
        self._embed_binding = embedding.io_binding()
        self._embed_binding.bind_cpu_input("input_ids", self._step_id)
        self._embed_binding.bind_cpu_input("image_features", self._no_features)
        self._embed_binding.bind_cpu_input("audio_features", self._no_features)
        self._embed_binding.bind_ortvalue_output("inputs_embeds", self._step_embeds_value)
        self._binding = decoder.io_binding()
        self.cache.bind(self._binding)
        # The int8 prefill graph, when chosen, shares the KV cache buffers and the adapter tensors.
        self.prefill = prefill
        self.prefill_path = "int8" if prefill is not None else "int4"
        self._prefill_binding = prefill.io_binding() if prefill is not None else None
        if prefill is not None:
            self.cache.bind(self._prefill_binding)
        if prefill_chunk is not None and prefill_chunk < 1:
            raise Phi4MMError(f"prefill chunk {prefill_chunk}: give at least 1 token (or none for whole prompts)")
        self.prefill_chunk = prefill_chunk
        self.active_adapter = None
        self.activate(NONE)

    @classmethod
    def load(cls, folder, provider: str = "cpu", threads: int | None = None, context_length: int | None = None,
             verify: bool = True, max_audio_seconds: float = MAX_SECONDS, prefill: str = "auto",
             prefill_chunk: int | None = None) -> "Phi4MMEdge":
        """Open an artifact folder. `context_length` (prompt + answer tokens) sizes the KV cache;
        longer audio clips than `max_audio_seconds` are refused. `prefill` picks how prompts run:
        'int8' (the artifact's decoder_prefill.onnx), 'int4' (the decode graph) or 'auto' (int8
        when present and the CPU has a fast int8 GEMM). `prefill_chunk` splits long prompts into
        runs of at most that many tokens (none: whole prompts)."""
        started = time.perf_counter()
        folder = Path(folder)
        manifest = verify_artifact(folder) if verify else read_manifest(folder)
        maximum = manifest["model"]["max_position_embeddings"]
        context_length = context_length or min(DEFAULT_CONTEXT, maximum)
        if not 0 < context_length <= maximum:
            raise Phi4MMError(f"context length {context_length} is outside 1..{maximum}, the model's maximum")
        options = session_options(threads)
        embedding = open_session(folder / EMBEDDING_GRAPH, options, provider)
        decoder = open_session(folder / DECODER_GRAPH, options, provider)
        path = choose_prefill(prefill, "prefill" in manifest.get("graphs", {}))
        prefill_session = open_session(folder / PREFILL_GRAPH, options, provider) if path == "int8" else None
        tokenizer = ChatTokenizer(folder)
        adapters = AdapterSet(folder, manifest.get("adapters", {}), decoder)
        vision = VisionEncoder(folder, manifest["vision"], options, provider) if manifest.get("vision") else None
        speech = SpeechEncoder(folder, manifest["speech"], options, provider, max_audio_seconds) if manifest.get("speech") else None
        load_ms = (time.perf_counter() - started) * 1000
        return cls(folder, manifest, embedding, decoder, tokenizer, adapters, context_length, load_ms, vision, speech,
                   prefill_session, prefill_chunk)

    # -- adapters ----------------------------------------------------------------------------
    def load_adapter(self, name: str, path) -> None:
        """Add or replace an adapter from an `.onnx_adapter` file, e.g. a LoRA fine-tuned for this
        model. Its tensors must match the decoder's LoRA inputs by name and shape."""
        if name == NONE:
            raise Phi4MMError("'none' is reserved for running without an adapter: pick another name")
        self.adapters.add(name, path)
        if self.active_adapter == name:
            self.active_adapter = None  # rebind on the next request

    def activate(self, adapter: str) -> None:
        """Bind an adapter's tensors (or rank-0 tensors for 'none') to the decoder inputs."""
        if adapter != self.active_adapter:
            self.adapters.bind(self._binding, adapter)
            if self._prefill_binding is not None:
                self.adapters.bind(self._prefill_binding, adapter)
            self.active_adapter = adapter

    # -- the forward passes --------------------------------------------------------------------
    def embed(self, input_ids: np.ndarray, image_features=None, audio_features=None) -> np.ndarray:
        """inputs_embeds [1, n, hidden] for token ids [1, n]."""
        return self.embedding.run(["inputs_embeds"], {
            "input_ids": input_ids,
            "image_features": self._no_features if image_features is None else image_features,
            "audio_features": self._no_features if audio_features is None else audio_features,
        })[0]

    def run_positions(self, embeds: np.ndarray, start: int = 0, keep: int | None = None) -> np.ndarray:
        """Run inputs_embeds [1, n, hidden] at positions start..start+n-1 over the cached prefix;
        return the logits of the last `keep` positions (all by default), [1, keep, vocab]."""
        count = embeds.shape[1]
        if start + count > self.cache.capacity:
            raise Phi4MMError(f"{start + count} positions do not fit the context of {self.cache.capacity} tokens")
        keep = count if keep is None else keep
        chunk = self.prefill_chunk or count
        # LongRoPE picks its factors from the total length, for every position: a chunk must not
        # end at or below the switch while the run goes past it, so the first one reaches past it.
        switch = self.model["original_max_position_embeddings"]
        first = max(chunk, switch + 1 - start) if start <= switch < start + count else chunk
        bounds = [0, *range(first, count, chunk)]
        kept = []
        for offset, end in zip(bounds, [*bounds[1:], count]):
            part = embeds[:, offset:end]
            # This chunk's share of the last `keep` positions; a chunk with none keeps one row, unused.
            wanted = min(part.shape[1], max(0, offset + part.shape[1] - (count - keep)))
            logits = self._run(part, start + offset, max(wanted, 1))
            if wanted:
                kept.append(logits[:, -wanted:])
        return kept[0] if len(kept) == 1 else np.concatenate(kept, axis=1)

    def _run(self, embeds: np.ndarray, start: int, keep: int) -> np.ndarray:
        count = embeds.shape[1]
        use_prefill = self.prefill is not None and count >= PREFILL_MIN_POSITIONS
        session, b = (self.prefill, self._prefill_binding) if use_prefill else (self.decoder, self._binding)
        logits = np.empty((1, keep, self.model["vocab_size"]), np.float32)
        b.bind_cpu_input("logits_to_keep", np.array([keep], np.int64))
        b.bind_ortvalue_input("attention_mask", ort.OrtValue.ortvalue_from_numpy(self._mask[:, :start + count]))
        b.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, dtype=np.float32))
        b.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        session.run_with_iobinding(b)
        self.cache.length = start + count
        return logits

    def step_logits(self, token_id: int) -> np.ndarray:
        """Logits [vocab] after appending one token to the cached sequence. The array is the
        preallocated step buffer: it is valid until the next step (copy it to keep it)."""
        self._step_id[0, 0] = token_id
        self.embedding.run_with_iobinding(self._embed_binding)
        self._binding.bind_ortvalue_input("attention_mask", ort.OrtValue.ortvalue_from_numpy(self._mask[:, :self.cache.length + 1]))
        self._binding.bind_cpu_input("logits_to_keep", self._keep_last)
        self._binding.bind_ortvalue_input("inputs_embeds", self._step_embeds_value)
        self._binding.bind_ortvalue_output("logits", self._step_logits_value)
        self.decoder.run_with_iobinding(self._binding)
        self.cache.length += 1
        return self._step_logits[0, -1]

    # -- generation ----------------------------------------------------------------------------
    def prompt_ids(self, messages) -> list[int]:
        return self.tokenizer.encode(self.tokenizer.render(messages))

    def prepare_prompt(self, messages, images=(), audios=()):
        """Token ids with the placeholders expanded, and the image and audio feature rows in prompt
        order: (ids, image_features or None, audio_features or None)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        images, audios = list(images or []), list(audios or [])
        if images and self.vision is None:
            raise Phi4MMError("this artifact has no vision.onnx: re-export it from a checkpoint with the vision encoder")
        if audios and self.speech is None:
            raise Phi4MMError("this artifact has no speech.onnx: re-export it from a checkpoint with the speech encoder")
        prepared = {"image": [self.vision.prepare(image) for image in images],
                    "audio": [self.speech.prepare(audio) for audio in audios]}
        text = self.tokenizer.render(place_media(list(messages), len(images), len(audios)))
        order = {kind: [int(n) for k, n in PLACEHOLDER.findall(text) if k == kind] for kind in prepared}
        token_ids = {"image": self.model["image_token_id"], "audio": self.model["audio_token_id"]}
        token_strings = {kind: self.tokenizer.tokenizer.id_to_token(token_ids[kind]) for kind in prepared}
        text = expand(text, token_strings, {kind: [p.num_tokens for p in items] for kind, items in prepared.items()})
        ids = self.tokenizer.encode(text)
        # Audio heard together with an image uses the vision-mode projection, as the reference does.
        encode = {"image": lambda item: self.vision.features(item),
                  "audio": lambda item: self.speech.features(item, vision_mode=bool(images))}
        features = {}
        for kind, items in prepared.items():
            rows = {n: encode[kind](items[n - 1]) for n in sorted(set(order[kind]))}
            features[kind] = np.concatenate([rows[n] for n in order[kind]]) if items else None
            expected = 0 if features[kind] is None else features[kind].shape[0]
            if ids.count(token_ids[kind]) != expected:
                raise Phi4MMError(f"the prompt text contains the {kind} placeholder token {token_strings[kind]!r} itself: "
                                  f"refer to {kind}s with <|{kind}_N|> and pass them as {kind}s")
        return ids, features["image"], features["audio"]

    def generate(self, messages, images=(), audios=(), max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int | None = None, adapter: str = "auto") -> Generation:
        """Stream an answer. `messages` is a string or a list of {role, content}. `images` are paths,
        bytes, PIL images or HxWx3 BGR arrays (<|image_1|> ...); `audios` are paths, bytes or
        (array, sample_rate) pairs (<|audio_1|> ...)."""
        started = time.perf_counter()
        ids, image_features, audio_features = self.prepare_prompt(messages, images, audios)
        adapter = route(adapter, has_image=image_features is not None, has_audio=audio_features is not None)
        return self.generate_from_ids(ids, max_new_tokens, temperature, top_p, top_k, seed, adapter,
                                      image_features=image_features, audio_features=audio_features, started=started)

    def generate_from_ids(self, ids: list[int], max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                          top_k: int = 0, seed: int | None = None, adapter: str = NONE, image_features=None,
                          audio_features=None, started: float | None = None) -> Generation:
        """Stream an answer to an already tokenized prompt, with an explicit adapter."""
        if adapter != NONE and adapter not in self.adapters.names():
            raise Phi4MMError(f"adapter {adapter!r} is not in this artifact; it has {self.adapters.names()}")
        ids = [int(i) for i in ids]
        if len(ids) >= self.cache.capacity:
            raise Phi4MMError(
                f"the prompt is {len(ids)} tokens, the context holds {self.cache.capacity}: shorten the prompt or "
                f"load with a larger context_length (--context, at most {self.model['max_position_embeddings']})"
            )
        if max_new_tokens < 1:
            raise Phi4MMError("max_new_tokens must be at least 1")
        if not ids:
            raise Phi4MMError("the prompt is empty")
        generation = Generation(None)
        generation._pieces = self._stream(generation, ids, max_new_tokens, temperature, top_p, top_k, seed, adapter,
                                          image_features, audio_features, started or time.perf_counter())
        return generation

    def _stream(self, generation, ids, max_new_tokens, temperature, top_p, top_k, seed, adapter, image_features,
                audio_features, started):
        rng = np.random.default_rng(seed)
        self.activate(adapter)
        prompt_embeds = self.embed(np.array([ids], np.int64), image_features, audio_features)
        logits = self.run_positions(prompt_embeds, keep=1)[0, -1]
        switch = self.model["original_max_position_embeddings"]
        generated, first_token_at = [], None
        shown, prefix, read = "", 0, 0  # incremental detokenization window over `generated`
        while True:
            token = choose_token(logits, temperature, top_k, top_p, rng)
            if first_token_at is None:
                first_token_at = time.perf_counter()
            generated.append(token)  # an eos id is kept in token_ids (it was generated) but never shown
            if token in self.eos_ids:
                finish = "stop"
                break
            # Decode only a short window: the tokens since the last emitted piece, plus the ones
            # before it for context; hold back while the window ends in an incomplete UTF-8 sequence.
            before, after = self.tokenizer.decode(generated[prefix:read]), self.tokenizer.decode(generated[prefix:])
            if len(after) > len(before) and not after.endswith("\ufffd"):
                piece = after[len(before):]
                shown += piece
                prefix, read = read, len(generated)
                yield piece
            total = len(ids) + len(generated)
            if len(generated) >= max_new_tokens or total >= self.cache.capacity:
                finish = "length"
                break
            if total - 1 <= switch < total:
                # The sequence crosses LongRoPE's switch: the long factors now apply to every
                # position, so the cache is recomputed from the start, as the reference does.
                all_embeds = np.concatenate([prompt_embeds, self.embed(np.array([generated], np.int64))], axis=1)
                logits = self.run_positions(all_embeds, keep=1)[0, -1]
            else:
                logits = self.step_logits(token)
        finished = time.perf_counter()
        text = self.tokenizer.decode(generated)
        if text.startswith(shown) and text != shown:
            yield text[len(shown):]
        decode_s = finished - first_token_at
        generation.result = {
            "text": text,
            "token_ids": generated,
            "adapter": adapter,
            "prompt_tokens": len(ids),
            "finish_reason": finish,
            "timings": {
                "load_ms": round(self.load_ms, 2),
                "ttft_ms": round((first_token_at - started) * 1000, 2),
                "decode_tokens_per_s": round((len(generated) - 1) / decode_s, 2) if len(generated) > 1 and decode_s > 0 else None,
            },
        }
