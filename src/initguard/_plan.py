"""The plan: the optimal constant output for the targets and the loss it implies."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple

import numpy as np

from ._errors import InvalidInputError


class BatchLoss(NamedTuple):
    """Exact losses of constant outputs on one batch's targets.

    Attributes:
        at_bias: the loss at the planned bias.
        at_zero: the loss at a zero bias.
        doubled: the loss when the activated bias is fed to the loss again
            (probabilities given to a loss that expects logits), or NaN when
            the output has no softmax or sigmoid.
    """

    at_bias: float
    at_zero: float
    doubled: float


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
    spec: Any = field(default=None, repr=False, compare=False)
    band_scale: float | None = field(default=None, repr=False)
    unseen_outputs: int = field(default=0, repr=False)

    @property
    def scale(self) -> float:
        """The loss scale of the tolerance's relative terms (mean reduction).

        ``|expected_loss|`` for losses whose perfect prediction scores 0;
        the spread of the per-sample loss for losses with an arbitrary
        offset (Poisson and Gaussian likelihoods), whose expected loss can
        sit anywhere, even below 0.
        """
        return abs(self.expected_loss) if self.band_scale is None else self.band_scale

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

    def batch_loss(self, targets: Any) -> BatchLoss:
        """The exact loss of the constant outputs on one batch's targets.

        A measured first-batch loss differs from ``expected_loss`` partly
        because the batch is a sample of the data; on the batch's own targets
        that part vanishes, and what remains is what the model adds.

        Args:
            targets: the targets of the batch, shaped as for ``plan``.

        Returns:
            The losses at the bias, at a zero bias and at the doubly
            activated bias, reduced as the plan's loss reduces a batch.

        Raises:
            InvalidInputError: the targets do not fit, or hold no usable
                sample (every target ignored).
        """
        if self.spec is None:
            raise InvalidInputError("This plan holds no loss description to evaluate a batch.")
        spec = self.spec
        # A batch need not show every class: the plan's width decides.
        names = {f.name for f in fields(spec)}
        if "num_classes" in names and spec.num_classes is None:
            spec = replace(spec, num_classes=int(self.bias.shape[0]))
        stats = spec.new_stats().update(targets)
        if spec.samples(stats) == 0:
            raise InvalidInputError("The batch holds no usable target (every target ignored).")

        doubled = activated(self.bias, self.activation)
        with np.errstate(all="ignore"):
            at_bias = spec.moments(stats, self.bias)
            at_zero = spec.moments(stats, np.zeros_like(self.bias))
            at_doubled = math.nan if doubled is None else spec.moments(stats, doubled).mean
        scale = 1.0
        if self.reduction == "sum":
            scale = spec.samples(stats) * at_bias.sum_scale
        return BatchLoss(
            float(at_bias.mean) * scale, float(at_zero.mean) * scale, float(at_doubled) * scale
        )

    def spread_excess(self, deviations: np.ndarray, batch_size: int = 1) -> float:
        """How much outputs spread around the bias raise the expected loss.

        A fresh final layer's random weights add a zero-mean deviation ``e``
        to the bias for every sample. For deviations independent of the
        targets and symmetric around zero, the expected loss is the mean
        over samples of ``(L(b + e) + L(b - e)) / 2``; the excess over
        ``L(b)`` is what the measured step-0 loss may sit above the plan.

        Args:
            deviations: head outputs minus the head's bias, ``[rows, width]``
                (at most 64 rows are used).
            batch_size: rows of a batch, for a summed loss. Defaults to 1.

        Returns:
            The excess, reduced as the plan's loss reduces a batch (>= 0).
        """
        if self.evaluate is None:
            raise InvalidInputError("This plan holds no statistics to evaluate other outputs.")
        rows = np.asarray(deviations, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.bias.shape[0]:
            raise InvalidInputError(
                f"`deviations` must be shaped [rows, {self.bias.shape[0]}]; received {rows.shape}."
            )
        rows = rows[np.all(np.isfinite(rows), axis=1)][:64]
        if rows.shape[0] == 0:
            return 0.0
        base = self.loss_at(self.bias)
        with np.errstate(all="ignore"):
            pairs = [self.loss_at(self.bias + e) + self.loss_at(self.bias - e) for e in rows]
        excess = float(np.mean(pairs)) / 2 - base
        if not math.isfinite(excess):
            return math.inf
        return max(excess, 0.0) * self.batch_scale(batch_size)


def activated(bias: np.ndarray, activation: str) -> np.ndarray | None:
    """The bias after the output's softmax or sigmoid, or None for other outputs."""
    if activation == "softmax":
        shifted = np.exp(bias - bias.max())
        return shifted / shifted.sum()
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-bias))
    return None
