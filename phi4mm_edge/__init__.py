"""phi4mm-edge: Phi-4-multimodal on device (CPU today), int4, with swappable LoRA adapters.

Data flows one way: checkpoint -> export/ (+ quant/) -> artifact folder -> runtime/ -> apps/.
This package root holds only what both halves share: the error type and the artifact contract.
"""

from .errors import Phi4MMError

__version__ = "0.1.0"
__all__ = ["Phi4MMError", "__version__"]
