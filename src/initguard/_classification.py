"""Softmax and sigmoid losses: optimal logits and the loss they imply.

Every loss here is linear in the target, so its mean over the training set
depends on the targets only through per-class (or per-output) mass, and its
spread through their second moments. The optimum is closed-form for the
cross-entropies and the KL divergence; the focal losses are minimised
numerically.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, ClassVar

import numpy as np

from ._errors import InvalidInputError
from ._loss_base import FLOOR_LOG_PROB, LossSpec, log_softmax, register, safe_std, softplus
from ._plan import Moments
from ._stats import MAX_CLASSES, BinaryStats, ClassStats
from ._validate import (
    check_bool,
    check_fraction,
    check_int,
    check_optional_int,
    check_vector,
    show,
)

# Keras's backend epsilon: it clips probabilities to [eps, 1 - eps] inside
# its focal losses and to [eps, 1] inside its KL divergence.
KERAS_EPSILON = 1e-7

# The largest logit initguard writes for a sigmoid output that is always 0 or
# always 1 (its exact optimum is infinite); the same margin as the softmax floor.
SIGMOID_LIMIT = -FLOOR_LOG_PROB


# ----------------------------------------------------------------------------
# Option checks shared by the losses below.


def _check_gamma(value: Any) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if ok and math.isfinite(value) and 0 <= value <= 100:
        return float(value)
    raise InvalidInputError(f"`gamma` must be a number in [0, 100]; received {value!r}.")


def _check_num_classes(value: Any) -> None:
    if value is not None:
        check_int("num_classes", value, 1, MAX_CLASSES)


def _class_weight_vector(value: Any) -> Any:
    """Accepts Keras's ``{class: weight}`` mapping as well as a sequence."""
    if not isinstance(value, dict):
        return value
    try:
        keys = sorted(value)
    except TypeError:
        keys = list(value)
    if keys != list(range(len(keys))):
        raise InvalidInputError(
            f"`class_weight` keys must be 0..C-1 with none missing; received {keys[:10]}."
        )
    return [value[k] for k in keys]


def _check_weights(name: str, value: Any, width: int | None) -> np.ndarray | None:
    vector = check_vector(name, _class_weight_vector(value), width, positive=False)
    if vector is not None and np.any(vector < 0):
        raise InvalidInputError(f"`{name}` must be >= 0; received {show(vector)}.")
    return vector


# ----------------------------------------------------------------------------
# Softmax helpers.


def _square(value: float) -> float:
    # Python's float power raises on overflow; a product gives inf, which the
    # plan's finiteness check then reports with the argument to blame.
    return value * value


def _log_probs_with_floor(mass: np.ndarray, what: str) -> tuple[np.ndarray, list[str]]:
    """Returns ``log(mass / sum(mass))`` with a finite floor for zero mass."""
    seen = mass > 0
    if not seen.any():
        raise InvalidInputError(
            f"`targets` give every class zero mass ({what}): no output is better than another."
        )
    log_p = np.full(mass.shape, -np.inf)
    log_p[seen] = np.log(mass[seen] / mass.sum())
    return _floor_unseen(log_p, seen)


def _floor_unseen(log_p: np.ndarray, seen: np.ndarray) -> tuple[np.ndarray, list[str]]:
    notes = []
    if not seen.all():
        # Far below every seen class, and all unseen classes together hold at
        # most 1e-8 of the probability, so the floor does not move the loss at
        # six decimals; yet finite: an infinite logit would make a smoothed
        # loss infinite and cannot be written into a model.
        unseen = np.flatnonzero(~seen)
        floor = min(
            FLOOR_LOG_PROB - math.log(unseen.size), float(log_p[seen].min()) - math.log(100.0)
        )
        log_p = log_p.copy()
        log_p[~seen] = floor
        shown = ", ".join(str(i) for i in unseen[:10]) + (" ..." if unseen.size > 10 else "")
        notes.append(
            f"{unseen.size} class(es) never occur in the targets, or have weight 0 "
            f"({shown}); their bias is floored at {floor:.4f} instead of -inf"
        )
    return log_p, notes


def _linear_moments(stats: ClassStats, k: np.ndarray, shift: float) -> tuple[float, float]:
    """Mean and spread of per-sample losses ``k . y_n + shift``.

    ``y_n`` is a one-hot row for class indices, else the probability row.
    """
    n = stats.samples
    width = k.shape[0]
    mass = np.pad(stats.mass, (0, width - stats.mass.shape[0]))
    first = float(k @ mass)
    mean = first / n + shift
    if not stats.probabilities or stats.one_hot:
        freq = mass / mass.sum()
        return mean, safe_std(float(freq @ (k + shift - mean) ** 2))
    if stats.gram is not None:
        variance = float(k @ stats.gram @ k) / n - _square(first / n)
        return mean, safe_std(variance)
    # Without the cross moments, Minkowski's inequality bounds the spread.
    sd = np.sqrt(np.maximum(stats.diag_sq / n - (mass / n) ** 2, 0.0))
    return mean, float(np.abs(k) @ sd)


@register
@dataclasses.dataclass(frozen=True)
class CrossEntropy(LossSpec):
    """Softmax cross-entropy over class indices or probability rows.

    The optimum is ``p = a / sum(a)`` for the per-class target mass ``a``
    (counts, smoothed and weighted as the framework does), so the bias is
    ``log p``. A class with no mass gets a finite floor and a note.

    Class indices may have any shape (``[batch]``, ``[batch, tokens]``,
    ``[batch, height, width]``): every element is a sample and elements equal
    to ``ignore_index`` are left out. Probability rows have the classes along
    ``class_axis`` and every other position is a sample.

    Args:
        num_classes: output width; None infers it from the largest label
            (or from ``weight``). Defaults to None.
        weight: torch's per-class ``weight``; the mean divides by the summed
            weights of the samples (by the sample count for probability
            targets, as torch does). Defaults to None.
        class_weight: Keras's ``class_weight`` from ``fit``: a sequence or a
            ``{class: weight}`` dict; the mean divides by the number of
            samples. Defaults to None.
        label_smoothing: torch's and Keras's smoothing towards uniform, in
            [0, 1]. Defaults to 0.
        ignore_index: class index left out of the loss (torch's default -100,
            Keras's ``ignore_class``), or None. Defaults to -100.
        class_axis: axis of probability targets holding the classes (1 for
            torch, -1 for Keras). Defaults to 1.
        reduction: "mean" or "sum". Defaults to "mean".
        bias: a constant output fixed by hand, or None for the optimum.

    References:
        Szegedy, Vanhoucke, Ioffe, Shlens and Wojna, "Rethinking the Inception
        Architecture for Computer Vision", CVPR 2016 (label smoothing).
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
        _check_num_classes(self.num_classes)
        if self.weight is not None and self.class_weight is not None:
            raise InvalidInputError(
                "Give `weight` (torch) or `class_weight` (Keras), not both; received "
                f"weight={self.weight!r}, class_weight={self.class_weight!r}."
            )
        check_fraction("label_smoothing", self.label_smoothing)
        check_optional_int("ignore_index", self.ignore_index)
        check_int("class_axis", self.class_axis, -64, 63)
        for name in ("weight", "class_weight"):
            _check_weights(name, getattr(self, name), self.num_classes)

    def new_stats(self) -> ClassStats:
        return ClassStats(
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            class_axis=self.class_axis,
        )

    def width(self, stats: ClassStats) -> int:
        if self.num_classes is not None:
            return self.num_classes
        given = self.weight if self.weight is not None else self.class_weight
        vector = _check_weights("weight", given, None)
        declared = 0 if vector is None or stats.probabilities else vector.shape[0]
        return max(stats.mass.shape[0], declared)

    def _weights(self, width: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """Returns (per-sample factor s, per-class factor u, divide-by-weights flag)."""
        ones = np.ones(width)
        if self.weight is not None:
            vector = _check_weights("weight", self.weight, width)
            assert vector is not None
            return ones, vector, True
        if self.class_weight is not None:
            vector = _check_weights("class_weight", self.class_weight, width)
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
                "`class_weight` with soft (not one-hot) probability `targets` is not "
                "supported: Keras weights each sample by its arg-max class, which the "
                "statistics do not keep. Pass class indices or one-hot rows."
            )
        # Class indices and one-hot rows: a(y) = s_y ((1 - eps) u_y e_y + eps / C u).
        # Soft rows (s = 1): a_n = u * ((1 - eps) q_n + eps / C).
        return (1 - eps) * s * u * counts + eps / width * u * float(s @ counts)

    def optimal_bias(self, stats: ClassStats) -> tuple[np.ndarray, list[str]]:
        log_p, notes = _log_probs_with_floor(
            self._target_mass(stats), "after `weight`, `class_weight` and smoothing"
        )
        if stats.probabilities and stats.gram is None and not stats.one_hot:
            notes.append("soft targets over many classes: the loss spread is an upper bound")
        return log_p, notes

    def moments(self, stats: ClassStats, bias: np.ndarray) -> Moments:
        width = self.width(stats)
        g = log_softmax(np.asarray(bias, dtype=np.float64))
        eps = self.label_smoothing
        s, u, divide_by_weights = self._weights(width)

        if stats.probabilities and not stats.one_hot:
            # Per sample: -((1 - eps) (u g) . q_n + eps / C sum(u g)), mean over N.
            h = u * g
            mean, std = _linear_moments(stats, -(1 - eps) * h, -eps / width * float(h.sum()))
            return Moments(mean, std, 1.0, std)

        # Per class y: the loss of one sample, and its share of the normaliser.
        counts = self._counts(stats)
        loss_y = -s * ((1 - eps) * u * g + eps / width * float(u @ g))
        norm_y = u if divide_by_weights and not stats.probabilities else np.ones(width)
        freq = counts / counts.sum()
        norm = float(freq @ norm_y)
        if norm <= 0:
            raise InvalidInputError(
                "The summed class `weight` of the samples present is 0: torch's mean is 0/0."
            )
        mean = float(freq @ loss_y) / norm
        # A mean divided by summed weights is a ratio estimator: its spread per
        # sample is that of loss - mean * weight, over the mean weight.
        ratio_var = float(freq @ ((loss_y - mean * norm_y) / norm) ** 2)
        sum_var = float(freq @ loss_y**2) - _square(float(freq @ loss_y))
        return Moments(mean, safe_std(ratio_var), norm, safe_std(sum_var))


@register
@dataclasses.dataclass(frozen=True)
class KLDivergence(LossSpec):
    """KL divergence from soft targets ``q`` to a softmax output ``p``.

    Per sample the loss is ``sum_c q_c (log q_c - log p_c)``, minimised at
    ``p = mean(q)``, so the bias is ``log mean(q)``. This is torch's
    ``KLDivLoss`` applied to ``log_softmax`` of the logits, and Keras's
    ``KLDivergence`` on a softmax output when ``epsilon`` is Keras's 1e-7
    (Keras clips targets and probabilities to ``[epsilon, 1]``, which adds a
    little mass to every class).

    Targets are probability rows with the classes along ``class_axis``; every
    other position is a sample.

    Args:
        num_classes: output width, or None to take it from the targets.
            Defaults to None.
        log_target: the targets are ``log q`` (torch's ``log_target``).
            Defaults to False.
        epsilon: clip targets and probabilities to ``[epsilon, 1]`` as Keras
            does (``keras.backend.epsilon()``, 1e-7), or 0 for torch.
            Defaults to 0.
        class_axis: axis of the targets holding the classes (1 for torch, -1
            for Keras). Defaults to 1.
        reduction: torch's "mean" (divides the sum by every element, classes
            included), "batchmean" (divides by the batch size, the
            mathematical KL for ``[batch, classes]`` outputs), "sum", or
            "sum_over_batch_size" (Keras: the per-position KL averaged over
            batch and positions). Defaults to "mean", torch's default.
        bias: a constant output fixed by hand, or None for the optimum.
    """

    name = "kl_div"
    activation = "softmax"
    reductions: ClassVar[tuple[str, ...]] = ("mean", "batchmean", "sum", "sum_over_batch_size")

    num_classes: int | None = None
    log_target: bool = False
    epsilon: float = 0.0
    class_axis: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_num_classes(self.num_classes)
        check_bool("log_target", self.log_target)
        check_fraction("epsilon", self.epsilon, upper_open=True)
        check_int("class_axis", self.class_axis, -64, 63)

    def new_stats(self) -> ClassStats:
        return ClassStats(
            num_classes=self.num_classes,
            class_axis=self.class_axis,
            kind="probabilities",
            log_targets=self.log_target,
            target_floor=self.epsilon,
        )

    def width(self, stats: ClassStats) -> int:
        return self.num_classes or stats.mass.shape[0]

    def optimal_bias(self, stats: ClassStats) -> tuple[np.ndarray, list[str]]:
        return _log_probs_with_floor(stats.mass.copy(), "every probability is 0")

    def moments(self, stats: ClassStats, bias: np.ndarray) -> Moments:
        width = self.width(stats)
        log_p = log_softmax(np.asarray(bias, dtype=np.float64))
        if self.epsilon > 0:
            log_p = np.maximum(log_p, math.log(self.epsilon))

        # Per sample: sum_c q log q - q . log p.
        n = stats.samples
        mean, cross_std = _linear_moments(stats, -log_p, 0.0)
        mean += stats.neg_entropy / n
        if stats.gram is not None or stats.one_hot:
            quad = _square(mean - stats.neg_entropy / n) + _square(cross_std)
            second = (
                stats.neg_entropy_sq / n - 2 * float(stats.neg_entropy_cross @ log_p) / n + quad
            )
            std = safe_std(second - _square(mean))
        else:
            entropy_var = stats.neg_entropy_sq / n - _square(stats.neg_entropy / n)
            std = safe_std(entropy_var) + cross_std

        # torch's "mean" divides by classes too; "batchmean" by rows, which
        # for dense targets hold several positions each.
        per_row = n / max(stats.rows, 1)
        scale = {"mean": 1.0 / width, "batchmean": per_row}.get(self.reduction, 1.0)
        return Moments(mean * scale, std * scale, 1.0, std)


@register
@dataclasses.dataclass(frozen=True)
class SoftmaxFocal(LossSpec):
    """Keras's categorical focal cross-entropy on a softmax output.

    Per sample the loss is ``-sum_c alpha_c (1 - p_c)**gamma y_c log p_c``
    with ``y`` label-smoothed as Keras does, and ``p`` clipped to
    ``[1e-7, 1 - 1e-7]``. It has no closed-form optimum: initguard solves the
    optimality conditions over the probability simplex numerically (for
    ``gamma = 0`` it is cross-entropy and the optimum is ``alpha``-weighted
    frequencies).

    References:
        Lin, Goyal, Girshick, He and Dollar, "Focal Loss for Dense Object
        Detection", ICCV 2017.

    Args:
        alpha: class balancing factor, a number or one per class (Keras's
            default 0.25), or None for none (1). Defaults to 0.25.
        gamma: focusing parameter in [0, 100]. Defaults to 2.
        label_smoothing: Keras's smoothing towards uniform, in [0, 1].
            Defaults to 0.
        num_classes: output width; None infers it from the targets.
            Defaults to None.
        ignore_index: class index left out of the loss, or None.
            Defaults to None.
        class_axis: axis of probability targets holding the classes.
            Defaults to -1 (Keras).
        reduction: "mean" or "sum". Defaults to "mean".
        bias: a constant output fixed by hand, or None for the optimum.
    """

    name = "softmax_focal"
    activation = "softmax"

    alpha: Any = 0.25
    gamma: float = 2.0
    label_smoothing: float = 0.0
    num_classes: int | None = None
    ignore_index: int | None = None
    class_axis: int = -1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_num_classes(self.num_classes)
        _check_weights("alpha", self.alpha, self.num_classes)
        _check_gamma(self.gamma)
        check_fraction("label_smoothing", self.label_smoothing)
        check_optional_int("ignore_index", self.ignore_index)
        check_int("class_axis", self.class_axis, -64, 63)

    def new_stats(self) -> ClassStats:
        return ClassStats(
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            class_axis=self.class_axis,
        )

    def width(self, stats: ClassStats) -> int:
        return self.num_classes or stats.mass.shape[0]

    def _alpha(self, width: int) -> np.ndarray:
        alpha = _check_weights("alpha", self.alpha, width)
        return np.ones(width) if alpha is None else alpha

    def _smoothed_mean(self, stats: ClassStats) -> np.ndarray:
        width = self.width(stats)
        mass = np.pad(stats.mass, (0, width - stats.mass.shape[0]))
        eps = self.label_smoothing
        return (1 - eps) * mass / stats.samples + eps / width

    def optimal_bias(self, stats: ClassStats) -> tuple[np.ndarray, list[str]]:
        width = self.width(stats)
        weight = self._alpha(width) * self._smoothed_mean(stats)
        seen = weight > 0
        if not seen.any():
            raise InvalidInputError(
                "`targets` give every class zero mass after `alpha`: no output is better "
                "than another."
            )
        log_p = np.full(width, -np.inf)
        log_p[seen] = _focal_simplex_optimum(weight[seen], float(self.gamma))
        return _floor_unseen(log_p, seen)

    def _per_class_loss(self, bias: np.ndarray, width: int) -> np.ndarray:
        p = np.exp(log_softmax(np.asarray(bias, dtype=np.float64)))
        p = np.clip(p, KERAS_EPSILON, 1 - KERAS_EPSILON)
        return -self._alpha(width) * (1 - p) ** self.gamma * np.log(p)

    def moments(self, stats: ClassStats, bias: np.ndarray) -> Moments:
        width = self.width(stats)
        eps = self.label_smoothing
        k = self._per_class_loss(bias, width)
        mean, std = _linear_moments(stats, (1 - eps) * k, eps / width * float(k.sum()))
        return Moments(mean, std, 1.0, std)


def _log_focal_slope(logit: np.ndarray, gamma: float) -> np.ndarray:
    """``log(-f'(p))`` for ``f(p) = -(1 - p)**gamma log p`` at ``p = sigmoid(logit)``.

    ``-f'(p) = (1 - p)**gamma / p - gamma (1 - p)**(gamma - 1) log p`` is
    positive and decreasing in ``p`` (``f`` is convex), which makes the
    optimality conditions below one-dimensional root finding.
    """
    log_p = -softplus(-logit)
    log_q = -softplus(logit)
    first = gamma * log_q - log_p
    if gamma == 0:
        return first
    second = math.log(gamma) + (gamma - 1) * log_q + np.log(softplus(-logit))
    return np.logaddexp(first, second)


def _focal_simplex_optimum(weight: np.ndarray, gamma: float) -> np.ndarray:
    """Log-probabilities minimising ``sum_c weight_c f(p_c)`` over the simplex.

    At the optimum ``weight_c (-f'(p_c))`` is the same for every class (the
    Lagrange multiplier ``mu``). For a given ``mu`` each ``p_c`` solves a
    monotone equation (bisection in logit space); ``sum_c p_c`` falls as
    ``mu`` grows, and false position on ``log mu`` finds where it is 1.
    Classes with equal weight share one solve, which keeps a 50k-class
    vocabulary cheap.
    """
    if weight.shape[0] == 1:
        return np.zeros(1)
    if gamma == 0:
        return np.log(weight / weight.sum())
    unique, inverse = np.unique(weight, return_inverse=True)
    copies = np.bincount(inverse).astype(np.float64)
    log_weight = np.log(unique)

    def probabilities(log_mu: float) -> np.ndarray:
        target = log_mu - log_weight
        low = np.full(unique.shape, -60.0)
        high = np.full(unique.shape, 60.0)
        # 52 halvings of [-60, 60] pin each logit to ~3e-14.
        for _ in range(52):
            mid = 0.5 * (low + high)
            above = _log_focal_slope(mid, gamma) > target
            low = np.where(above, mid, low)
            high = np.where(above, high, mid)
        return 1.0 / (1.0 + np.exp(-0.5 * (low + high)))

    def excess(log_mu: float) -> float:
        return math.log(float(copies @ probabilities(log_mu)))

    # p_c ~ weight_c / mu for small p_c, so mu ~ sum(weight) brackets well;
    # a few widenings reach any multiplier that finite weights can imply.
    total = float(copies @ unique)
    if not 0 < total < 1e300:
        raise InvalidInputError(
            f"The focal-loss class weights (`alpha` times target mass) sum to {total!r}; "
            "they must be positive and finite."
        )
    centre = math.log(total)
    low, high = centre - 1.0, centre + 1.0
    for _ in range(200):
        if excess(low) >= 0:
            break
        low -= 8.0
    for _ in range(200):
        if excess(high) <= 0:
            break
        high += 8.0
    f_low, f_high = excess(low), excess(high)
    side = 0
    for _ in range(200):
        gap = f_high - f_low
        x = high - f_high * (high - low) / gap if gap else 0.5 * (low + high)
        if not low < x < high:
            x = 0.5 * (low + high)
        fx = excess(x)
        if abs(fx) < 1e-15 or high - low < 1e-12 * (1.0 + abs(x)):
            low = high = x
            break
        # Illinois: halve the stale end so false position keeps converging.
        if fx > 0:
            low, f_low = x, fx
            if side == 1:
                f_high *= 0.5
            side = 1
        else:
            high, f_high = x, fx
            if side == -1:
                f_low *= 0.5
            side = -1
    p = probabilities(0.5 * (low + high))[inverse]
    return np.log(p / p.sum())


# ----------------------------------------------------------------------------
# Sigmoid losses.


def _binary_moments(stats: BinaryStats, intercept: np.ndarray, slope: np.ndarray) -> Moments:
    """Moments of the element mean when each element's loss is ``intercept + slope * y``."""
    width = intercept.shape[0]
    mu = stats.sums / stats.samples
    mean = float((intercept + slope * mu).mean())
    coef = slope / width
    if stats.gram is not None:
        cov = stats.gram / stats.samples - np.outer(mu, mu)
        variance = float(coef @ cov @ coef)
    else:
        # Without the cross moments, Cauchy-Schwarz bounds the spread.
        sd = np.sqrt(np.maximum(stats.squares / stats.samples - mu**2, 0.0))
        variance = _square(float(np.abs(coef) @ sd))
    std = safe_std(variance)
    return Moments(mean, std, float(width), std * width)


def _clip_logits(logits: np.ndarray, rates: np.ndarray) -> tuple[np.ndarray, list[str]]:
    degenerate = np.flatnonzero((rates <= 0) | (rates >= 1) | ~(np.abs(logits) <= SIGMOID_LIMIT))
    notes = []
    if degenerate.size:
        notes.append(
            f"{degenerate.size} output(s) are (almost) always 0 or always 1 "
            f"({degenerate[:10].tolist()}); their bias is clipped to +-{SIGMOID_LIMIT:.4f}"
        )
    clipped = np.where(rates <= 0, -SIGMOID_LIMIT, np.where(rates >= 1, SIGMOID_LIMIT, logits))
    return np.clip(clipped, -SIGMOID_LIMIT, SIGMOID_LIMIT), notes


@dataclasses.dataclass(frozen=True)
class _SigmoidLoss(LossSpec):
    """Shared parts of the sigmoid losses: statistics, width and spread."""

    activation = "sigmoid"

    class_axis: int = 1

    def new_stats(self) -> BinaryStats:
        return BinaryStats(class_axis=self.class_axis)

    def width(self, stats: BinaryStats) -> int:
        return int(stats.sums.shape[0])


@register
@dataclasses.dataclass(frozen=True)
class BinaryCrossEntropy(_SigmoidLoss):
    """Sigmoid cross-entropy for one or many binary outputs.

    Per output the optimum is ``logit(w p / (w p + 1 - p))`` for positive
    rate ``p`` and ``pos_weight`` ``w``. An output that is always 0 or
    always 1 gets a finite clip and a note. ``prior`` fixes the output
    probability by hand instead (the expected loss is then computed for it).

    Targets are ``[N]`` (one output), ``[N, K]``, or dense ``[N, K, d1, ...]``
    with the outputs along ``class_axis`` (every position a sample).

    Args:
        pos_weight: torch's per-output weight of positives (> 0), a number or
            one per output. Defaults to None.
        weight: torch's per-output rescaling of the loss (>= 0); also
            ``MultiLabelSoftMarginLoss``'s ``weight``. Defaults to None.
        label_smoothing: Keras's smoothing towards 0.5 (``y (1 - eps) + eps / 2``),
            in [0, 1]. Defaults to 0.
        prior: the positive rate to start from, in (0, 1), a number or one per
            output: the bias is ``logit(prior)``. Not with ``bias``.
            Defaults to None (the optimum).
        class_axis: axis of dense targets holding the outputs (1 for torch,
            -1 for Keras). Defaults to 1.
        reduction: "mean" or "sum". Defaults to "mean".
        bias: a constant output fixed by hand, or None for the optimum.
    """

    name = "binary_cross_entropy"

    pos_weight: Any = None
    weight: Any = None
    label_smoothing: float = 0.0
    prior: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_vector("pos_weight", self.pos_weight, None)
        _check_weights("weight", self.weight, None)
        check_fraction("label_smoothing", self.label_smoothing)
        check_int("class_axis", self.class_axis, -64, 63)
        if self.prior is not None and self.bias is not None:
            raise InvalidInputError(
                "Give `prior` or `bias`, not both; received "
                f"prior={self.prior!r}, bias={self.bias!r}."
            )
        self._prior(None)

    def _prior(self, width: int | None) -> np.ndarray | None:
        prior = check_vector("prior", self.prior, width)
        if prior is not None and np.any(prior >= 1):
            raise InvalidInputError(f"`prior` must lie in (0, 1); received {show(prior)}.")
        return prior

    def fixed_bias(self, width: int) -> tuple[np.ndarray, str] | None:
        prior = self._prior(width)
        if prior is None:
            return super().fixed_bias(width)
        return np.log(prior) - np.log1p(-prior), "bias fixed by hand from `prior`"

    def _factors(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        pos = check_vector("pos_weight", self.pos_weight, width)
        scale = _check_weights("weight", self.weight, width)
        return (
            pos if pos is not None else np.ones(width),
            scale if scale is not None else np.ones(width),
        )

    def _rates(self, stats: BinaryStats) -> np.ndarray:
        eps = self.label_smoothing
        return stats.sums / stats.samples * (1 - eps) + eps / 2

    def optimal_bias(self, stats: BinaryStats) -> tuple[np.ndarray, list[str]]:
        p = self._rates(stats)
        pos, _ = self._factors(self.width(stats))
        with np.errstate(divide="ignore"):
            logits = np.log(pos * p) - np.log1p(-p)
        return _clip_logits(logits, p)

    def moments(self, stats: BinaryStats, bias: np.ndarray) -> Moments:
        eps = self.label_smoothing
        pos, scale = self._factors(self.width(stats))
        b = np.asarray(bias, dtype=np.float64)

        # Per element: scale * (sp(b) + t (pos * sp(-b) - sp(b))) with the
        # smoothed target t = y (1 - eps) + eps / 2: linear in y.
        slope_t = scale * (pos * softplus(-b) - softplus(b))
        intercept = scale * softplus(b) + slope_t * eps / 2
        return _binary_moments(stats, intercept, slope_t * (1 - eps))


@register
@dataclasses.dataclass(frozen=True)
class SigmoidFocal(_SigmoidLoss):
    """Sigmoid focal loss for one or many binary outputs.

    Per element, with ``s = sigmoid(z)`` and ``p_t = t s + (1 - t)(1 - s)``,
    the loss is ``alpha_t (1 - p_t)**gamma BCE(t, z)``; ``alpha_t`` is
    ``alpha`` for positives and ``1 - alpha`` for negatives, or 1 when
    ``alpha`` is None. This is torchvision's ``sigmoid_focal_loss`` and
    Keras's ``BinaryFocalCrossentropy(from_logits=True)`` (``alpha=None``
    for ``apply_class_balancing=False``; Keras smooths ``t`` towards 0.5).
    The optimum has no closed form: initguard minimises the expected loss of
    each output numerically. It is not the RetinaNet prior of 0.01, which the
    paper chose by hand (pass ``bias`` for that).

    Targets must be 0 or 1.

    References:
        Lin, Goyal, Girshick, He and Dollar, "Focal Loss for Dense Object
        Detection", ICCV 2017.

    Args:
        alpha: weight of positives in [0, 1], or None for no class balancing.
            Defaults to 0.25 (torchvision's default).
        gamma: focusing parameter in [0, 100]. Defaults to 2.
        label_smoothing: Keras's smoothing towards 0.5, in [0, 1].
            Defaults to 0.
        class_axis: axis of dense targets holding the outputs. Defaults to 1.
        reduction: "mean" or "sum". Defaults to "mean".
        bias: a constant output fixed by hand, or None for the optimum.
    """

    name = "sigmoid_focal"

    alpha: float | None = 0.25
    gamma: float = 2.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha is not None:
            check_fraction("alpha", self.alpha)
        _check_gamma(self.gamma)
        check_fraction("label_smoothing", self.label_smoothing)
        check_int("class_axis", self.class_axis, -64, 63)

    def _element(self, target: float, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The loss for a target value (after smoothing) and its derivative in the logit."""
        gamma = float(self.gamma)
        s = np.exp(-softplus(-b))
        bce = target * softplus(-b) + (1 - target) * softplus(b)
        # 1 - p_t, written so that neither end loses precision.
        miss = target * np.exp(-softplus(b)) + (1 - target) * s
        factor = miss**gamma
        alpha = self.alpha
        weight = 1.0 if alpha is None else target * alpha + (1 - target) * (1 - alpha)
        loss = weight * factor * bce
        d_factor = gamma * miss ** (gamma - 1) * (1 - 2 * target) * s * (1 - s) if gamma else 0.0
        return loss, weight * (d_factor * bce + factor * (s - target))

    def _targets(self) -> tuple[float, float]:
        eps = self.label_smoothing
        return eps / 2, 1 - eps / 2

    def _expected(self, rates: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        low, high = self._targets()
        loss0, grad0 = self._element(low, b)
        loss1, grad1 = self._element(high, b)
        return rates * loss1 + (1 - rates) * loss0, rates * grad1 + (1 - rates) * grad0

    def optimal_bias(self, stats: BinaryStats) -> tuple[np.ndarray, list[str]]:
        self._require_binary(stats)
        rates = stats.sums / stats.samples
        # Smoothed targets are never exactly 0 or 1, so every optimum is finite.
        inner = ((rates > 0) & (rates < 1)) | (self.label_smoothing > 0)

        # A coarse grid finds the basin; bisection on the derivative between
        # the grid neighbours of the best point then pins the minimum down.
        grid = np.linspace(-SIGMOID_LIMIT, SIGMOID_LIMIT, 369)
        values, _ = self._expected(rates[:, None], grid[None, :])
        best = values.argmin(axis=1)
        low = grid[np.maximum(best - 1, 0)]
        high = grid[np.minimum(best + 1, grid.size - 1)]
        for _ in range(60):
            mid = 0.5 * (low + high)
            _, slope = self._expected(rates, mid)
            low = np.where(slope < 0, mid, low)
            high = np.where(slope < 0, high, mid)
        logits = 0.5 * (low + high)
        return _clip_logits(np.where(inner, logits, 0.0), np.where(inner, 0.5, rates))

    def _require_binary(self, stats: BinaryStats) -> None:
        if not stats.binary:
            raise InvalidInputError(
                "`targets` of loss 'sigmoid_focal' must be 0 or 1 (soft targets are not "
                "supported: the focal loss is not linear in them)."
            )

    def moments(self, stats: BinaryStats, bias: np.ndarray) -> Moments:
        self._require_binary(stats)
        b = np.asarray(bias, dtype=np.float64)
        low, high = self._targets()
        loss0, _ = self._element(low, b)
        loss1, _ = self._element(high, b)
        return _binary_moments(stats, loss0, loss1 - loss0)
