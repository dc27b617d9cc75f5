"""Phi4MMEdge: load an artifact folder once, then generate for any number of requests.

    model = Phi4MMEdge.load("artifact/")
    generation = model.generate("Hello", max_new_tokens=32)
    for piece in generation:        # text as it streams
        print(piece, end="")
    generation.result               # a GenerationResult: text, token_ids, adapter, timings, ...

Per request: build the prompt (prompt.py: chat template, placeholders, image and audio
features), choose the adapter (adapters.py), run the token loop (token_loop.py) over the decoder
(decoder.py) and detokenize as it streams (detokenizer.py, generation.py).
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..manifest import Manifest
from ..errors import Phi4MMError
from .adapters import AUTO, AdapterSet, choose_adapter
from .audio import MAX_SECONDS
from .audio_encoder import AudioEncoder
from .detokenizer import StreamingDetokenizer
from .feature_cache import DEFAULT_MAX_BYTES, FeatureCache
from .generation import Generation, Outcome, stream_text
from .graph_contract import check_session
from .kv_cache import position_keys
from .prompt import Prompt, build_prompt, check_fits
from .providers import PROVIDERS, choose_provider, open_session, session_options as default_session_options
from .options import GenerationOptions
from .sampling import Sampling
from .sequence import TextDecoder
from .targets import RUNTIME_TARGETS, TextSessions
from .token_loop import generate_tokens
from .tokenizer import ChatTokenizer
from .verify import verify_artifact
from .vision_encoder import VisionEncoder


class Phi4MMEdge:
    def __init__(self, folder: Path, manifest: Manifest, decoder: TextDecoder, tokenizer: ChatTokenizer, load_ms: float,
                 vision: VisionEncoder | None = None, audio: AudioEncoder | None = None,
                 media_cache_bytes: int = DEFAULT_MAX_BYTES):
        self.folder, self.manifest, self.decoder, self.tokenizer = Path(folder), manifest, decoder, tokenizer
        self.text, self.vision, self.audio, self.load_ms = manifest.model, vision, audio, load_ms
        self.media_cache = FeatureCache(media_cache_bytes)  # encoded images and clips, by content
        self.stop_ids = set(self.text.eos_token_ids)
        self.provider, self.provider_note = "cpu", "CPU"  # set by load()
        # One KV cache and one set of bound adapter tensors: one generation streams at a time.
        self._streaming = threading.Lock()
        self._streaming_thread = None

    @classmethod
    def load(cls, folder, provider: str = "auto", threads: int | None = None, context_length: int | None = None,
             verify: bool | str = True, max_audio_seconds: float = MAX_SECONDS, prefill: str = "auto",
             prefill_chunk: int | None = None, session_options: ort.SessionOptions | None = None,
             preload_encoders: bool = False, media_cache_mb: float = DEFAULT_MAX_BYTES / 2**20) -> "Phi4MMEdge":
        """Open an artifact folder. `provider`: "auto" (QNN for an NPU artifact when onnxruntime-qnn
        is installed, DirectML for a DirectML artifact where it exists, else the CPU;
        `model.provider_note` says which and why), "cpu", "qnn" or "dml". `context_length`
        (prompt + answer tokens) sizes the KV cache;
        audio clips longer than `max_audio_seconds` are refused. `prefill` picks how prompts run:
        'int8' (the artifact's int8 prompt graph), 'int4' (the decode graph) or 'auto' (int8 when
        present and the CPU has a fast int8 GEMM). `verify`: True or "cached" (re-hash changed files,
        all of them weekly), "full" (re-hash every file now) or False. `prefill_chunk` splits long prompts into runs of
        at most that many tokens (none: whole prompts). `session_options` replaces the default
        ONNX Runtime options of every session (then `threads` is not applied). The vision and
        audio encoders open on their first image or clip unless `preload_encoders` (or call
        `open_encoders()` later, e.g. from a background thread). Encoded images and clips are
        kept by content, up to `media_cache_mb` (0: none), so a conversation encodes each once."""
        started = time.perf_counter()
        if not max_audio_seconds > 0:  # NaN too
            raise Phi4MMError(f"max_audio_seconds {max_audio_seconds}: "
                              f"give a number of seconds above 0 (inf: no limit)")
        if isinstance(media_cache_mb, bool) or not isinstance(media_cache_mb, (int, float)) or not media_cache_mb >= 0:
            raise Phi4MMError(f"media_cache_mb {media_cache_mb!r}: give megabytes, 0 or more (0 keeps no media)")
        folder = Path(folder)
        manifest = verify_artifact(folder, {True: "cached", False: "off"}.get(verify, verify))
        maximum = manifest.model.max_position_embeddings
        if context_length is not None and (isinstance(context_length, bool) or not isinstance(context_length, int)
                                           or not 0 < context_length <= maximum):
            raise Phi4MMError(f"context length {context_length!r} is outside 1..{maximum}, the model's maximum")
        options = session_options or default_session_options(threads)
        target = RUNTIME_TARGETS[manifest.target]
        provider, provider_note = choose_provider(provider, target)
        graphs = {"decoder": manifest.graphs.decoder, "embedding": manifest.graphs.embedding,
                  "prompt": target.prompt_graph(prefill, manifest.graphs)}
        # The sessions are created side by side: ONNX Runtime releases the GIL while it reads and
        # prepacks, and the decoder's prepacking (seconds at full size) keeps one core busy alone.
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="phi4mm-load") as pool:
            pending = {name: pool.submit(open_session, folder / graph, options, provider, manifest.data_hashes(graph))
                       for name, graph in graphs.items() if graph is not None}
            tokenizer = pool.submit(ChatTokenizer, folder)
            vision = (VisionEncoder(folder, manifest.vision, options, provider, target.image_graph,
                                    manifest.data_hashes(manifest.vision.graph),
                                    lambda session: check_session(session, manifest.vision.graph, manifest))
                      if manifest.vision else None)
            audio = (AudioEncoder(folder, manifest.audio, options, provider, max_audio_seconds, target.clip_graph,
                                  manifest.data_hashes(manifest.audio.graph),
                                  lambda session: check_session(session, manifest.audio.graph, manifest))
                     if manifest.audio else None)
            encoders = [pool.submit(e.session.open) for e in (vision, audio) if e is not None and preload_encoders]
            opened = {name: check_session(future.result(), graphs[name], manifest) for name, future in pending.items()}
            tokenizer = tokenizer.result()
            for future in encoders:
                future.result()
        sessions = TextSessions(opened["embedding"], opened["decoder"], opened.get("prompt"))
        execution = PROVIDERS[provider]
        adapters = AdapterSet(folder, manifest.adapters, sessions.decoder, execution.device)
        decoder = target.decoder(manifest, sessions, adapters, context_length, prefill_chunk, execution)
        load_ms = (time.perf_counter() - started) * 1000
        model = cls(folder, manifest, decoder, tokenizer, load_ms, vision, audio, int(media_cache_mb * 2**20))
        model.provider, model.provider_note = provider, provider_note
        return model

    def open_encoders(self) -> None:
        """Open the vision and audio encoders' sessions now rather than on first use."""
        for encoder in (self.vision, self.audio):
            if encoder is not None:
                encoder.session.open()

    def clear_cache(self) -> None:
        """Forget the previous conversation: its KV cache (reused by a follow-up that starts the
        same way) and the encoded images and clips."""
        self.decoder.cache.forget()  # a generation streaming meanwhile then records nothing reusable
        self.media_cache.clear()

    # -- adapters ----------------------------------------------------------------------------
    @property
    def adapters(self) -> AdapterSet:
        return self.decoder.adapters

    @property
    def active_adapter(self) -> str | None:
        return self.decoder.active_adapter

    def load_adapter(self, name: str, path) -> None:
        """Add or replace an adapter from an `.onnx_adapter` file, e.g. a LoRA fine-tuned for this
        model. Its tensors must match the decoder's LoRA inputs by name and shape."""
        if name in (AdapterSet.none, "auto"):
            raise Phi4MMError(f"{name!r} is reserved for the adapter choice: pick another name")
        self.adapters.add(name, path)
        if self.decoder.active_adapter == name:
            self.decoder.active_adapter = None  # rebind on the next request

    # -- generation ----------------------------------------------------------------------------
    def _take_model(self) -> None:
        """Wait while another thread's generation streams (they run one after the other); refuse a
        second generation interleaved in the same thread, which would wait forever."""
        if self._streaming_thread == threading.get_ident():
            raise Phi4MMError("another generation of this model is still streaming in this thread: iterate it to the "
                              "end or call its .close() first (or load a second model to run two at once)")
        self._streaming.acquire()
        self._streaming_thread = threading.get_ident()

    def prompt(self, messages, images=(), audios=(), max_crops: int | None = None) -> Prompt:
        """The token ids and media features of a request (see prompt.build_prompt)."""
        return build_prompt(messages, images, audios, self.tokenizer, self.text, self.vision, self.audio,
                            self.decoder.cache.capacity, self.media_cache, max_crops)

    def prompt_ids(self, messages) -> list[int]:
        """The token ids of a text-only prompt."""
        return self.prompt(messages).token_ids

    def generate(self, messages, images=(), audios=(), options: GenerationOptions | None = None,
                 **changes) -> Generation:
        """Stream an answer. `messages` is a string or a list of {role, content}. `images` are paths,
        bytes, PIL images or HxWx3 BGR arrays (<|image_1|> ...); `audios` are paths, bytes or
        (array, sample_rate) pairs (<|audio_1|> ...). `options` (GenerationOptions: max_new_tokens,
        temperature, top_p, top_k, seed, adapter, max_crops), changed by any of those fields given
        as keywords: `generate("Hi", max_new_tokens=32)`. `adapter` is 'auto' (by the media),
        'none' or an adapter of the artifact. `max_crops` caps an image's HD tiling below the
        model's limit (fewer crops: faster, fewer prompt tokens, less detail; see the README).

        A request that starts like the previous one (a chat's history) with the same adapter
        prefills only what is new (`result.cached_prompt_tokens` says how much was reused), and
        images and clips seen before are not encoded again."""
        started = time.perf_counter()
        options = (options or GenerationOptions()).but(**changes)
        if options.adapter != AUTO:
            self.adapters.check(options.adapter)
        prompt = self.prompt(messages, images, audios, options.max_crops)
        adapter = choose_adapter(options.adapter, has_image=prompt.image_features is not None,
                                 has_audio=prompt.audio_features is not None)
        return self._generate(prompt, options.max_new_tokens, options.sampling, adapter, started)

    def generate_from_ids(self, ids: list[int], options: GenerationOptions | None = None, image_features=None,
                          audio_features=None, stop_at_end: bool = True, **changes) -> Generation:
        """Stream an answer to an already tokenized prompt (its placeholder rows filled from the
        feature arrays given). `options` as in generate; the adapter is 'none' unless named
        ('auto' decides by the feature arrays given). `stop_at_end=False` runs to max_new_tokens
        past end tokens (benchmarks time a fixed number of decode steps)."""
        started = time.perf_counter()
        options = (options or GenerationOptions(adapter=AdapterSet.none)).but(**changes)
        try:
            ids = [int(i) for i in ids]
        except (TypeError, ValueError):
            raise Phi4MMError("ids must be a list of token ids (whole numbers)") from None
        prompt = Prompt(ids, image_features, audio_features)
        adapter = choose_adapter(options.adapter, has_image=image_features is not None,
                                 has_audio=audio_features is not None)
        return self._generate(prompt, options.max_new_tokens, options.sampling, adapter, started, stop_at_end)

    def _generate(self, prompt: Prompt, max_new_tokens: int, sampling: Sampling, adapter: str,
                  started: float, stop_at_end: bool = True) -> Generation:
        self.adapters.check(adapter)
        ids, capacity = prompt.token_ids, self.decoder.cache.capacity
        if not ids:
            raise Phi4MMError("the prompt is empty")
        if any(not 0 <= i < self.text.vocab_size for i in ids):
            raise Phi4MMError(f"prompt token ids must be in 0..{self.text.vocab_size - 1}")
        check_fits(len(ids), capacity, self.text)
        outcome = Outcome()
        stops = self.stop_ids if stop_at_end else set()
        tokens = self._tokens(prompt, adapter, sampling.chooser(), max_new_tokens, stops, outcome)
        pieces = stream_text(outcome, tokens, StreamingDetokenizer(self.tokenizer), stops,
                             adapter, len(ids), self.load_ms, started)
        return Generation(pieces, adapter, outcome)

    def _tokens(self, prompt: Prompt, adapter: str, choose, max_new_tokens: int, stop_ids: set[int],
                outcome: Outcome):
        """The token loop over `prompt` with `adapter`, holding the model while it runs."""
        ids = prompt.token_ids
        self._take_model()
        try:
            self.decoder.activate(adapter)
            keys = position_keys(ids, {self.text.image_token_id: prompt.image_features,
                                       self.text.audio_token_id: prompt.audio_features},
                                 {self.text.image_token_id: prompt.image_keys,
                                  self.text.audio_token_id: prompt.audio_keys})
            reused = self.decoder.reusable_prefix(keys)
            outcome.cached_prompt_tokens = reused
            embeds = self.decoder.embed(np.array([ids], np.int64), prompt.image_features, prompt.audio_features)
            yield from generate_tokens(self.decoder, embeds, keys, reused, choose, max_new_tokens, stop_ids)
        finally:
            self._streaming_thread = None
            self._streaming.release()

    def forced_logits(self, prompt: Prompt, forced_ids: list[int], adapter: str = AUTO) -> np.ndarray:
        """Teacher forcing: the next-token logits [len(forced_ids), vocab] before each of
        `forced_ids`, the answer fed token by token as generation feeds its own choices (the same
        prompt graph, cache and decode steps; a prompt that starts like the previous one reuses
        the cache). `prompt` from `Phi4MMEdge.prompt`; adapter 'auto' decides by its media."""
        adapter = choose_adapter(adapter, has_image=prompt.image_features is not None,
                                 has_audio=prompt.audio_features is not None)
        self.adapters.check(adapter)
        forced = [int(i) for i in forced_ids]
        if not forced or any(not 0 <= i < self.text.vocab_size for i in forced + prompt.token_ids):
            raise Phi4MMError(f"forced ids must be a non-empty list of ids in 0..{self.text.vocab_size - 1}")
        check_fits(len(prompt.token_ids) + len(forced), self.decoder.cache.capacity, self.text)
        rows, upcoming = [], iter(forced)

        def choose(logits: np.ndarray) -> int:
            rows.append(np.array(logits, np.float32))
            return next(upcoming)
        for _ in self._tokens(prompt, adapter, choose, len(forced), set(), Outcome()):
            pass
        return np.stack(rows)
