"""Loads an artifact folder and generates: ONNX Runtime, numpy and tokenizers only.
Never imports torch, transformers or export/."""

from .model import Generation, Phi4MMEdge

__all__ = ["Phi4MMEdge", "Generation"]
