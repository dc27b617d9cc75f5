"""Next-token choice from one row of logits: greedy, or temperature with top-k / top-p."""

import math
import numbers
from dataclasses import dataclass

import numpy as np

from ..errors import Phi4MMError


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy; top_k 0 and top_p 1 disable those filters; seed None draws a fresh one."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self):
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not math.isfinite(self.temperature) or self.temperature < 0:
            raise Phi4MMError(f"temperature {self.temperature!r}: give a finite number >= 0 (0 = greedy)")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise Phi4MMError(f"top_p {self.top_p!r}: give a number in (0, 1] (1 = no filter)")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, numbers.Integral) or self.top_k < 0:
            raise Phi4MMError(f"top_k {self.top_k!r}: give a whole number >= 0 (0 = no filter)")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral)
                                      or self.seed < 0):
            raise Phi4MMError(f"seed {self.seed!r}: give a whole number >= 0, or none")

    def chooser(self):
        """A function logits -> token id, with its own random generator."""
        rng = np.random.default_rng(self.seed)
        return lambda logits: choose_token(logits, self.temperature, self.top_k, self.top_p, rng)


def choose_token(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng: np.random.Generator) -> int:
    """Temperature 0 is greedy. top_k 0 and top_p 1 disable those filters."""
    if temperature <= 0:
        return int(np.argmax(logits))
    # Shifted by the maximum before dividing: every value is <= 0, so a tiny temperature (1e-310)
    # gives -inf (probability 0) rather than inf - inf = NaN; the best token keeps exactly 0.
    logits = logits.astype(np.float64)
    with np.errstate(over="ignore", divide="ignore"):
        scaled = (logits - logits.max()) / temperature
    if 0 < top_k < scaled.size:
        cutoff = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled < cutoff, -np.inf, scaled)
    probs = np.exp(scaled)
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, top_p)) + 1]  # smallest set reaching top_p
        filtered = np.zeros_like(probs)
        filtered[keep] = probs[keep]
        probs = filtered / filtered.sum()
    return int(rng.choice(probs.size, p=probs))
