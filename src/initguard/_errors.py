"""The package's exception and warning classes."""

from __future__ import annotations


class InvalidInputError(ValueError):
    """Bad configuration or bad targets: raised before any weight is written."""


class InitLossError(RuntimeError):
    """The step-0 loss is outside the tolerance and the guard is strict."""


class InitLossWarning(UserWarning):
    """The step-0 loss is outside the tolerance and the guard only warns."""
