"""Sampling from one row of logits (runtime/sampling.py): any temperature the options accept gives
a distribution, never NaN."""

import numpy as np
import pytest

from phi4mm_edge.runtime.sampling import Sampling, choose_token


@pytest.mark.parametrize("temperature", [1e-310, 5e-324, 1e-300, 1e-30])
def test_a_tiny_temperature_is_greedy_not_nan(temperature):
    """The probe's 1e-310 passed validation, then numpy raised "Probabilities contain NaN"
    (logits / 1e-310 overflowed to inf, and inf - inf is NaN). Any positive temperature that
    small leaves only the best token."""
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 30
    choose = Sampling(temperature=temperature, top_p=0.9, top_k=50, seed=1).chooser()
    assert {choose(logits) for _ in range(20)} == {int(np.argmax(logits))}


def test_a_huge_temperature_is_uniform_not_nan():
    """The other end: float32's extreme logits at temperature 1e300 are all equally likely (each
    of 4 tokens drawn in 400 draws: a missing one has probability 4 x 0.75^400, ~1e-50)."""
    logits = np.array([3e38, -3e38, 1e38, 0.0], np.float32)
    rng = np.random.default_rng(0)
    assert {choose_token(logits, 1e300, 0, 1.0, rng) for _ in range(400)} == {0, 1, 2, 3}
