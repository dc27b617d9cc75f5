"""Loads an artifact folder and generates: ONNX Runtime, numpy, tokenizers, jinja2, Pillow,
soundfile and soxr only. Never imports torch, transformers, onnx or export/."""

from .generation import Generation, GenerationResult, Timings
from .model import Phi4MMEdge
from .options import GenerationOptions

__all__ = ["Phi4MMEdge", "GenerationOptions", "Generation", "GenerationResult", "Timings"]
