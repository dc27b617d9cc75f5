"""The KV cache: one key and one value buffer per layer, allocated once at the context length.

GroupQueryAttention reads past keys from and writes present keys into the same buffer when
both are bound to it, so nothing is copied or reallocated per token. The buffers live on the
sessions' device (device.py): numpy arrays on the CPU, device memory on a GPU.

The cache also remembers what its positions were computed from (`keys`: a token id, or a digest
of the image/audio feature row placed there), with which adapter and which LongRoPE factors, so
a follow-up prompt that starts like the cached sequence prefills only what is new. A causal
model's keys and values at a position depend only on the inputs up to it, so the reused
positions hold exactly what a fresh prefill would compute on the same path.
"""

import hashlib

import numpy as np
import onnxruntime as ort

from ..artifact import past_key_name, past_value_name, present_key_name, present_value_name
from ..errors import Phi4MMError
from .device import on_device


def row_keys(features: np.ndarray) -> np.ndarray:
    """A negative 63-bit digest per feature row (token ids are never negative)."""
    rows = np.ascontiguousarray(features, dtype=np.float32)
    digests = [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") >> 1 for row in rows]
    return -1 - np.array(digests, np.int64)


ROW_KEY_SPAN = 1 << 62  # item row keys lie in -2^62..-1: never a token id


def item_row_keys(content_key: bytes, features: np.ndarray) -> np.ndarray:
    """Negative keys for the feature rows of one image or clip whose encoder input has the digest
    `content_key` (feature_cache.py): the same input gives the same rows, so the item's digest
    plus the row's index names each row without hashing its values again (a 16-crop frame's
    3918 rows x 3072 floats took ~100 ms to hash)."""
    base = int.from_bytes(content_key[:8], "little") % ROW_KEY_SPAN
    return -1 - ((base + np.arange(len(features), dtype=np.int64)) % ROW_KEY_SPAN)


def position_keys(ids, media: dict[int, np.ndarray | None], known: dict[int, np.ndarray | None] | None = None) -> np.ndarray:
    """What each prompt position is computed from: its token id, or for a media placeholder token
    (a key of `media`: token id -> feature rows, in prompt order) its row's key: from `known`
    (token id -> row keys, as build_prompt derives them) when given, else a digest of the row."""
    ids = np.asarray(ids, np.int64)
    keys = ids.copy()
    for token_id, features in media.items():
        if features is None:
            continue
        where = np.flatnonzero(ids == token_id)
        if len(where) != len(features):
            raise Phi4MMError(f"the prompt has {len(where)} placeholder tokens {token_id} for {len(features)} feature rows")
        given = (known or {}).get(token_id)
        keys[where] = given if given is not None else row_keys(features)
    return keys


class KVCache:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, capacity: int, dtype=np.float32,
                 device: str = "cpu"):
        self.capacity = capacity
        self.length = 0  # positions currently held (what attention sees)
        self.keys = np.zeros(capacity, np.int64)  # what positions 0..known-1 were computed from
        self.known = 0  # positions whose keys are recorded: the reusable prefix is at most this long
        self.long_rope = False  # whether the held positions were rotated with LongRoPE's long factors
        self.device = device
        shape = (1, num_kv_heads, capacity, head_dim)
        if device == "cpu":  # the OrtValues share the numpy buffers
            self._buffers = [np.zeros(shape, dtype) for _ in range(2 * num_layers)]
            self._values = [on_device(b, device) for b in self._buffers]
        else:  # each buffer's host zeros are copied to the device once and dropped
            self._buffers = None
            self._values = [on_device(np.zeros(shape, dtype), device) for _ in range(2 * num_layers)]
        self._nbytes = 2 * num_layers * int(np.prod(shape)) * np.dtype(dtype).itemsize
        self.num_layers = num_layers

    def bind(self, binding: ort.IOBinding) -> None:
        """Bind every layer's buffer as both past input and present output."""
        for layer in range(self.num_layers):
            key, value = self._values[2 * layer], self._values[2 * layer + 1]
            binding.bind_ortvalue_input(past_key_name(layer), key)
            binding.bind_ortvalue_input(past_value_name(layer), value)
            binding.bind_ortvalue_output(present_key_name(layer), key)
            binding.bind_ortvalue_output(present_value_name(layer), value)

    def reusable(self, keys: np.ndarray, long_rope: bool) -> int:
        """How many leading positions of a sequence with `keys`, to be run with the long factors
        or not, the cache already holds."""
        if long_rope != self.long_rope:
            return 0  # every position's rotation differs
        count = min(self.known, len(keys))
        differs = np.flatnonzero(self.keys[:count] != keys[:count])
        return int(differs[0]) if len(differs) else count

    def overwrite_from(self, start: int) -> None:
        """Positions from `start` on are about to be rewritten: forget what they held."""
        self.known = min(self.known, start)

    def record(self, start: int, keys: np.ndarray | None) -> None:
        """Positions start..start+len(keys)-1 now hold `keys` (None: not known, not reusable)."""
        if keys is not None and self.known == start:
            self.keys[start:start + len(keys)] = keys
            self.known = start + len(keys)

    def arrays(self) -> list[np.ndarray]:
        """The buffers as numpy arrays, read and written in place: layer N's key at 2N, its value at 2N + 1."""
        if self._buffers is None:
            raise Phi4MMError(f"the KV cache lives on the {self.device} device: it has no host arrays to hand out")
        return self._buffers

    def forget(self) -> None:
        self.known = 0

    def nbytes(self) -> int:
        return self._nbytes
