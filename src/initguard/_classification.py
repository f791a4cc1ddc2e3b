"""Softmax and sigmoid cross-entropy: optimal logits and the loss they imply."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ._errors import InvalidInputError
from ._loss_base import FLOOR_LOG_PROB, LossSpec, log_softmax, register, safe_std, softplus
from ._plan import Moments, check_fraction, check_vector
from ._stats import BinaryStats, ClassStats


def _class_weight_vector(value: Any) -> Any:
    """Accepts Keras's ``{class: weight}`` mapping as well as a sequence."""
    if not isinstance(value, dict):
        return value
    keys = sorted(value)
    if keys != list(range(len(keys))):
        raise InvalidInputError(
            f"`class_weight` keys must be 0..C-1 with none missing; received {keys}."
        )
    return [value[k] for k in keys]


@register
@dataclasses.dataclass(frozen=True)
class CrossEntropy(LossSpec):
    """Softmax cross-entropy over class indices or probability rows.

    The optimum is ``p = a / sum(a)`` for the per-class target mass ``a``
    (counts, smoothed and weighted as the framework does), so the bias is
    ``log p``. A class with no mass gets a finite floor and a note.

    Args:
        num_classes: output width; None infers it from the largest label.
        weight: torch's per-class ``weight`` (the mean divides by the summed
            weights of the samples).
        class_weight: Keras's ``class_weight`` from ``fit`` (the mean divides
            by the number of samples), a sequence or a ``{class: weight}`` dict.
        label_smoothing: torch's and Keras's smoothing towards uniform.
        ignore_index: label left out of the loss; torch's default is -100.
        class_axis: axis of probability targets holding the classes (1 for
            torch, -1 for Keras).
        reduction: "mean" or "sum".
        bias: a constant output fixed by hand, or None for the optimum.
    """

    name = "cross_entropy"
    activation = "softmax"

    num_classes: int | None = None
    weight: Any = None
    class_weight: Any = None
    label_smoothing: float = 0.0
    ignore_index: int | None = -100
    class_axis: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool)
            or not isinstance(self.num_classes, (int, np.integer))
            or self.num_classes < 1
        ):
            raise InvalidInputError(
                f"`num_classes` must be a positive integer; received {self.num_classes!r}."
            )
        if self.weight is not None and self.class_weight is not None:
            raise InvalidInputError(
                "Give `weight` (torch) or `class_weight` (Keras), not both; "
                f"received weight={self.weight!r}, class_weight={self.class_weight!r}."
            )
        check_fraction("label_smoothing", self.label_smoothing)
        if self.ignore_index is not None and not isinstance(self.ignore_index, (int, np.integer)):
            raise InvalidInputError(
                f"`ignore_index` must be an integer or None; received {self.ignore_index!r}."
            )
        for name in ("weight", "class_weight"):
            value = _class_weight_vector(getattr(self, name))
            check_vector(name, value, self.num_classes, positive=False)
            if value is not None and np.any(np.asarray(value, dtype=np.float64) < 0):
                raise InvalidInputError(f"`{name}` must be >= 0; received {value!r}.")

    def new_stats(self) -> ClassStats:
        return ClassStats(
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            class_axis=self.class_axis,
        )

    def samples(self, stats: ClassStats) -> int:
        return stats.samples

    def width(self, stats: ClassStats) -> int:
        return self.num_classes or stats.mass.shape[0]

    def _weights(self, width: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """Returns (per-sample factor s, per-class factor u, divide-by-weights flag)."""
        ones = np.ones(width)
        if self.weight is not None:
            vector = check_vector("weight", self.weight, width, positive=False)
            assert vector is not None
            return ones, vector, True
        if self.class_weight is not None:
            vector = check_vector(
                "class_weight", _class_weight_vector(self.class_weight), width, positive=False
            )
            assert vector is not None
            return vector, ones, False
        return ones, ones, False

    def _counts(self, stats: ClassStats) -> np.ndarray:
        return np.pad(stats.mass, (0, self.width(stats) - stats.mass.shape[0]))

    def _target_mass(self, stats: ClassStats) -> np.ndarray:
        width = self.width(stats)
        eps = self.label_smoothing
        s, u, _ = self._weights(width)
        counts = self._counts(stats)
        if stats.probabilities and not stats.one_hot and self.class_weight is not None:
            raise InvalidInputError(
                "`class_weight` with soft (not one-hot) probability targets is not supported: "
                "Keras weights each sample by its arg-max class, which the statistics do not "
                "keep. Pass class indices or one-hot rows."
            )
        # Class indices and one-hot rows: a(y) = s_y ((1 - eps) u_y e_y + eps / C u).
        # Soft rows (s = 1): a_n = u * ((1 - eps) q_n + eps / C).
        return (1 - eps) * s * u * counts + eps / width * u * float(s @ counts)

    def optimal_bias(self, stats: ClassStats) -> tuple[np.ndarray, list[str]]:
        mass = self._target_mass(stats)
        seen = mass > 0
        if not seen.any():
            raise InvalidInputError(
                "Every class has zero weighted mass (all `weight` entries of the classes "
                "present are 0)."
            )

        log_p = np.full(mass.shape, -np.inf)
        log_p[seen] = np.log(mass[seen] / mass.sum())
        notes = []
        if not seen.all():
            floor = min(FLOOR_LOG_PROB, float(log_p[seen].min()) - math.log(100.0))
            unseen = np.flatnonzero(~seen)
            log_p[~seen] = floor
            shown = ", ".join(str(i) for i in unseen[:10]) + (" ..." if unseen.size > 10 else "")
            notes.append(
                f"{unseen.size} class(es) never occur in the targets ({shown}); "
                f"their bias is floored at {floor:.4f} instead of -inf"
            )
        if stats.probabilities and stats.gram is None and not stats.one_hot:
            notes.append("soft targets over many classes: the loss spread is an upper bound")
        return log_p, notes

    def moments(self, stats: ClassStats, bias: np.ndarray) -> Moments:
        width = self.width(stats)
        g = log_softmax(np.asarray(bias, dtype=np.float64))
        eps = self.label_smoothing
        s, u, divide_by_weights = self._weights(width)
        counts = self._counts(stats)

        if stats.probabilities and not stats.one_hot:
            return self._soft_moments(stats, g, u)

        # Per class y: the loss of one sample, and its share of the normaliser.
        loss_y = -s * ((1 - eps) * u * g + eps / width * float(u @ g))
        norm_y = u if divide_by_weights and not stats.probabilities else np.ones(width)
        freq = counts / counts.sum()
        norm = float(freq @ norm_y)
        if norm <= 0:
            raise InvalidInputError(
                "The summed class `weight` of the samples present is 0: the loss is 0/0."
            )
        mean = float(freq @ loss_y) / norm
        ratio_var = float(freq @ (loss_y - mean * norm_y) ** 2) / norm**2
        sum_var = float(freq @ loss_y**2) - float(freq @ loss_y) ** 2
        return Moments(mean, safe_std(ratio_var), norm, safe_std(sum_var))

    def _soft_moments(self, stats: ClassStats, g: np.ndarray, u: np.ndarray) -> Moments:
        width = self.width(stats)
        eps = self.label_smoothing
        n = stats.samples
        h = u * g
        # loss_n = -((1 - eps) h . q_n + c) with c the smoothing term.
        c = eps / width * float(h.sum())
        hs = float(h @ stats.mass)
        quad = float(h @ stats.gram @ h) if stats.gram is not None else float(h**2 @ stats.mass)
        mean = -((1 - eps) * hs + n * c) / n
        second = ((1 - eps) ** 2 * quad + 2 * (1 - eps) * c * hs + n * c**2) / n
        std = safe_std(second - mean**2)
        return Moments(mean, std, 1.0, std)


@register
@dataclasses.dataclass(frozen=True)
class BinaryCrossEntropy(LossSpec):
    """Sigmoid cross-entropy for one or many binary outputs.

    Per output the optimum is ``logit(w p / (w p + 1 - p))`` for positive
    rate ``p`` and ``pos_weight`` ``w``. An output that is always 0 or
    always 1 gets a finite clip and a note.

    Args:
        pos_weight: torch's per-output weight of positives.
        weight: torch's per-output rescaling of the loss.
        label_smoothing: Keras's smoothing towards 0.5 (``y (1 - eps) + eps / 2``).
        reduction: "mean" or "sum".
        bias: a constant output fixed by hand, or None for the optimum.
    """

    name = "binary_cross_entropy"
    activation = "sigmoid"

    pos_weight: Any = None
    weight: Any = None
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_vector("pos_weight", self.pos_weight, None)
        check_vector("weight", self.weight, None, positive=False)
        check_fraction("label_smoothing", self.label_smoothing)

    def new_stats(self) -> BinaryStats:
        return BinaryStats()

    def width(self, stats: BinaryStats) -> int:
        return int(stats.sums.shape[0])

    def _factors(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        pos = check_vector("pos_weight", self.pos_weight, width)
        scale = check_vector("weight", self.weight, width, positive=False)
        return (
            pos if pos is not None else np.ones(width),
            scale if scale is not None else np.ones(width),
        )

    def _rates(self, stats: BinaryStats) -> np.ndarray:
        eps = self.label_smoothing
        return stats.sums / stats.rows * (1 - eps) + eps / 2

    def optimal_bias(self, stats: BinaryStats) -> tuple[np.ndarray, list[str]]:
        p = self._rates(stats)
        pos, _ = self._factors(self.width(stats))
        limit = -FLOOR_LOG_PROB
        with np.errstate(divide="ignore"):
            logits = np.log(pos * p) - np.log1p(-p)
        clipped = np.flatnonzero(~(np.abs(logits) <= limit))
        notes = []
        if clipped.size:
            notes.append(
                f"{clipped.size} output(s) are always 0 or always 1 ({clipped[:10].tolist()}); "
                f"their bias is clipped to +-{limit:.4f}"
            )
        return np.clip(logits, -limit, limit), notes

    def moments(self, stats: BinaryStats, bias: np.ndarray) -> Moments:
        width = self.width(stats)
        eps = self.label_smoothing
        pos, scale = self._factors(width)
        p = self._rates(stats)
        b = np.asarray(bias, dtype=np.float64)

        # Per element: scale * (sp(b) + y (pos * sp(-b) - sp(b))), linear in y.
        intercept = scale * softplus(b)
        slope = scale * (pos * softplus(-b) - softplus(b))
        mean = float((intercept + slope * p).mean())

        mu = stats.sums / stats.rows
        coef = slope * (1 - eps) / width
        if stats.gram is not None:
            cov = stats.gram / stats.rows - np.outer(mu, mu)
            variance = float(coef @ cov @ coef)
        else:
            # Without the cross moments, Cauchy-Schwarz bounds the spread.
            sd = np.sqrt(np.maximum(stats.squares / stats.rows - mu**2, 0.0))
            variance = float(np.abs(coef) @ sd) ** 2
        std = safe_std(variance)
        return Moments(mean, std, float(width), std * width)
