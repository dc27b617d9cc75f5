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


def adapter_tensors(adapter: LoraAdapter, precision: str = "fp32"):
    """(graph-input name, array) for one adapter, produced one LoRA pair at a time."""
    dtype = ADAPTER_DTYPES[precision]
    for (layer, target), a, b in adapter.pairs():
        module = LORA_MODULES[target]
        yield lora_input_name(layer, module, "A"), np.ascontiguousarray(a.T, dtype=dtype)
        b *= adapter.scale  # B was read into its own buffer: scaled in place
        yield lora_input_name(layer, module, "B"), np.ascontiguousarray(b.T, dtype=dtype)


def write_adapter(path: Path, adapter: LoraAdapter, precision: str = "fp32") -> None:
    """One AdapterFormat file. Each tensor is held once (the OrtValue wraps the numpy buffer);
    the writer then serializes them, so the peak is about twice the adapter's size."""
    arrays = dict(adapter_tensors(adapter, precision))
    adapter_format = ort.AdapterFormat()
    adapter_format.set_adapter_version(1)
    adapter_format.set_model_version(1)
    adapter_format.set_parameters({name: ort.OrtValue.ortvalue_from_numpy(value) for name, value in arrays.items()})
    adapter_format.export_adapter(str(path))
