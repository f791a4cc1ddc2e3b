"""Checks of loss options: each names the option, the rule and what arrived."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ._errors import InvalidInputError
from ._targets import to_numpy

REDUCTIONS = ("mean", "sum")


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if ok and value >= minimum and (maximum is None or value <= maximum):
        return int(value)
    upper = "" if maximum is None else f" and <= {maximum}"
    raise InvalidInputError(f"`{name}` must be an integer >= {minimum}{upper}; received {value!r}.")


def check_optional_int(name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(f"`{name}` must be an integer or None; received {value!r}.")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(f"`{name}` must be True or False; received {value!r}.")


def check_number(name: str, value: Any, allow_zero: bool = False) -> float:
    """Validates a finite number > 0 (or >= 0 with ``allow_zero``)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok and math.isfinite(value) and (value >= 0 if allow_zero else value > 0):
        return float(value)
    rule = ">= 0" if allow_zero else "> 0"
    raise InvalidInputError(f"`{name}` must be a finite number {rule}; received {value!r}.")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidInputError(f"`{name}` must be one of {choices}; received {value!r}.")


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
