"""What every loss description shares, and the registry of loss names."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np

from ._errors import InvalidInputError
from ._plan import Moments, Plan
from ._stats import ClassStats, Stats
from ._validate import REDUCTIONS, check_bias, check_reduction, show

LOSSES: dict[str, type[LossSpec]] = {}

# The smallest probability initguard writes for an output that never occurs
# (its exact optimum is -inf): far below anything seen, far above float32's
# underflow, and too small to move an expected loss at six decimals.
FLOOR_LOG_PROB = math.log(1e-8)


def register(cls: type[LossSpec]) -> type[LossSpec]:
    """Adds a loss description to the registry under its ``name``."""
    LOSSES[cls.name] = cls
    return cls


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A loss with its options: which statistics it needs and how to solve them.

    Subclasses define ``name``, ``activation``, ``new_stats``, ``width``,
    ``optimal_bias`` and ``moments``; a loss with its own reductions lists
    them in ``reductions``. ``solve`` ties them together.

    Args:
        reduction: one of the loss's ``reductions`` ("mean" or "sum" unless
            it says otherwise). Defaults to "mean".
        bias: a constant output fixed by hand instead of the optimum, or None.
    """

    name: ClassVar[str] = ""
    activation: ClassVar[str] = "identity"
    reductions: ClassVar[tuple[str, ...]] = REDUCTIONS

    reduction: str = "mean"
    bias: Any = None

    def __post_init__(self) -> None:
        check_reduction(self.reduction, self.reductions)

    def new_stats(self) -> Stats:
        """Returns an empty accumulator for this loss's statistics."""
        raise NotImplementedError

    def width(self, stats: Any) -> int:
        """Returns the number of output units the statistics imply."""
        raise NotImplementedError

    def optimal_bias(self, stats: Any) -> tuple[np.ndarray, list[str]]:
        """Returns the loss-minimising constant output and notes about it."""
        raise NotImplementedError

    def moments(self, stats: Any, bias: np.ndarray) -> Moments:
        """Returns the loss and its spread for a constant output ``bias``."""
        raise NotImplementedError

    def band_scale(self, stats: Any, at_bias: Moments) -> float:
        """The loss scale the check's relative terms multiply.

        The expected loss itself for losses whose perfect prediction scores
        0; losses with an arbitrary offset override it.
        """
        return abs(at_bias.mean)

    def unseen_outputs(self, stats: Any, width: int) -> int:
        """Output units that no target ever selects (softmax classes)."""
        if not isinstance(stats, ClassStats):
            return 0
        return int(width - np.count_nonzero(stats.mass[:width] > 0))

    def samples(self, stats: Any) -> int:
        """Returns the number of samples (elements) the statistics hold."""
        return int(getattr(stats, "samples", stats.rows))

    def fixed_bias(self, width: int) -> tuple[np.ndarray, str] | None:
        """Returns a constant output fixed by hand and a note, or None for the optimum."""
        bias = check_bias(self.bias, width)
        return None if bias is None else (bias, "bias fixed by hand (not the optimum)")

    def _quiet_moments(self, stats: Any, bias: np.ndarray) -> Moments:
        # Outputs far outside the plan may overflow; the caller sees inf, not a warning.
        with np.errstate(all="ignore"):
            return self.moments(stats, bias)

    def solve(self, stats: Stats) -> Plan:
        """Computes the plan for accumulated statistics.

        Raises:
            InvalidInputError: the statistics are of the wrong kind or hold no
                usable sample, or the plan would not be finite.
        """
        if not isinstance(stats, type(self.new_stats())):
            raise InvalidInputError(
                f"Loss {self.name!r} needs {type(self.new_stats()).__name__}; "
                f"received {type(stats).__name__}."
            )
        if self.samples(stats) == 0:
            raise InvalidInputError(
                f"`targets` hold no usable sample for loss {self.name!r} "
                "(empty, or every target ignored)."
            )

        width = self.width(stats)
        # Overflow in a hostile input shows up as a non-finite result, which
        # is checked below; numpy's warnings would only repeat it.
        with np.errstate(all="ignore"):
            fixed = self.fixed_bias(width)
            if fixed is None:
                bias, notes = self.optimal_bias(stats)
            else:
                bias, notes = fixed[0], [fixed[1]]
            at_bias = self.moments(stats, bias)
            at_zero = self.moments(stats, np.zeros(width))
        results = (
            ("bias", np.asarray(bias)),
            ("expected loss", at_bias.mean),
            ("zero-bias loss", at_zero.mean),
            ("loss spread", at_bias.std),
            ("summed-loss spread", at_bias.sum_std),
        )
        for label, value in results:
            if not np.all(np.isfinite(value)):
                raise InvalidInputError(
                    f"The plan for loss {self.name!r} is not finite ({label} {show(value)}): "
                    "`targets` or the options are too large or degenerate."
                )

        return Plan(
            loss=self.name,
            activation=self.activation,
            bias=np.asarray(bias, dtype=np.float64),
            expected_loss=float(at_bias.mean),
            zero_bias_loss=float(at_zero.mean),
            loss_std=float(at_bias.std),
            samples=self.samples(stats),
            units_per_row=self.samples(stats) / max(stats.rows, 1),
            reduction=self.reduction,
            notes=tuple(notes),
            sum_scale=float(at_bias.sum_scale),
            sum_std=float(at_bias.sum_std),
            evaluate=lambda b: self._quiet_moments(stats, b),
            spec=self,
            band_scale=float(self.band_scale(stats, at_bias)),
            unseen_outputs=int(self.unseen_outputs(stats, width)),
        )


def make_loss(loss: str | LossSpec, **options: Any) -> LossSpec:
    """Builds a validated loss description from a name and torch-style options.

    Args:
        loss: a registered name such as "cross_entropy", or a description.
        **options: the loss's options (``weight``, ``label_smoothing``, ...).

    Raises:
        InvalidInputError: unknown loss name or option, or an invalid value.
    """
    if isinstance(loss, LossSpec):
        cls: type[LossSpec] = type(loss)
    elif isinstance(loss, str) and loss in LOSSES:
        cls = LOSSES[loss]
    else:
        raise InvalidInputError(f"`loss` must be one of {sorted(LOSSES)}; received {loss!r}.")

    allowed = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InvalidInputError(
            f"Unknown option(s) {unknown} for loss {cls.name!r}; allowed: {allowed}."
        )
    if isinstance(loss, LossSpec):
        return dataclasses.replace(loss, **options) if options else loss
    return cls(**options)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - math.log(np.exp(shifted).sum())


def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def safe_std(variance: float) -> float:
    return math.sqrt(max(float(variance), 0.0))
