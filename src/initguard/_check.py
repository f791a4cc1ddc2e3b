"""Comparing the measured step-0 loss with the plan: verdict and likely cause."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np

from ._config import Tolerance
from ._plan import Plan


class Verdict(enum.Enum):
    """Outcome of the step-0 check."""

    PASS = "pass"
    FAIL = "fail"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Report:
    """What the guard found at the start of training.

    Attributes:
        verdict: PASS, FAIL or SKIPPED.
        expected_loss: the loss the planned bias implies for the first batch
            (plus any regularisation penalty), or None when skipped early.
        zero_bias_loss: the same for a zero bias.
        step0_loss: the measured loss of the first batch, before any update.
        deviation: ``step0_loss - expected_loss``.
        tolerance: the largest deviation that passes.
        standard_error: the sampling error of one batch's mean loss.
        batch_size: rows in the first batch (all processes together).
        cause: the likely cause of a failure, or "".
        bias_set: whether initguard wrote the bias.
        layer: the layer whose bias was planned, or "".
        message: one readable summary.
        notes: remarks from the statistics and the adapter.
    """

    verdict: Verdict
    expected_loss: float | None = None
    zero_bias_loss: float | None = None
    step0_loss: float | None = None
    deviation: float | None = None
    tolerance: float | None = None
    standard_error: float | None = None
    batch_size: int | None = None
    cause: str = ""
    bias_set: bool = False
    layer: str = ""
    message: str = ""
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        """Plain Python values only (safe for ``torch.load(weights_only=True)``)."""
        return {
            "verdict": self.verdict.value,
            "expected_loss": self.expected_loss,
            "zero_bias_loss": self.zero_bias_loss,
            "step0_loss": self.step0_loss,
            "deviation": self.deviation,
            "tolerance": self.tolerance,
            "standard_error": self.standard_error,
            "batch_size": self.batch_size,
            "cause": self.cause,
            "bias_set": self.bias_set,
            "layer": self.layer,
            "message": self.message,
            "notes": list(self.notes),
        }


def skipped(
    reason: str, *, layer: str = "", bias_set: bool = False, notes: tuple[str, ...] = ()
) -> Report:
    """A report for a check that could not run, saying why."""
    where = f" (layer {layer!r})" if layer else ""
    return Report(
        verdict=Verdict.SKIPPED,
        cause=reason,
        bias_set=bias_set,
        layer=layer,
        message=f"initguard: check skipped{where}: {reason}",
        notes=tuple(notes),
    )


def check(
    plan: Plan,
    step0_loss: float,
    batch_size: int,
    tolerance: Tolerance | None = None,
    *,
    penalty: float = 0.0,
    bias_set: bool = True,
    layer: str = "",
    notes: tuple[str, ...] = (),
) -> Report:
    """Compares a measured first-batch loss with the plan's expectation.

    Args:
        plan: the plan the model was initialised with.
        step0_loss: the loss of the first batch before any update.
        batch_size: rows in that batch (all processes together when the loss
            was averaged across them).
        tolerance: the tolerance settings. Defaults to ``Tolerance()``.
        penalty: regularisation added to the measured loss (Keras reports
            it inside the loss). Defaults to 0.
        bias_set: whether the planned bias was written. Defaults to True.
        layer: the layer's name, for the report. Defaults to "".
        notes: extra remarks for the report. Defaults to ().

    Returns:
        The report; its verdict is FAIL when the deviation exceeds the
        tolerance or the measured loss is not finite.
    """
    tolerance = tolerance or Tolerance()
    expected, zero, standard_error = plan.batch_expectation(batch_size)
    expected += penalty
    zero += penalty
    allowed = (
        tolerance.sigmas * standard_error + tolerance.relative * abs(expected) + tolerance.absolute
    )
    measured = float(step0_loss)
    deviation = measured - expected
    passed = math.isfinite(measured) and abs(deviation) <= allowed
    cause = ""
    if not passed:
        doubled = _double_activation_loss(plan)
        if doubled is not None:
            doubled = doubled * plan.batch_scale(batch_size) + penalty
        cause = _likely_cause(plan, measured, expected, zero, allowed, bias_set, doubled)

    verdict = Verdict.PASS if passed else Verdict.FAIL
    where = f"layer {layer!r}, " if layer else ""
    bias_word = "bias set" if bias_set else "bias not written"
    message = (
        f"initguard: step-0 loss {measured:.6g} vs expected {expected:.6g} "
        f"(deviation {deviation:+.4g}, tolerance {allowed:.4g}, zero-bias loss {zero:.6g}; "
        f"{where}{bias_word}): {verdict.name}"
    )
    if cause:
        message += f". Likely cause: {cause}"
    return Report(
        verdict=verdict,
        expected_loss=expected,
        zero_bias_loss=zero,
        step0_loss=measured,
        deviation=deviation,
        tolerance=allowed,
        standard_error=standard_error,
        batch_size=batch_size,
        cause=cause,
        bias_set=bias_set,
        layer=layer,
        message=message,
        notes=tuple(plan.notes) + tuple(notes),
    )


def _likely_cause(
    plan: Plan,
    measured: float,
    expected: float,
    zero: float,
    allowed: float,
    bias_set: bool,
    doubled: float | None,
) -> str:
    if not math.isfinite(measured):
        return (
            f"the step-0 loss is {measured} (not finite): look for NaN or inf in the inputs, "
            "a batch whose targets are all ignored (0/0), or an overflow in the model"
        )
    # Constant outputs that explain the measurement: the nearest one wins.
    explanations = [
        (
            zero,
            "the loss matches a zero output bias: the bias was not set (or was overwritten "
            "after initguard wrote it)"
            if not bias_set
            else "the loss matches a zero output bias: the bias written is not the one in use",
        )
    ]
    # A doubled activation is measured at the planned bias, so it only explains
    # a run where that bias was written.
    if doubled is not None and bias_set:
        explanations.append(
            (
                doubled,
                f"the loss matches outputs passed through {plan.activation} twice "
                f"({doubled:.6g}): probabilities are fed to a loss that expects logits; remove "
                f"the final {plan.activation} or use the loss that takes probabilities",
            )
        )
    candidates = [
        (abs(measured - value), cause)
        for value, cause in explanations
        if abs(measured - value) <= allowed and abs(value - expected) > allowed
    ]
    if candidates:
        return min(candidates)[1]
    if measured > expected:
        return (
            "the outputs vary far more around the bias than a fresh head should: final-layer "
            "weights too large (scale them down), inputs not normalised, or a loss, class count "
            "or reduction different from the one planned"
        )
    return (
        "lower than any constant output allows: the model may already be trained (weights "
        "loaded before fit?), the targets given may differ from the ones trained on, or the "
        "loss is weighted or reduced differently than planned"
    )


def _double_activation_loss(plan: Plan) -> float | None:
    """The loss when the model's output is already the activated bias."""
    if plan.evaluate is None:
        return None
    if plan.activation == "softmax":
        shifted = np.exp(plan.bias - plan.bias.max())
        activated = shifted / shifted.sum()
    elif plan.activation == "sigmoid":
        activated = 1.0 / (1.0 + np.exp(-plan.bias))
    else:
        return None
    return plan.loss_at(activated)
