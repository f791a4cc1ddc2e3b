"""Seeded targets and the assertions every exactness test makes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

RTOL = 1e-6


def draw_labels(kind: str, classes: int, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
    """Seeded class indices from one of several class distributions."""
    if kind == "balanced":
        probs = np.full(classes, 1.0 / classes)
    elif kind == "imbalanced":
        probs = 0.5 ** np.arange(classes)
    else:  # "unseen": the last class never occurs
        probs = np.r_[rng.uniform(0.5, 1.5, classes - 1), 0.0]
    return rng.choice(classes, size=shape, p=probs / probs.sum())


def assert_close(actual: float, expected: float, rtol: float = RTOL) -> None:
    assert actual == pytest.approx(expected, rel=rtol, abs=1e-12)


def check_optimal(
    loss_at: Callable[[np.ndarray], float],
    bias: np.ndarray,
    rng: np.random.Generator,
    draws: int = 4,
) -> None:
    """No random nudge of the bias gives a lower framework loss."""
    best = loss_at(bias)
    for _ in range(draws):
        nudged = bias + rng.normal(0.0, 0.05, size=bias.shape)
        assert loss_at(nudged) >= best - 1e-12
