"""The element types a graph declares, so one runtime feeds fp32 graphs (CPU, NPU) and fp16 ones
(DirectML) alike: float arrays are cast to what an input declares, float outputs come back as
fp32 (the runtime's own arithmetic, sampling above all, stays in fp32)."""

import numpy as np
import onnxruntime as ort

NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8}


def input_types(session: ort.InferenceSession) -> dict[str, type]:
    return {i.name: NUMPY_TYPES.get(i.type, object) for i in session.get_inputs()}


def output_types(session: ort.InferenceSession) -> dict[str, type]:
    return {o.name: NUMPY_TYPES.get(o.type, object) for o in session.get_outputs()}


def as_declared(feeds: dict, declared: dict) -> dict:
    """`feeds` with each float array cast to its input's declared float type (a no-op for fp32 graphs)."""
    cast = {}
    for name, value in feeds.items():
        wanted = declared.get(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f" and wanted in (np.float16, np.float32) and value.dtype != wanted:
            value = value.astype(wanted)
        cast[name] = value
    return cast


def run_as_declared(session: ort.InferenceSession, outputs: list[str], feeds: dict, declared: dict | None = None) -> list:
    """session.run with float feeds cast to the declared types and float outputs returned as fp32."""
    results = session.run(outputs, as_declared(feeds, declared if declared is not None else input_types(session)))
    return [r.astype(np.float32) if isinstance(r, np.ndarray) and r.dtype == np.float16 else r for r in results]
