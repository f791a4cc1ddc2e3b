"""The plan: the optimal constant output for the targets and the loss it implies."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ._errors import InvalidInputError


class Moments(NamedTuple):
    """The loss at one constant output, in the forms the tolerance needs.

    Attributes:
        mean: the framework's mean-reduced loss over all samples.
        std: per-unit spread of that mean (a ratio estimator's when the
            mean divides by summed weights): the mean over ``n`` units has
            standard error ``std / sqrt(n)``.
        sum_scale: what one unit adds to the normaliser of the mean
            (1, the number of outputs, or the mean class weight), so a
            summed loss over ``n`` units is ``mean * sum_scale * n``.
        sum_std: per-unit spread of a summed loss.
    """

    mean: float
    std: float
    sum_scale: float
    sum_std: float


@dataclass(frozen=True)
class Plan:
    """The optimal constant output for a loss and the loss it implies.

    Attributes:
        loss: the loss name, as torch's functional API spells it.
        activation: where the bias lives ("softmax", "sigmoid", "identity",
            ...): the bias is the value *before* that activation.
        bias: one float64 value per output unit.
        expected_loss: the mean-reduced loss of a model whose output is
            ``bias`` for every sample.
        zero_bias_loss: the same for a zero bias (the unguarded start).
        loss_std: per-sample spread of the loss at ``bias``; a batch of ``B``
            samples measures ``expected_loss`` with standard error
            ``loss_std / sqrt(B * units_per_row)``.
        samples: number of samples (or elements) the statistics cover.
        units_per_row: samples per row of a batch: positions of a sequence or
            map for dense targets, else 1.
        reduction: "mean", "sum", or a loss's own mean (torch's
            "batchmean"); every reduction but "sum" is a mean whose value is
            ``expected_loss``.
        notes: remarks on the statistics (never-seen classes, clipped biases).
    """

    loss: str
    activation: str
    bias: np.ndarray
    expected_loss: float
    zero_bias_loss: float
    loss_std: float
    samples: int
    units_per_row: float = 1.0
    reduction: str = "mean"
    notes: tuple[str, ...] = ()
    sum_scale: float = field(default=1.0, repr=False)
    sum_std: float = field(default=0.0, repr=False)
    evaluate: Callable[[np.ndarray], Moments] | None = field(
        default=None, repr=False, compare=False
    )

    def batch_scale(self, batch_size: int) -> float:
        """Factor from the mean-reduced loss to one batch's reduced loss."""
        if self.reduction == "sum":
            return max(batch_size * self.units_per_row, 1.0) * self.sum_scale
        return 1.0

    def batch_expectation(self, batch_size: int) -> tuple[float, float, float]:
        """Returns (expected, zero-bias, standard error) of one batch's loss.

        Args:
            batch_size: rows in the batch (all ranks together when the loss
                is averaged across processes).
        """
        units = max(batch_size * self.units_per_row, 1.0)
        scale = self.batch_scale(batch_size)
        if self.reduction == "sum":
            error = self.sum_std * math.sqrt(units)
        else:
            error = self.loss_std / math.sqrt(units)
        return self.expected_loss * scale, self.zero_bias_loss * scale, error

    def loss_at(self, bias: np.ndarray) -> float:
        """The mean-reduced loss of a constant output ``bias`` on the same targets."""
        if self.evaluate is None:
            raise InvalidInputError("This plan holds no statistics to evaluate other outputs.")
        return self.evaluate(np.asarray(bias, dtype=np.float64)).mean
