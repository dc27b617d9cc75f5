"""The LoRA adapters of an artifact, chosen per request by binding decoder inputs.

Two kinds, one switch:
- built-in adapters are int4 constants inside the decoder graph (export/graph_adapters.py): the
  request binds their `adapter_index`; nothing is loaded here, each stays in its own file;
- adapter files (`.onnx_adapter`, fp32/fp16 A and B; a user's own LoRA) are loaded once and their
  tensors bound to the decoder's LoRA inputs (`lora.layers.N.<module>.A` / `.B`) with
  `adapter_index` 0; "none" binds rank-0 tensors there.
Switching is a few hundred pointer bindings: no reload, no new session. (ONNX Runtime's own
adapter API is not used: it does not apply under IOBinding and DirectML rejects it.)
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..artifact import ADAPTER_INDEX, LORA_INPUT_PREFIX, NO_ADAPTER, SPEECH_ADAPTER, VISION_ADAPTER
from ..manifest import AdapterEntry
from ..errors import Phi4MMError
from .device import on_device
from .tensor_types import NUMPY_TYPES, input_types

AUTO = "auto"  # the adapter follows the request's media, as the model was trained
# A LoRA's A and B (alpha/r folded in) hold values of order 0.01-1; anything this large is not a
# trained adapter, and fp32 activations times it overflow to inf and then NaN logits.
MAX_LORA_VALUE = 1e3
STORED_TYPES = ("tensor(float)", "tensor(float16)")


def choose_adapter(requested: str, has_image: bool = False, has_audio: bool = False) -> str:
    """The adapter a request runs with. `auto`: an image -> vision (with or without audio),
    audio alone -> speech, text -> none. Any other choice is taken as given."""
    if requested != AUTO:
        return requested
    if has_image:
        return VISION_ADAPTER
    return SPEECH_ADAPTER if has_audio else NO_ADAPTER


class AdapterSet:
    """Every adapter's tensors, loaded once, keyed by adapter name ('none' included)."""

    none = NO_ADAPTER

    def __init__(self, folder: Path, manifest_adapters: dict[str, AdapterEntry], decoder: ort.InferenceSession,
                 device: str = "cpu"):
        """`device`: where the adapters' tensors are kept (device.py): on a GPU each file's tensors
        are copied there once, at load, rather than with every run."""
        self.device = device
        names = {i.name for i in decoder.get_inputs()}
        self.inputs = {i.name: i.shape for i in decoder.get_inputs() if i.name.startswith(LORA_INPUT_PREFIX)}
        # fp32 LoRA inputs, or fp16 ones (a DirectML artifact): each file's tensors are converted once, at load.
        self.input_type = {name: kind for name, kind in input_types(decoder).items() if name in self.inputs}
        self.has_index = ADAPTER_INDEX in names
        self.tensors = {NO_ADAPTER: self._rank_zero()}
        self.ranks = {NO_ADAPTER: 0}
        self.graph_index = {NO_ADAPTER: 0}
        self._index_values = {0: np.array(0, np.int64)}
        for name, entry in manifest_adapters.items():
            if entry.graph_index:
                if not self.has_index:
                    raise Phi4MMError(f"adapter {name!r} is built into the decoder graph, whose inputs have no "
                                      f"{ADAPTER_INDEX}: re-export the artifact")
                self.tensors[name], self.ranks[name] = self.tensors[NO_ADAPTER], entry.rank
                self.graph_index[name] = entry.graph_index
                self._index_values[entry.graph_index] = np.array(entry.graph_index, np.int64)
            else:
                # The artifact's own adapters are sha256-verified copies of what export checked.
                self.add(name, Path(folder) / entry.file, check_values=False)

    def add(self, name: str, path: Path, check_values: bool = True) -> None:
        """Load an adapter file under `name`: its names, shapes and types must fit the decoder's
        inputs, and (`check_values`) every value must be finite and of a LoRA's size. It runs
        through the decoder's fp32 LoRA inputs (the built-in adapters' int4 path is fixed at export)."""
        self.tensors[name], self.ranks[name] = self._load(Path(path), check_values)
        self.graph_index[name] = 0

    def names(self) -> list[str]:
        return list(self.tensors)

    def _rank_zero(self) -> dict:
        zero = {}
        for name, shape in self.inputs.items():
            dims = [0 if isinstance(d, str) or d is None else d for d in shape]
            array = np.zeros(dims, self.input_type[name])
            # An empty (rank 0) tensor has no bytes to copy: it stays a host value on every device.
            zero[name] = on_device(array, self.device if array.size else "cpu")
        return zero

    def _load(self, path: Path, check_values: bool):
        try:
            parameters = ort.AdapterFormat.read_adapter(str(path)).get_parameters()
        except Exception as error:  # a truncated or foreign file
            raise Phi4MMError(f"cannot read adapter file {path} ({error}): re-export the artifact") from None
        missing = sorted(set(self.inputs) - set(parameters))
        extra = sorted(set(parameters) - set(self.inputs))
        if missing or extra:
            raise Phi4MMError(
                f"adapter file {path} does not belong to this model: {len(missing)} decoder inputs it lacks "
                f"(e.g. {missing[:2]}) and {len(extra)} tensors the decoder does not take (e.g. {extra[:2]}); "
                f"export the adapter from this model's checkpoint"
            )
        tensors, ranks = {}, set()
        for name, value in parameters.items():
            shape, expected = value.shape(), self.inputs[name]
            matrix = name.rsplit(".", 1)[1]
            if len(shape) != 2 \
                    or (shape[0] if matrix == "A" else shape[1]) != (expected[0] if matrix == "A" else expected[1]):
                raise Phi4MMError(
                    f"adapter file {path}: tensor {name} has shape {shape}, the decoder expects {expected}; "
                    f"the adapter is from another model"
                )
            ranks.add(shape[1] if matrix == "A" else shape[0])
            if value.data_type() not in STORED_TYPES:
                raise Phi4MMError(f"adapter file {path}: tensor {name} is {value.data_type()}; adapters are float32 "
                                  f"or float16: export the adapter again")
            if check_values:
                values = value.numpy()
                if not np.isfinite(values).all() or (values.size and np.abs(values).max() > MAX_LORA_VALUE):
                    raise Phi4MMError(f"adapter file {path}: tensor {name} holds NaN, infinite or huge values (over "
                                      f"{MAX_LORA_VALUE:g}): it is damaged or not a trained LoRA")
            wanted = self.input_type[name]
            if NUMPY_TYPES[value.data_type()] != wanted or self.device != "cpu":
                value = on_device(value.numpy().astype(wanted, copy=False), self.device)  # once here, never per token
            tensors[name] = value
        if len(ranks) != 1:
            raise Phi4MMError(f"adapter file {path} mixes ranks {sorted(ranks)}: re-export the artifact")
        rank = ranks.pop()
        return self._at_static_rank(tensors, rank, path), rank

    def _at_static_rank(self, tensors: dict, rank: int, path: Path) -> dict:
        """Graphs with a static LoRA rank (the NPU's) take every adapter at that rank: a smaller one
        is padded with zero columns of A and zero rows of B, which adds exactly nothing."""
        static = {name: shape[1] if name.endswith(".A") else shape[0] for name, shape in self.inputs.items()}
        static_ranks = {r for r in static.values() if isinstance(r, int)}
        if not static_ranks:
            return tensors
        (graph_rank,) = static_ranks
        if rank > graph_rank:
            raise Phi4MMError(f"adapter file {path} has rank {rank}; this artifact's graphs take LoRAs up to rank "
                              f"{graph_rank}: re-export the artifact with the adapter in its checkpoint")
        if rank == graph_rank:
            return tensors
        padded = {}
        for name, value in tensors.items():
            array = value.numpy()
            width = [(0, 0), (0, graph_rank - rank)] if name.endswith(".A") else [(0, graph_rank - rank), (0, 0)]
            padded[name] = on_device(np.ascontiguousarray(np.pad(array, width)), self.device)
        return padded

    def check(self, adapter: str) -> None:
        if adapter not in self.tensors:
            raise Phi4MMError(f"adapter {adapter!r} is not in this artifact: choose {AUTO!r} or one of {self.names()}")

    def bind(self, binding: ort.IOBinding, adapter: str) -> None:
        self.check(adapter)
        for name, value in self.tensors[adapter].items():
            binding.bind_ortvalue_input(name, value)
        if self.has_index:
            binding.bind_cpu_input(ADAPTER_INDEX, self._index_values[self.graph_index[adapter]])
