"""The KV cache: one key and one value buffer per layer, allocated once at the context length.

GroupQueryAttention reads past keys from and writes present keys into the same buffer when
both are bound to it, so nothing is copied or reallocated per token.
"""

import numpy as np
import onnxruntime as ort

from ..artifact import past_key_name, past_value_name, present_key_name, present_value_name


class KVCache:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, capacity: int):
        self.capacity = capacity
        self.length = 0  # tokens currently held
        self._buffers = [np.zeros((1, num_kv_heads, capacity, head_dim), np.float32) for _ in range(2 * num_layers)]
        self._values = [ort.OrtValue.ortvalue_from_numpy(b) for b in self._buffers]
        self.num_layers = num_layers

    def bind(self, binding: ort.IOBinding) -> None:
        """Bind every layer's buffer as both past input and present output."""
        for layer in range(self.num_layers):
            key, value = self._values[2 * layer], self._values[2 * layer + 1]
            binding.bind_ortvalue_input(past_key_name(layer), key)
            binding.bind_ortvalue_input(past_value_name(layer), value)
            binding.bind_ortvalue_output(present_key_name(layer), key)
            binding.bind_ortvalue_output(present_value_name(layer), value)

    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers)
