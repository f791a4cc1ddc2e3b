"""The examples run on real data and their step-0 loss passes the check."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize(
    ("script", "framework"),
    [
        ("lightning_digits.py", "lightning"),
        ("keras_breast_cancer.py", "keras"),
        ("regression_diabetes.py", "lightning"),
        ("lightning_char_lm.py", "lightning"),
    ],
)
def test_example_passes_its_check(script, framework):
    pytest.importorskip(framework)
    pytest.importorskip("sklearn")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "INITGUARD_STRICT": "1"}

    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert "verdict: PASS" in result.stdout
    assert "measured step-0 loss" in result.stdout
