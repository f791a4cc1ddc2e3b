"""Regression losses: the optimal constant is a location of the targets."""

from __future__ import annotations

import dataclasses

import numpy as np

from ._loss_base import LossSpec, register, safe_std
from ._plan import Moments
from ._stats import ValueStats


@dataclasses.dataclass(frozen=True)
class RegressionLoss(LossSpec):
    """A loss that averages an element-wise error over samples and outputs.

    Subclasses give ``elementwise(values, bias)`` and ``optimal_bias``.
    """

    def new_stats(self) -> ValueStats:
        return ValueStats()

    def width(self, stats: ValueStats) -> int:
        return int(stats.values.shape[1])

    def elementwise(self, values: np.ndarray, bias: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def moments(self, stats: ValueStats, bias: np.ndarray) -> Moments:
        per_row = self.elementwise(stats.values, np.asarray(bias, dtype=np.float64)).mean(axis=1)
        width = self.width(stats)
        std = safe_std(float(per_row.var()))
        return Moments(float(per_row.mean()), std, float(width), std * width)


@register
@dataclasses.dataclass(frozen=True)
class MeanSquaredError(RegressionLoss):
    """Mean squared error: the optimum is the mean, the loss the variance.

    Args:
        reduction: "mean" or "sum".
        bias: a constant output fixed by hand, or None for the optimum.
    """

    name = "mse"

    def elementwise(self, values: np.ndarray, bias: np.ndarray) -> np.ndarray:
        return (values - bias) ** 2

    def optimal_bias(self, stats: ValueStats) -> tuple[np.ndarray, list[str]]:
        return stats.values.mean(axis=0), []
