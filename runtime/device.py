"""Where the runtime's long-lived tensors live: the KV cache, the adapters' LoRA tensors and the
decode step's embedding row.

On the CPU (and on the QNN NPU, whose plugin takes host buffers) they are numpy arrays that ONNX
Runtime reads and writes in place. On a GPU (DirectML) an input bound from host memory is copied
to the device on *every* run: the whole KV cache twice per token (in, and the present back out)
and every LoRA tensor of the active adapter (0.74-0.92 GB of fp16 at full size). So there they are
allocated once on the device (OrtValue on "dml") and bound by IOBinding: the KV buffer is both the
past input and the present output, the embedding graph writes the step row where the decoder reads
it, and only token ids, the attention mask and the logits cross to and from the host.
Which device a provider's sessions compute on is its row in providers.PROVIDERS (`device`).
"""

import numpy as np
import onnxruntime as ort


def on_device(array: np.ndarray, device: str) -> ort.OrtValue:
    """An OrtValue holding `array` on `device`: on the CPU it shares the array's memory (so the
    array sees what a run writes); elsewhere it is a device copy, made once."""
    if device == "cpu":
        return ort.OrtValue.ortvalue_from_numpy(array)
    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, 0)
