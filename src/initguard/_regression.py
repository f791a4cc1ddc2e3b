"""Regression losses: the optimal constant is a location of the targets.

Every loss here keeps the targets themselves (``ValueStats``), so medians,
quantiles and the roots of Huber and log-cosh are exact, and every expected
loss is the framework's element-wise loss averaged over the real targets.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from ._errors import InvalidInputError
from ._loss_base import FLOOR_LOG_PROB, LossSpec, register, safe_std, softplus
from ._plan import Moments, Plan
from ._stats import Stats, ValueStats
from ._validate import check_bool, check_choice, check_number

ACTIVATIONS = ("exp", "softplus", "identity")
LOG_2 = math.log(2.0)
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

# The rate written when every target of an output is 0 (its exact optimum,
# a rate of 0, needs a bias of -inf): the same floor the classifiers use for
# a probability that never occurs.
FLOOR_RATE = math.exp(FLOOR_LOG_PROB)

_SIGN = np.int64(-0x8000000000000000)
_MAGNITUDE = np.int64(0x7FFFFFFFFFFFFFFF)


def _activate(name: str, z: np.ndarray) -> np.ndarray:
    """The output layer's activation: what the loss sees for a bias ``z``."""
    if name == "exp":
        return np.exp(z)
    if name == "softplus":
        return softplus(z)
    return z


def _inverse_activation(name: str, value: np.ndarray) -> np.ndarray:
    """The bias whose activation is ``value`` (> 0 for exp and softplus)."""
    if name == "exp":
        return np.log(value)
    if name == "softplus":
        # log(expm1(v)) written so that it neither overflows for large v nor
        # loses digits for tiny v.
        return value + np.log(-np.expm1(-value))
    return value


def _float_key(x: np.ndarray) -> np.ndarray:
    """Maps float64 to int64 so that order is kept and neighbours differ by 1."""
    bits = np.ascontiguousarray(x, dtype=np.float64).view(np.int64)
    magnitude = bits & _MAGNITUDE
    return np.where(bits < 0, -magnitude, magnitude)


def _key_float(key: np.ndarray) -> np.ndarray:
    bits = np.where(key < 0, np.abs(key) | _SIGN, key).astype(np.int64)
    return bits.view(np.float64)


def _bisect(up: Callable[[np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Returns the smallest float in [lo, hi] where the monotone test ``up`` holds.

    ``up`` must hold at ``hi``. The search halves the interval of float64
    values (not of reals), so it ends at machine precision in at most 64 steps.
    """
    lo_key, hi_key = _float_key(lo), _float_key(hi)
    while True:
        # The distance can exceed int64's range; as uint64 it wraps to the truth.
        active = hi_key.astype(np.uint64) - lo_key.astype(np.uint64) > 1
        if not active.any():
            break
        # Halve without overflowing int64 when the keys span most of the range.
        mid = lo_key // 2 + hi_key // 2 + (lo_key % 2 + hi_key % 2) // 2
        holds = up(_key_float(mid))
        hi_key = np.where(active & holds, mid, hi_key)
        lo_key = np.where(active & ~holds, mid, lo_key)
    lo_value, hi_value = _key_float(lo_key), _key_float(hi_key)
    return np.where(up(lo_value), lo_value, hi_value)


def _middle_root(
    slope: Callable[[np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Returns the middle of the roots of a non-decreasing ``slope`` in [lo, hi].

    ``slope(lo) <= 0 <= slope(hi)`` must hold. When the slope is 0 on a
    whole interval (every point a minimiser), its middle is returned, as the
    median of an even number of values is.
    """
    first = _bisect(lambda b: slope(b) >= 0, lo, hi)
    # The largest b with slope(b) <= 0 is the float just below the smallest
    # b with slope(b) > 0.
    after = _bisect(lambda b: slope(b) > 0, lo, hi)
    last = np.where(slope(after) <= 0, after, np.nextafter(after, -np.inf))
    last = np.maximum(last, first)
    return first / 2 + last / 2


def _quantile_minimiser(values: np.ndarray, q: float) -> np.ndarray:
    """The middle of the minimisers of the mean pinball loss, per column.

    With ``n`` values the slope of the loss between the ``j``-th and the
    ``(j+1)``-th smallest is ``(1 - q) j - q (n - j)``: it changes sign at
    ``j = q n``. When ``q n`` is a whole number every point between those two
    values is a minimiser; otherwise the ``ceil(q n)``-th value is the only one.
    """
    ordered = np.sort(values, axis=0)
    n = ordered.shape[0]
    position = q * n
    whole = round(position)
    # q n is computed in floating point (0.1 * 30 is not exactly 3).
    if abs(position - whole) <= 4 * np.finfo(np.float64).eps * position and 0 < whole < n:
        return ordered[whole - 1] / 2 + ordered[whole] / 2
    return ordered[min(math.ceil(position), n) - 1]


def _huber(residual: np.ndarray, delta: float) -> np.ndarray:
    size = np.abs(residual)
    return np.where(size <= delta, 0.5 * residual**2, delta * (size - 0.5 * delta))


def _huber_minimiser(values: np.ndarray, delta: float) -> np.ndarray:
    """The constant whose clipped residuals sum to zero, per column."""

    def slope(b: np.ndarray) -> np.ndarray:
        return np.clip(b - values, -delta, delta).sum(axis=0)

    # At the median plus delta at least half the clipped residuals are +delta,
    # so the sum is >= 0 there (and <= 0 at the median minus delta).
    median = np.median(values, axis=0)
    return _middle_root(slope, median - delta, median + delta)


@dataclasses.dataclass(frozen=True)
class RegressionLoss(LossSpec):
    """A loss that averages an element-wise error over samples and outputs.

    Subclasses give ``elementwise(values, bias)`` and ``optimal_bias``; they
    may reject targets in ``check_targets``.
    """

    def new_stats(self) -> ValueStats:
        return ValueStats()

    def outputs(self, stats: ValueStats) -> int:
        """Returns the number of target columns (elements per row)."""
        return int(stats.values.shape[1])

    def width(self, stats: ValueStats) -> int:
        return self.outputs(stats)

    def elementwise(self, values: np.ndarray, bias: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def check_targets(self, values: np.ndarray) -> None:
        """Raises InvalidInputError for targets the loss is not defined on."""

    def output_activation(self) -> str:
        """Where the bias lives (the plan's ``activation``)."""
        return self.activation

    def solve(self, stats: Stats) -> Plan:
        if isinstance(stats, ValueStats):
            self.check_targets(stats.values)
        # Targets near float64's limits overflow in the optimum or the loss;
        # the base rejects what comes out inf or NaN with a clear error.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            plan = super().solve(stats)
        if plan.activation != self.output_activation():
            plan = dataclasses.replace(plan, activation=self.output_activation())
        return plan

    def moments(self, stats: ValueStats, bias: np.ndarray) -> Moments:
        # A row is one unit: torch's mean runs over every element, which for
        # K outputs per row equals the mean over rows of the row means, and a
        # summed loss adds K elements per row.
        # A loss outside its domain (a hand-fixed bias that overflows, say)
        # comes out as inf or NaN, for ``solve`` to reject.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            losses = self.elementwise(stats.values, np.asarray(bias, dtype=np.float64))
        per_row = losses.mean(axis=1)
        outputs = self.outputs(stats)
        std = safe_std(float(per_row.var()))
        return Moments(float(per_row.mean()), std, float(outputs), std * outputs)


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


@register
@dataclasses.dataclass(frozen=True)
class MeanAbsoluteError(RegressionLoss):
    """Mean absolute error (torch ``L1Loss``, Keras ``MeanAbsoluteError``).

    The optimum is the median (the middle of the two central values for an
    even count); the loss is the mean absolute deviation from it.

    Args:
        reduction: "mean" or "sum".
        bias: a constant output fixed by hand, or None for the optimum.
    """

    name = "l1"

    def elementwise(self, values: np.ndarray, bias: np.ndarray) -> np.ndarray:
        return np.abs(values - bias)

    def optimal_bias(self, stats: ValueStats) -> tuple[np.ndarray, list[str]]:
        return np.median(stats.values, axis=0), []


@register
@dataclasses.dataclass(frozen=True)
class Huber(RegressionLoss):
    """Huber loss (torch ``HuberLoss``, Keras ``Huber``).

    Per element ``0.5 r**2`` for ``|r| <= delta``, else
    ``delta * (|r| - 0.5 * delta)``. The optimum is the root of
    ``sum clip(b - y, -delta, delta)``, found by bisection to machine
    precision; when the root is a whole interval its middle is taken.

    Args:
        delta: where the loss turns from quadratic to linear (> 0).
            Defaults to 1.0.
        reduction: "mean" or "sum".
        bias: a constant output fixed by hand, or None for the optimum.

    References:
        Huber, "Robust Estimation of a Location Parameter", Annals of
        Mathematical Statistics 35 (1964).
    """

    name = "huber"

    delta: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("delta", self.delta)

    def elementwise(self, values: np.ndarray, bias: np.ndarray) -> np.ndarray:
        return _huber(values - bias, float(self.delta))

    def optimal_bias(self, stats: ValueStats) -> tuple[np.ndarray, list[str]]:
        return _huber_minimiser(stats.values, float(self.delta)), []


@register
@dataclasses.dataclass(frozen=True)
class SmoothL1(RegressionLoss):
    """Smooth L1 loss (torch ``SmoothL1Loss``): Huber with ``delta = beta``, over ``beta``.

    Per element ``0.5 r**2 / beta`` for ``|r| < beta``, else
    ``|r| - 0.5 * beta``; ``beta = 0`` is the L1 loss (optimum the median).

    Args:
        beta: where the loss turns from quadratic to linear (>= 0).
            Defaults to 1.0.
        reduction: "mean" or "sum".
        bias: a constant output fixed by hand, or None for the optimum.

    References:
        Girshick, "Fast R-CNN", ICCV (2015).
    """

    name = "smooth_l1"

    beta: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("beta", self.beta, allow_zero=True)

    def elementwise(self, values: np.ndarray, bias: np.ndarray) -> np.ndarray:
        if self.beta == 0:
            return np.abs(values - bias)
        return _huber(values - bias, float(self.beta)) / self.beta

    def optimal_bias(self, stats: ValueStats) -> tuple[np.ndarray, list[str]]:
        if self.beta == 0:
            return np.median(stats.values, axis=0), []
        return _huber_minimiser(stats.values, float(self.beta)), []


@register
@dataclasses.dataclass(frozen=True)
class Quantile(RegressionLoss):
    """Pinball (quantile) loss ``max(q r, (q - 1) r)`` with ``r = y - b``.

    Neither torch nor Keras ships it; this is the textbook definition. The
    optimum is the ``q``-quantile of the targets: when ``q N`` is a whole
    number every point between the ``q N``-th and the next smallest target
    minimises the loss, and the middle of them is taken.

    Args:
        quantile: the quantile ``q``, in (0, 1). Defaults to 0.5 (half the
            L1 loss).
        reduction: "mean" or "sum".
        bias: a constant output fixed by hand, or None for the optimum.

    References:
        Koenker and Bassett, "Regression Quantiles", Econometrica 46 (1978).
    """

    name = "quantile"

    quantile: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        q = self.quantile
        ok = isinstance(q, (int, float, np.floating)) and not isinstance(q, bool)
        if not (ok and 0 < q < 1):
            raise InvalidInputError(
                f"`quantile` must be a number in (0, 1); received {self.quantile!r}."
            )

    def elementwise(self, values: np.ndarray, bias: np.ndarray) -> np.ndarray:
        residual = values - bias
        q = float(self.quantile)
        return np.maximum(q * residual, (q - 1) * residual)

    def optimal_bias(self, stats: ValueStats) -> tuple[np.ndarray, list[str]]:
        return _quantile_minimiser(stats.values, float(self.quantile)), []


@register
@dataclasses.dataclass(frozen=True)
class PoissonNLL(RegressionLoss):
    """Poisson negative log-likelihood (torch ``PoissonNLLLoss``, Keras ``Poisson``).

    With ``log_input`` the output is a log-rate ``b`` and the loss is
    ``exp(b) - y b``; the optimum is ``log(mean(y))``. Otherwise the output
    is the rate ``r = activation(b)`` and the loss is ``r - y log(r + eps)``,
    minimised at ``r = mean(y) - eps``. Keras ``Poisson`` is
    ``log_input=False, eps=1e-7`` after an exponential or softplus output.
    ``full`` adds torch's Stirling term ``y log y - y + 0.5 log(2 pi y)`` for
    ``y > 1`` (it does not move the optimum). An output whose optimal rate
    is 0 (every target 0) gets a finite floor and a note.

    Args:
        log_input: the output is the log of the rate. Defaults to True.
        full: add the Stirling term. Defaults to False.
        eps: torch's ``eps`` inside the log when ``log_input`` is False
            (> 0). Defaults to 1e-8.
        activation: the output layer's activation when ``log_input`` is
            False: "exp", "softplus" or "identity". Defaults to "exp".
        reduction: "mean" or "sum".
        bias: a constant output fixed by hand, or None for the optimum.
    """

    name = "poisson_nll"

    log_input: bool = True
    full: bool = False
    eps: float = 1e-8
    # An option here, not the class-level constant of the base: the output
    # layer's activation is the user's choice for this loss.
    activation: str = "exp"  # type: ignore[misc]

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("log_input", self.log_input)
        check_bool("full", self.full)
        check_number("eps", self.eps)
        check_choice("activation", self.activation, ACTIVATIONS)

    def output_activation(self) -> str:
        return "identity" if self.log_input else self.activation

    def check_targets(self, values: np.ndarray) -> None:
        if values.size and values.min() < 0:
            lowest = float(values.min())
            raise InvalidInputError(
                f"Poisson `targets` are counts and must be >= 0; received {lowest!r}."
            )

    def elementwise(self, values: np.ndarray, bias: np.ndarray) -> np.ndarray:
        if self.log_input:
            loss = np.exp(bias) - values * bias
        else:
            rate = _activate(self.activation, bias)
            loss = rate - values * np.log(rate + self.eps)
        if self.full:
            counted = np.where(values > 1, values, 1.0)
            stirling = counted * np.log(counted) - counted + 0.5 * np.log(2 * math.pi * counted)
            loss = loss + np.where(values > 1, stirling, 0.0)
        return loss

    def band_scale(self, stats: ValueStats, at_bias: Moments) -> float:
        # The loss's offset depends on the counts (it is negative for large
        # ones), so its own size means nothing; its distance from a perfect
        # prediction (r = y) and the spread of the per-sample loss do.
        y = stats.values
        shift = 0.0 if self.log_input else self.eps
        with np.errstate(divide="ignore", invalid="ignore"):
            perfect = np.where(y > 0, y - y * np.log(y + shift), 0.0)
        if self.full:
            counted = np.where(y > 1, y, 1.0)
            stirling = counted * np.log(counted) - counted + 0.5 * np.log(2 * math.pi * counted)
            perfect = perfect + np.where(y > 1, stirling, 0.0)
        return max(abs(at_bias.mean - float(perfect.mean())), at_bias.std)

    def optimal_bias(self, stats: ValueStats) -> tuple[np.ndarray, list[str]]:
        mean = stats.values.mean(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.log_input:
                floored = mean <= 0
                floor_rate = FLOOR_RATE
                bias = np.log(np.where(floored, floor_rate, mean))
            elif self.activation == "identity":
                # d/dr (r - y log(r + eps)) = 0 at r = mean(y) - eps, which an
                # identity output reaches unless every target is 0 (then the
                # loss falls towards r = -eps, where it is undefined).
                floored = mean <= 0
                floor_rate = 0.0
                bias = np.where(floored, floor_rate, mean - self.eps)
            else:
                # exp and softplus reach only positive rates.
                floored = mean - self.eps <= 0
                floor_rate = FLOOR_RATE
                rate = np.where(floored, floor_rate, mean - self.eps)
                bias = _inverse_activation(self.activation, rate)

        notes = []
        if floored.any():
            where = np.flatnonzero(floored)
            notes.append(
                f"{where.size} output(s) have a mean target too small for a positive rate "
                f"({where[:10].tolist()}); their rate is floored at {floor_rate:g}"
            )
        return bias, notes


@register
@dataclasses.dataclass(frozen=True)
class GaussianNLL(RegressionLoss):
    """Gaussian negative log-likelihood with a mean head and a variance head.

    torch ``GaussianNLLLoss``: ``0.5 (log v + (y - m)**2 / v)`` with the
    variance ``v`` clamped below at ``eps``, plus ``0.5 log(2 pi)`` when
    ``full``. Each of the K targets has its own mean output and its own
    variance output, so the plan's ``bias`` has 2K entries: the K mean-head
    biases first, then the K variance-head biases (before
    ``variance_activation``). The optimum is ``m = mean(y)`` and
    ``v = var(y)`` (population variance, at least ``eps``); the loss is then
    ``0.5 (log v + 1)`` per output when ``var(y) >= eps``. The plan's
    ``activation`` reads ``"identity+<variance_activation>"``. A single
    variance output shared by all K targets (torch's homoscedastic shapes)
    is not supported yet.

    Args:
        full: add the constant ``0.5 log(2 pi)``. Defaults to False.
        eps: torch's lower clamp on the variance (> 0). Defaults to 1e-6.
        variance_activation: the variance head's activation: "exp" (the
            head predicts a log-variance), "softplus" or "identity".
            Defaults to "exp".
        reduction: "mean" or "sum".
        bias: 2K constants fixed by hand (means, then variance-head
            biases), or None for the optimum.

    References:
        Nix and Weigend, "Estimating the mean and variance of the target
        probability distribution", ICNN (1994).
    """

    name = "gaussian_nll"

    full: bool = False
    eps: float = 1e-6
    variance_activation: str = "exp"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("full", self.full)
        check_number("eps", self.eps)
        check_choice("variance_activation", self.variance_activation, ACTIVATIONS)

    def width(self, stats: ValueStats) -> int:
        return 2 * self.outputs(stats)

    def output_activation(self) -> str:
        return f"identity+{self.variance_activation}"

    def elementwise(self, values: np.ndarray, bias: np.ndarray) -> np.ndarray:
        k = values.shape[1]
        mean, variance = bias[:k], _activate(self.variance_activation, bias[k:])
        variance = np.maximum(variance, self.eps)
        loss = 0.5 * (np.log(variance) + (values - mean) ** 2 / variance)
        return loss + HALF_LOG_2PI if self.full else loss

    def band_scale(self, stats: ValueStats, at_bias: Moments) -> float:
        # A likelihood's offset is arbitrary (the loss falls without bound as
        # the variance shrinks): the per-sample spread sets the scale.
        return at_bias.std

    def optimal_bias(self, stats: ValueStats) -> tuple[np.ndarray, list[str]]:
        mean = stats.values.mean(axis=0)
        variance = ((stats.values - mean) ** 2).mean(axis=0)
        small = variance < self.eps
        variance = np.maximum(variance, self.eps)
        notes = []
        if small.any():
            where = np.flatnonzero(small)
            notes.append(
                f"{where.size} output(s) have a target variance below eps={self.eps:g} "
                f"({where[:10].tolist()}); their variance is set to eps, where torch clamps it"
            )
        head = _inverse_activation(self.variance_activation, variance)
        return np.concatenate([mean, head]), notes


@register
@dataclasses.dataclass(frozen=True)
class MeanSquaredLogarithmicError(RegressionLoss):
    """Keras ``MeanSquaredLogarithmicError``.

    Per element ``(log(1 + max(p, eps)) - log(1 + max(y, eps)))**2``: Keras
    replaces predictions and targets below ``eps`` (zeros and negatives) by
    ``eps``. The optimum is ``p = expm1(mean(log1p(max(y, eps))))``; the loss
    is the variance of ``log1p(max(y, eps))``.

    Args:
        eps: Keras's ``backend.epsilon()`` (> 0). Defaults to 1e-7.
        reduction: "mean" or "sum".
        bias: a constant output fixed by hand, or None for the optimum.
    """

    name = "msle"

    eps: float = 1e-7

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("eps", self.eps)

    def _log_targets(self, values: np.ndarray) -> np.ndarray:
        return np.log1p(np.maximum(values, self.eps))

    def elementwise(self, values: np.ndarray, bias: np.ndarray) -> np.ndarray:
        return (np.log1p(np.maximum(bias, self.eps)) - self._log_targets(values)) ** 2

    def optimal_bias(self, stats: ValueStats) -> tuple[np.ndarray, list[str]]:
        notes = []
        negative = int((stats.values < 0).sum())
        if negative:
            notes.append(
                f"{negative} target(s) are negative; the loss counts them as eps={self.eps:g}"
            )
        return np.expm1(self._log_targets(stats.values).mean(axis=0)), notes


@register
@dataclasses.dataclass(frozen=True)
class LogCosh(RegressionLoss):
    """Keras ``LogCosh``: ``log(cosh(b - y))``, computed without overflow.

    The optimum is the root of ``sum tanh(b - y)`` (the loss is strictly
    convex), found by bisection to machine precision.

    Args:
        reduction: "mean" or "sum".
        bias: a constant output fixed by hand, or None for the optimum.
    """

    name = "log_cosh"

    def elementwise(self, values: np.ndarray, bias: np.ndarray) -> np.ndarray:
        # log cosh x = |x| + log(1 + exp(-2|x|)) - log 2 never overflows.
        size = np.abs(bias - values)
        return size + np.log1p(np.exp(-2 * size)) - LOG_2

    def optimal_bias(self, stats: ValueStats) -> tuple[np.ndarray, list[str]]:
        values = stats.values

        def slope(b: np.ndarray) -> np.ndarray:
            return np.tanh(b - values).sum(axis=0)

        return _middle_root(slope, values.min(axis=0), values.max(axis=0)), []
