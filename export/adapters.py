"""LoRA adapter files in ONNX Runtime's AdapterFormat (`.onnx_adapter`).

Each file holds, for every target, A [in, rank] and B [rank, out] with the adapter's
alpha / rank folded into B, named exactly like the decoder's inputs, so the runtime binds
them without any renaming.
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..artifact import lora_input_name
from .checkpoint import LoraAdapter
from .text_decoder import LORA_MODULES

ADAPTER_DTYPES = {"fp32": np.float32, "fp16": np.float16}


def adapter_tensors(adapter: LoraAdapter, precision: str = "fp32") -> dict[str, np.ndarray]:
    """Graph-input name -> array for one adapter."""
    dtype = ADAPTER_DTYPES[precision]
    tensors = {}
    for (layer, target), (a, b) in adapter.weights.items():
        module = LORA_MODULES[target]
        tensors[lora_input_name(layer, module, "A")] = np.ascontiguousarray(a.T, dtype=dtype)
        tensors[lora_input_name(layer, module, "B")] = np.ascontiguousarray((b * adapter.scale).T, dtype=dtype)
    return tensors


def write_adapter(path: Path, adapter: LoraAdapter, precision: str = "fp32") -> None:
    tensors = adapter_tensors(adapter, precision)
    adapter_format = ort.AdapterFormat()
    adapter_format.set_adapter_version(1)
    adapter_format.set_model_version(1)
    adapter_format.set_parameters({name: ort.OrtValue.ortvalue_from_numpy(value) for name, value in tensors.items()})
    adapter_format.export_adapter(str(path))
