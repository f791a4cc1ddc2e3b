"""The framework-neutral part of both callbacks: settings, plan, verdict, action."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from ._check import Report, Verdict, check
from ._config import Tolerance, resolve_strict
from ._errors import InitLossError, InitLossWarning, InvalidInputError
from ._loss_base import LossSpec, make_loss
from ._plan import BatchLoss, Plan
from ._stats import Stats

log = logging.getLogger("initguard")

METRIC_NAMES = ("initguard/expected_loss", "initguard/step0_loss", "initguard/deviation")


class Guard:
    """Owns the configuration, the plan and the report; decides warn or raise.

    Both adapters hold one and call it in the same order: ``solve`` at fit
    start (after any cross-process reduction of the statistics), then
    ``conclude`` with the measured first-batch loss, or ``skip``.

    Args:
        strict: raise on a failed check; None reads ``INITGUARD_STRICT``.
        tolerance: the tolerance settings. Defaults to ``Tolerance()``.
    """

    def __init__(self, strict: bool | None = None, tolerance: Tolerance | None = None) -> None:
        self.strict = resolve_strict(strict)
        if tolerance is not None and not isinstance(tolerance, Tolerance):
            raise InvalidInputError(
                f"`tolerance` must be an initguard.Tolerance or None; received {tolerance!r}."
            )
        self.tolerance = tolerance or Tolerance()
        self.plan: Plan | None = None
        self.report: Report | None = None

    def reset(self) -> None:
        """Forgets the previous fit's plan and report."""
        self.plan = None
        self.report = None

    def solve(self, loss: LossSpec, stats: Stats) -> Plan:
        """Makes (and keeps) the plan for the loss and the reduced statistics."""
        self.plan = make_loss(loss).solve(stats)
        return self.plan

    def conclude(
        self,
        step0_loss: float,
        batch_size: int,
        *,
        penalty: float = 0.0,
        bias_set: bool,
        layer: str,
        notes: tuple[str, ...] = (),
        is_global_zero: bool = True,
        batch: BatchLoss | None = None,
        spread_excess: float | None = None,
        doubled_seen: bool = False,
    ) -> Report:
        """Checks the first batch's loss, logs the summary, then warns or raises.

        Every process calls this with the same (reduced) numbers, so every
        process reaches the same verdict and, when strict, raises together.
        ``batch``, ``spread_excess`` and ``doubled_seen`` are passed to
        ``check`` (the exact batch losses, the measured fresh-head spread,
        and whether the model applies its output activation before a loss
        that expects logits).

        Raises:
            InitLossError: the check failed and the guard is strict.
        """
        if self.plan is None:
            raise RuntimeError("Guard.conclude called before Guard.solve.")
        self.report = check(
            self.plan,
            step0_loss,
            batch_size,
            self.tolerance,
            penalty=penalty,
            bias_set=bias_set,
            layer=layer,
            notes=notes,
            batch=batch,
            spread_excess=spread_excess,
            doubled_seen=doubled_seen,
        )
        self.act(is_global_zero)
        return self.report

    def skip(self, report: Report, is_global_zero: bool = True) -> Report:
        """Records a skipped check and logs why."""
        self.report = report
        self.act(is_global_zero)
        return report

    def act(self, is_global_zero: bool = True) -> None:
        """Logs the report; warns (rank zero) or raises (every rank) on failure."""
        report = self.report
        if report is None:
            return
        if is_global_zero:
            level = logging.WARNING if report.verdict is Verdict.FAIL else logging.INFO
            log.log(level, report.message)
            for note in report.notes:
                log.info("initguard note: %s", note)
        if report.verdict is not Verdict.FAIL:
            return
        if self.strict:
            raise InitLossError(
                f"{report.message}. Training stopped before the second optimizer step because "
                "the guard is strict (strict=True or INITGUARD_STRICT=1); fix the cause, or "
                "pass strict=False to only warn."
            )
        if is_global_zero:
            warnings.warn(report.message, InitLossWarning, stacklevel=3)

    def metrics(self) -> dict[str, float]:
        """The report's numbers under the metric names both adapters log."""
        report = self.report
        if report is None or report.step0_loss is None:
            return {}
        values = (report.expected_loss, report.step0_loss, report.deviation)
        return {
            name: float(v) for name, v in zip(METRIC_NAMES, values, strict=True) if v is not None
        }


def describe_loss(loss: Any) -> str:
    """A short name of a loss object for error messages."""
    return getattr(loss, "name", None) or type(loss).__name__


class GuardViews:
    """What both callbacks show of their guard: the plan, the report, strictness."""

    _guard: Guard

    @property
    def report(self) -> Report | None:
        """What the guard found in the latest fit, or None before its check."""
        return self._guard.report

    @property
    def plan(self) -> Plan | None:
        """The plan over all the training targets (bias, expected loss), or None before fit."""
        return self._guard.plan

    @property
    def strict(self) -> bool:
        """Whether a failed check raises."""
        return self._guard.strict
