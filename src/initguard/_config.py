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

    The allowed deviation is ``sigmas * standard_error + relative * |expected|
    + absolute``. The standard error is the per-sample spread of the loss at
    the planned bias divided by the square root of the samples in the first
    batch; the relative part absorbs the small excess that randomly
    initialised final weights add (see the README) and low-precision
    rounding.

    Args:
        sigmas: standard errors allowed. Defaults to 4 (about one false alarm
            in 15,000 checks for a normal sampling error).
        relative: fraction of the expected loss allowed. Defaults to 0.1.
        absolute: floor in loss units. Defaults to 1e-4.
    """

    sigmas: float = 4.0
    relative: float = 0.1
    absolute: float = 1e-4

    def __post_init__(self) -> None:
        for name in ("sigmas", "relative", "absolute"):
            check_number(name, getattr(self, name), allow_zero=True)
