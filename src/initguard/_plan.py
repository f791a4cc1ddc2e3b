"""The plan: the optimal constant output for the targets and the loss it implies."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ._errors import InvalidInputError

REDUCTIONS = ("mean", "sum")


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


def check_reduction(reduction: Any, allowed: tuple[str, ...] = REDUCTIONS) -> str:
    """Validates a reduction name against the ones a loss understands."""
    if not isinstance(reduction, str) or reduction not in allowed:
        raise InvalidInputError(f"`reduction` must be one of {allowed}; received {reduction!r}.")
    return reduction


def check_fraction(name: str, value: Any, upper_open: bool = False) -> float:
    """Validates a number in [0, 1] (or [0, 1) with ``upper_open``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if ok and math.isfinite(value) and value >= 0 and (value < 1 if upper_open else value <= 1):
        return float(value)
    interval = "[0, 1)" if upper_open else "[0, 1]"
    raise InvalidInputError(f"`{name}` must be a number in {interval}; received {value!r}.")


def check_vector(
    name: str, value: Any, width: int | None, positive: bool = True
) -> np.ndarray | None:
    """Validates an optional per-output vector (a scalar broadcasts)."""
    if value is None:
        return None
    from ._targets import to_numpy

    array = to_numpy(value, name).astype(np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise InvalidInputError(f"`{name}` must be finite; received {show(array)}.")
    if positive and np.any(array <= 0):
        raise InvalidInputError(f"`{name}` must be > 0; received {show(array)}.")
    if width is not None and array.shape[0] not in (1, width):
        raise InvalidInputError(
            f"`{name}` must have one entry per output ({width}); received {array.shape[0]}."
        )
    return np.broadcast_to(array, (width,)).copy() if width is not None else array


def show(array: Any, limit: int = 8) -> str:
    """Formats a vector for an error message, shortened when long."""
    values = np.asarray(array).reshape(-1)
    text = ", ".join(repr(v) for v in values[:limit].tolist())
    return f"[{text}{', ...' if values.size > limit else ''}]"


def check_bias(value: Any, width: int) -> np.ndarray | None:
    """Validates a bias fixed by hand."""
    bias = check_vector("bias", value, width, positive=False)
    return bias
