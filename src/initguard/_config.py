"""Strictness and tolerance settings, with the environment override."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ._errors import InvalidInputError
from ._validate import check_number

STRICT_ENV = "INITGUARD_STRICT"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def resolve_strict(strict: bool | None) -> bool:
    """Decides strictness: the argument when given, else ``INITGUARD_STRICT``.

    Args:
        strict: explicit choice, or None to read the environment.

    Returns:
        True when a failed check should raise.

    Raises:
        InvalidInputError: ``INITGUARD_STRICT`` holds something other than
            1/true/yes/on or 0/false/no/off (case-insensitive).
    """
    if strict is not None:
        if not isinstance(strict, bool):
            raise InvalidInputError(f"`strict` must be True, False or None; received {strict!r}.")
        return strict

    raw = os.environ.get(STRICT_ENV, "")
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidInputError(
        f"Environment variable {STRICT_ENV} must be one of 1/true/yes/on or "
        f"0/false/no/off; received {raw!r}."
    )


@dataclass(frozen=True)
class Tolerance:
    """How far the step-0 loss may sit from the expected loss.

    Below the expectation the allowed deviation is ``sigmas * standard_error
    + relative * |expected| + absolute``; above it, ``headroom * |expected|``
    more. The standard error is the spread of the per-sample loss at the
    planned bias over the square root of the samples in the first batch; it
    is zero when the adapter evaluates the constant output on the batch's
    own targets (Lightning does).

    The other terms are for the fresh model itself. Its final layer's random
    weights spread the outputs around the bias, and for a convex loss any
    spread raises the mean loss (the start of the "hockey stick"); on data
    that a random projection of the inputs already separates they can also
    lower it a little. Framework-default initialisations move the step-0
    loss by up to about +100 % and -35 % on small tabular problems; faults
    such as an unset bias on rare classes, probabilities fed to a loss that
    expects logits, or final weights twenty times too large move it by far
    more. Where the adapter measures the head's spread (Lightning does, from
    one forward pass at fit start), a spread that alone adds more than
    ``headroom * |expected|`` fails the check too.

    Args:
        sigmas: standard errors allowed. Defaults to 4 (about one false alarm
            in 15,000 checks for a normal sampling error).
        relative: fraction of the loss scale allowed on either side: the
            expected loss, or for Poisson and Gaussian likelihoods (whose
            offset is arbitrary) the spread of the per-sample loss.
            Defaults to 0.25.
        absolute: floor in loss units. Defaults to 1e-4.
        headroom: the further fraction of the loss scale allowed above the
            expectation. Defaults to 1.0.
        unseen_classes: the largest fraction of a softmax layer's outputs
            that may be classes never seen in the targets (one such output
            is always allowed); more fails the check as a wrong output
            width. Defaults to 0.1 (a padded vocabulary stays well below it).
    """

    sigmas: float = 4.0
    relative: float = 0.25
    absolute: float = 1e-4
    headroom: float = 1.0
    unseen_classes: float = 0.1

    def __post_init__(self) -> None:
        for name in ("sigmas", "relative", "absolute", "headroom", "unseen_classes"):
            check_number(name, getattr(self, name), allow_zero=True)
