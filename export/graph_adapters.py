"""The checkpoint's LoRA adapters inside the decoder graph, as int4 (or int8) constants.

Bound as fp32 graph inputs (the older design), an adapter's A and B are read in full on every
token: 1.5 GB (vision) and 1.85 GB (speech) at full size, 1.7x and 2x the no-adapter decode
step. As int4 constants they are a quarter of the bytes, prepacked once like the base weights,
and run by the same MatMulNBits kernel. Each adapter stays its own file (`<name>.lora.data`,
the constants' external data); the decoder reads it through an `If` per LoRA target:

    lora(x) = If(adapter_index > 0,
                 then: If(adapter_index == 1, vision(x), speech(x)),   # the built-in adapters
                 else: x · A · B)                                      # the A/B inputs: rank 0 for
                                                                       # none, or a user's adapter

so a swap is binding another `adapter_index`, and one session serves every adapter over one copy
of the base weights. The alpha / rank scale is folded into B before quantizing.

With the int8 prompt graph (`export --prefill int8`) each adapter also gets int8 per-column copies
of A and B in `<name>.lora_prompt.data`, which only that graph reads: its built-in LoRA products
run on the same uint8 x int8 GEMM as its base linears. On int4 MatMulNBits they ran at the int4
ceiling next to an int8 base 7x faster on AMX (a 30 s audio prompt's LoRA took about as long as
its base linears there; ~10% of an image or audio prompt on AVX2). Made from the checkpoint's
A and B, not from the int4 copies.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifact import lora_input_name
from ..errors import Phi4MMError
from ..quant import int4, int8
from .checkpoint import LoraAdapter
from .graph_blocks import Precision, block_initializers
from .onnx_graph import ExternalData

LORA_DATA_SUFFIX = ".lora.data"
LORA_PROMPT_DATA_SUFFIX = ".lora_prompt.data"


@dataclass(frozen=True)
class StoredWeight:
    """An int4 weight [N, K] already written to a data file: what MatMulNBits needs to name it."""

    protos: list  # TensorProtos pointing into the adapter's data file
    shape: tuple[int, int]
    block_size: int
    bits: int


@dataclass(frozen=True)
class InGraphAdapter:
    name: str
    index: int  # its value of the decoder's `adapter_index` input (0 means the A/B inputs)
    rank: int
    alpha: float
    scale: float
    file: str  # the adapter's own data file
    weights: dict  # (layer, target) -> (A as StoredWeight [rank, in], B as StoredWeight [out, rank])
    # (layer, target) -> (A, B), each [int8 weight_t, scales] TensorProtos (int8 prompt graph only)
    prompt_weights: dict = field(default_factory=dict)


def store(data: ExternalData, name: str, weight: np.ndarray, precision: Precision, bits: int) -> StoredWeight:
    if bits == 8:
        quantized = int8.quantize_blocks(weight, precision.block_size)
    else:
        quantized = int4.quantize(weight, precision.block_size, precision.symmetric)
    return StoredWeight(block_initializers(data, name, quantized), quantized.shape, quantized.block_size, bits)


def write_in_graph_adapter(out: Path, lora: LoraAdapter, index: int, precision: Precision, modules: dict,
                           bits: int = 4, prompt_bits: int | None = None) -> InGraphAdapter:
    """Quantize one adapter to `bits` (4 or 8) into `<name>.lora.data`, a pair at a time (a
    full-size adapter is ~1.8 GB in fp32, ~0.29 GB at int4). `modules` maps checkpoint targets to
    graph module names. `prompt_bits` (7 or 8) also writes the int8 prompt graph's per-column
    copies into `<name>.lora_prompt.data`."""
    file_name = f"{lora.name}{LORA_DATA_SUFFIX}"
    data = ExternalData(out / file_name)
    prompt_data = ExternalData(out / f"{lora.name}{LORA_PROMPT_DATA_SUFFIX}") if prompt_bits else None
    weights, prompt_weights = {}, {}
    for (layer, target), a, b in lora.pairs():
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise Phi4MMError(f"the checkpoint's {lora.name} adapter holds NaN or infinite values at layer {layer} "
                              f"{target}: re-download it")
        b *= lora.scale  # B was read into its own buffer: scaled in place
        base = lora_input_name(layer, modules[target], "")[:-1].replace("lora.", f"lora.{lora.name}.", 1)
        weights[(layer, target)] = (store(data, base + ".A", a, precision, bits), store(data, base + ".B", b, precision, bits))
        if prompt_data:
            prompt_weights[(layer, target)] = tuple(store_columns(prompt_data, f"{base}.{part}.prompt", w, prompt_bits)
                                                    for part, w in (("A", a), ("B", b)))
    data.close()
    if prompt_data:
        prompt_data.close()
    return InGraphAdapter(lora.name, index, lora.rank, float(lora.alpha), float(lora.scale), file_name, weights,
                          prompt_weights)


def store_columns(data: ExternalData, name: str, weight: np.ndarray, bits: int) -> list:
    """[int8 weight_t, scales] TensorProtos for row_scaled_int8_matmul, written to `data`."""
    columns = int8.quantize_columns(weight, bits)
    return [data.tensor(f"{name}.int8", columns.weight_t), data.tensor(f"{name}.int8_scales", columns.scales)]
