"""Comparing the measured step-0 loss with the plan: verdict and likely cause."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from ._config import Tolerance
from ._plan import BatchLoss, Plan, activated


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
        tolerance: the largest deviation that passes, on the side of the
            measured one.
        standard_error: the sampling error of one batch's mean loss.
        batch_size: rows in the first batch (all processes together).
        cause: the likely cause of a failure, or "".
        bias_set: whether initguard wrote the bias.
        layer: the layer whose bias was planned, or "".
        message: one readable summary.
        notes: remarks from the statistics and the adapter.
        spread_excess: the loss a fresh head's output spread adds, when the
            adapter measured it.
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
    spread_excess: float | None = None

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
            "spread_excess": self.spread_excess,
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
    batch: BatchLoss | None = None,
    spread_excess: float | None = None,
    doubled_seen: bool = False,
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
        batch: the constant outputs' exact losses on the first batch's own
            targets (``Plan.batch_loss``), which removes the sampling error.
            Defaults to None: the plan's expectation with its standard error.
        spread_excess: the loss a fresh head's output spread adds
            (``Plan.spread_excess``), when measured; the check fails when it
            passes the headroom. Defaults to None.
        doubled_seen: the model applies its output activation before a loss
            that takes logits (a structural hint from the adapter); then a
            measurement nearer the doubly activated loss than the expected
            one fails even inside the band. Defaults to False.

    Returns:
        The report; its verdict is FAIL when the deviation exceeds the
        tolerance or the measured loss is not finite.
    """
    tolerance = tolerance or Tolerance()
    if batch is not None:
        expected, zero, doubled = batch
        standard_error = 0.0
    else:
        expected, zero, standard_error = plan.batch_expectation(batch_size)
        doubled = _double_activation_loss(plan) * plan.batch_scale(batch_size)
    expected += penalty
    zero += penalty
    doubled += penalty

    # The relative terms scale with the loss's own size (or, for a loss with
    # an arbitrary offset, with the spread of its per-sample values).
    scale = plan.scale * plan.batch_scale(batch_size)
    allowed = tolerance.sigmas * standard_error + tolerance.relative * scale + tolerance.absolute
    headroom = tolerance.headroom * scale
    measured = float(step0_loss)
    deviation = measured - expected
    # A fresh head's outputs can line up with the targets by chance and lower
    # the loss. For squared error that gain is at most 2 sqrt(excess * loss)
    # (Cauchy-Schwarz on the covariance of outputs and targets); the same
    # scale serves the other losses, whose faults all sit above.
    below = allowed
    if spread_excess is not None and math.isfinite(spread_excess):
        below += 2.0 * math.sqrt(max(spread_excess, 0.0) * scale)
    limit = allowed + headroom if deviation > 0 else below
    inside = -below <= deviation <= allowed + headroom

    cause = _structural_cause(plan, measured, batch, bias_set, spread_excess, scale, tolerance)
    # The hint decides only where the two explanations can be told apart.
    nearer_doubled = (
        math.isfinite(doubled)
        and abs(doubled - expected) > allowed
        and abs(measured - doubled) < abs(measured - expected)
    )
    if not cause and doubled_seen and bias_set and nearer_doubled:
        cause = _doubled_cause(plan.activation, doubled)
    if not cause and not (math.isfinite(measured) and inside):
        cause = _likely_cause(measured, expected, zero, limit, bias_set, plan.activation, doubled)
    passed = not cause

    verdict = Verdict.PASS if passed else Verdict.FAIL
    where = f"layer {layer!r}, " if layer else ""
    bias_word = "bias set" if bias_set else "bias not written"
    spread_word = "" if spread_excess is None else f", fresh-head spread {spread_excess:+.4g}"
    message = (
        f"initguard: step-0 loss {measured:.6g} vs expected {expected:.6g} "
        f"(deviation {deviation:+.4g}, tolerance {limit:.4g}{spread_word}, "
        f"zero-bias loss {zero:.6g}; {where}{bias_word}): {verdict.name}"
    )
    if cause:
        message += f". Likely cause: {cause}"
    return Report(
        verdict=verdict,
        expected_loss=expected,
        zero_bias_loss=zero,
        step0_loss=measured,
        deviation=deviation,
        tolerance=limit,
        standard_error=standard_error,
        batch_size=batch_size,
        cause=cause,
        bias_set=bias_set,
        layer=layer,
        message=message,
        notes=tuple(plan.notes) + tuple(notes),
        spread_excess=spread_excess,
    )


def _structural_cause(
    plan: Plan,
    measured: float,
    batch: BatchLoss | None,
    bias_set: bool,
    spread_excess: float | None,
    scale: float,
    tolerance: Tolerance,
) -> str:
    """Faults visible without the band: each fails the check wherever the loss sits."""
    if not math.isfinite(measured):
        return (
            f"the step-0 loss is {measured} (not finite): look for NaN or inf in the inputs, "
            "a batch whose targets are all ignored (0/0), or an overflow in the model"
        )
    width = plan.bias.shape[0]
    # One spare output (a padding slot) is common; more than the allowed share
    # is a wrong width.
    if plan.unseen_outputs > max(1.0, tolerance.unseen_classes * width):
        return (
            f"{plan.unseen_outputs} of the layer's {width} outputs are classes that never occur "
            "in the targets: the number of outputs looks wrong for this data (if the extra "
            "outputs are intended, e.g. a padded vocabulary, raise Tolerance.unseen_classes)"
        )
    worse = batch is not None and batch.at_bias - batch.at_zero > tolerance.relative * scale
    if worse and bias_set:
        assert batch is not None
        return (
            "the planned bias scores worse on the first batch than a zero bias "
            f"({batch.at_bias:.6g} vs {batch.at_zero:.6g}): the targets initguard planned "
            "from are not the ones training uses (`targets=`, or a dataset whose "
            "`.targets` differ from what it returns)"
        )
    if spread_excess is not None and not spread_excess <= tolerance.headroom * scale:
        return (
            f"the fresh final layer spreads its outputs so widely around the bias that they add "
            f"{spread_excess:.4g} to the loss (more than {tolerance.headroom:g} x the loss "
            "scale): its initial weights are too large for its inputs (the 'hockey stick'); "
            "scale them down, or normalise the inputs"
        )
    return ""


def _doubled_cause(activation: str, doubled: float) -> str:
    return (
        f"the loss matches outputs passed through {activation} twice ({doubled:.6g}): "
        "probabilities are fed to a loss that expects logits; remove the final "
        f"{activation} or use the loss that takes probabilities"
    )


def _likely_cause(
    measured: float,
    expected: float,
    zero: float,
    allowed: float,
    bias_set: bool,
    activation: str,
    doubled: float,
) -> str:
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
    if math.isfinite(doubled) and bias_set:
        explanations.append((doubled, _doubled_cause(activation, doubled)))
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


def _double_activation_loss(plan: Plan) -> float:
    """The loss when the model's output is already the activated bias (or NaN)."""
    doubled = activated(plan.bias, plan.activation)
    if doubled is None or plan.evaluate is None:
        return math.nan
    return plan.loss_at(doubled)
