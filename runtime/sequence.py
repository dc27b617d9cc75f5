"""The one sequence a text decoder holds in its KV cache, and the rules for growing it, written once
for both decoders (decoder.py over the dynamic graphs, npu_decoder.py over the NPU's static ones):
which leading positions of a prompt the cache already holds, how a prompt is cut into runs,
what the cache records after a run, and that a new adapter invalidates it all.

LongRoPE: past `original_max_position_embeddings` total positions, the model rotates *every*
position with the long factors, so a sequence that grows past that switch must be recomputed
from its start. `crosses_longrope_switch` is that rule, the only place it is written.
"""

from collections.abc import Callable, Iterable
from typing import Protocol

import numpy as np
import onnxruntime as ort

from ..errors import Phi4MMError
from ..manifest import TextConfig
from .adapters import AdapterSet
from .kv_cache import KVCache


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


class TextDecoder(Protocol):
    """What the token loop and Phi4MMEdge use of a text decoder: Decoder and NpuDecoder."""

    text: TextConfig
    cache: KVCache
    adapters: AdapterSet
    active_adapter: str | None  # None: the next activate binds whatever it is given

    @property
    def prefill_precision(self) -> str:
        """How prompts run: "int8", "int4" or "npu"."""

    def activate(self, adapter: str) -> None:
        """Bind an adapter's tensors to the graphs (the cached sequence is forgotten on a change)."""

    def embed(self, input_ids: np.ndarray, image_features=None, audio_features=None) -> np.ndarray:
        """inputs_embeds [1, n, hidden] for token ids [1, n], the placeholder rows replaced by features."""

    def reusable_prefix(self, keys: np.ndarray) -> int:
        """How many leading positions of a prompt with position `keys` the cache already holds."""

    def prefill(self, embeds: np.ndarray, start: int = 0, keep: int | None = None,
                keys: np.ndarray | None = None) -> np.ndarray:
        """The logits [1, keep, vocab] of the last `keep` positions after running `embeds` from `start`."""

    def step(self, token_id: int) -> np.ndarray:
        """Logits [vocab] after appending one token to the cached sequence."""


# A decoder's graphs run without bookkeeping: (inputs_embeds piece, its first position, logits to keep) -> logits.
RunGraphs = Callable[[np.ndarray, int, int], np.ndarray]


class CachedSequence:
    """The KV cache's sequence: what its positions were computed from, with which adapter (bound to
    `bindings`, the graphs that write the cache), and how prompts and steps extend it. A decoder
    holds one and gives it the function that runs its graphs."""

    def __init__(self, text: TextConfig, cache: KVCache, adapters: AdapterSet, bindings: Iterable[ort.IOBinding],
                 reuse_prefix: bool = True, prefill_chunk: int | None = None):
        """`reuse_prefix` False: every prompt runs whole from position 0. `prefill_chunk`: the
        longest run a prompt is cut into (None: whole prompts)."""
        self.text, self.cache, self.adapters = text, cache, adapters
        self.reuse_prefix, self.prefill_chunk = reuse_prefix, prefill_chunk
        self._bindings = list(bindings)
        self.active_adapter = None
        self.activate(adapters.none)

    def activate(self, adapter: str) -> None:
        """Bind an adapter's tensors (rank-0 tensors for 'none') to every graph that writes the cache."""
        if adapter != self.active_adapter:
            self.cache.forget()  # the adapter's LoRA shapes every cached key and value
            for binding in self._bindings:
                self.adapters.bind(binding, adapter)
            self.active_adapter = adapter

    def reusable_prefix(self, keys: np.ndarray) -> int:
        """How many leading positions of a prompt with position `keys` (kv_cache.position_keys)
        the cache holds as a fresh prefill would compute them; at least the last position is
        always run again, for its logits."""
        if not self.reuse_prefix:
            return 0
        long_rope = len(keys) > self.text.original_max_position_embeddings
        return min(self.cache.reusable(keys, long_rope), len(keys) - 1)

    def prefill(self, embeds: np.ndarray, start: int, keep: int | None, keys: np.ndarray | None,
                run: RunGraphs) -> np.ndarray:
        """Run inputs_embeds [1, n, hidden] at positions start..start+n-1 through `run`, in pieces
        of at most `prefill_chunk`; return the logits of the last `keep` positions (all when None),
        [1, keep, vocab]. `keys` (n of them) say what the positions are computed from."""
        count = embeds.shape[1]
        if start + count > self.cache.capacity:
            raise Phi4MMError(f"{start + count} positions do not fit the context of {self.cache.capacity} tokens")
        keep = count if keep is None else keep
        kept = []
        for offset, end in chunk_bounds(self.text, start, count, self.prefill_chunk):
            # This piece's share of the last `keep` positions; a piece with none keeps one row, unused.
            wanted = min(end - offset, max(0, end - (count - keep)))
            self._will_write(start + offset, start + end)
            logits = run(embeds[:, offset:end], start + offset, max(wanted, 1))
            self._wrote(start + offset, start + end, None if keys is None else keys[offset:end])
            if wanted:
                kept.append(logits[:, -wanted:])
        return kept[0] if len(kept) == 1 else np.concatenate(kept, axis=1)

    def step(self, token_id: int, run: Callable[[int, int], np.ndarray]) -> np.ndarray:
        """Append one token through `run(token_id, position)`; return what it returns (the logits)."""
        start = self.cache.length
        self._will_write(start, start + 1)
        logits = run(token_id, start)
        self._wrote(start, start + 1, np.array([token_id], np.int64))
        return logits

    def _will_write(self, start: int, end: int) -> None:
        """Before positions start..end-1 are computed: they no longer hold what they did; and when
        the earlier positions were rotated with the other LongRoPE factors (a run that crosses the
        switch without recomputing from the start) the sequence is mixed: none of it is reusable."""
        self.cache.overwrite_from(start)
        long_rope = end > self.text.original_max_position_embeddings
        if start > 0 and long_rope != self.cache.long_rope:
            self.cache.forget()
        self.cache.long_rope = long_rope

    def _wrote(self, start: int, end: int, keys: np.ndarray | None) -> None:
        """Positions start..end-1 were computed from `keys` (None: not known, not reusable)."""
        self.cache.length = end
        self.cache.record(start, keys)
