"""Prints an initguard report the same way in every example."""

from __future__ import annotations

from initguard import Report


def print_report(title: str, report: Report | None) -> None:
    print(f"\n== {title}")
    if report is None:
        print("no report: the check did not run")
        return
    rows = [
        ("expected loss", report.expected_loss),
        ("zero-bias loss", report.zero_bias_loss),
        ("measured step-0 loss", report.step0_loss),
        ("deviation", report.deviation),
        ("tolerance", report.tolerance),
    ]
    for name, value in rows:
        print(f"{name:>22}: {value:.6f}" if value is not None else f"{name:>22}: n/a")
    print(f"{'layer':>22}: {report.layer}  (bias written: {report.bias_set})")
    print(f"{'verdict':>22}: {report.verdict.name}")
    for note in report.notes:
        print(f"{'note':>22}: {note}")
