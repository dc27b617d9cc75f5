"""Encoded images and clips kept by content, so a conversation does not encode them again.

A chat turn re-sends every image and clip of the conversation; the encoders are the slow part of
a media prompt (seconds per crop at full size). The key is a digest of what the encoder is fed
(the preprocessed crops and masks, or the log-mel frames, and the projection mode), not of the
file: the same picture as PNG or as a camera frame gives the same key only when its pixels agree.
The least recently used features go first once `max_bytes` is exceeded.
"""

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

DEFAULT_MAX_BYTES = 256 << 20  # ~5 full-size 16-crop frames (3918 x 3072 fp32 = 48 MB each), ~50 photos


def content_key(kind: str, *arrays: np.ndarray) -> bytes:
    """A digest of the arrays' shapes, dtypes and bytes, tagged with `kind`."""
    digest = hashlib.blake2b(kind.encode(), digest_size=16)
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.digest()


class FeatureCache:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def features(self, key: bytes, encode: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached features for `key`, or `encode()`'s, kept for next time. The array is shared:
        callers must not write to it (it is made read-only)."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        features = encode()  # outside the lock: seconds of work
        features.flags.writeable = False
        with self._lock:
            if features.nbytes <= self.max_bytes:
                self._entries[key] = features
                while sum(f.nbytes for f in self._entries.values()) > self.max_bytes:
                    self._entries.popitem(last=False)
        return features

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(f.nbytes for f in self._entries.values())
