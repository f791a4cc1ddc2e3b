"""Prints an initguard report the same way in every example."""

from __future__ import annotations

from typing import Any


def print_report(title: str, guard: Any) -> None:
    """Prints the plan over all targets and the report of the first batch."""
    print(f"\n== {title}")
    report = guard.report
    if report is None or guard.plan is None:
        print("no report: the check did not run")
        return
    rows = [
        ("expected, all targets", guard.plan.expected_loss),
        ("expected, as checked", report.expected_loss),
        ("zero-bias loss", report.zero_bias_loss),
        ("measured step-0 loss", report.step0_loss),
        ("deviation", report.deviation),
        ("tolerance", report.tolerance),
        ("fresh-head spread", report.spread_excess),
    ]
    for name, value in rows:
        print(f"{name:>22}: {value:.6f}" if value is not None else f"{name:>22}: n/a")
    print(f"{'layer':>22}: {report.layer}  (bias written: {report.bias_set})")
    print(f"{'verdict':>22}: {report.verdict.name}")
    for note in report.notes:
        print(f"{'note':>22}: {note}")
