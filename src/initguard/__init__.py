"""initguard: start training at the best constant output, and check the step-0 loss.

The core is numpy only. The callbacks live in ``initguard.lightning`` and
``initguard.keras``.
"""

from __future__ import annotations

from typing import Any

from . import _classification, _regression  # noqa: F401  (register the losses)
from ._check import Report, Verdict, check
from ._config import STRICT_ENV, Tolerance, resolve_strict
from ._errors import InitLossError, InitLossWarning, InvalidInputError
from ._loss_base import LOSSES, LossSpec, make_loss
from ._plan import Plan

__version__ = "0.1.0"


def plan(targets: Any, loss: str | LossSpec, **options: Any) -> Plan:
    """Computes the optimal constant output and the loss it implies.

    Args:
        targets: training targets: class indices, one-hot or probability
            rows, 0/1 labels or regression values (numpy, list, torch or
            TensorFlow tensor).
        loss: a loss name as in torch's functional API ("cross_entropy",
            "binary_cross_entropy", "mse", ...), or a description from
            ``make_loss``.
        **options: the loss's options, named as torch names them
            (``weight``, ``pos_weight``, ``label_smoothing``, ``ignore_index``,
            ``num_classes``, ...).

    Returns:
        A frozen ``Plan`` with ``bias``, ``expected_loss``,
        ``zero_bias_loss`` and ``loss_std``.

    Raises:
        InvalidInputError: unknown loss or option, or targets that do not
            fit the loss (out-of-range labels, NaN, empty input, ...).

    Example:
        >>> import initguard
        >>> p = initguard.plan([0] * 900 + [1] * 100, "cross_entropy", weight=[1.0, 9.0])
        >>> p.bias.round(6).tolist(), round(p.expected_loss, 6)
        ([-0.693147, -0.693147], 0.693147)
        >>> round(initguard.plan([1.0, 2.0, 3.0], "mse").expected_loss, 6)
        0.666667
    """
    spec = make_loss(loss, **options)
    return spec.solve(spec.new_stats().update(targets))


__all__ = [
    "LOSSES",
    "STRICT_ENV",
    "InitLossError",
    "InitLossWarning",
    "InvalidInputError",
    "LossSpec",
    "Plan",
    "Report",
    "Tolerance",
    "Verdict",
    "__version__",
    "check",
    "make_loss",
    "plan",
    "resolve_strict",
]
