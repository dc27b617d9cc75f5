"""How far a quantized weight is from the original: the figures export reports per tensor."""

import numpy as np


def relative_rms_error(original: np.ndarray, approximation: np.ndarray) -> float:
    """||original - approximation|| / ||original|| (Frobenius); 0 for an all-zero original."""
    norm = float(np.linalg.norm(original))
    return float(np.linalg.norm(original - approximation)) / norm if norm else 0.0


def max_abs_error(original: np.ndarray, approximation: np.ndarray) -> float:
    return float(np.abs(original - approximation).max()) if original.size else 0.0
