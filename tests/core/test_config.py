"""Strictness from the argument or from INITGUARD_STRICT."""

from __future__ import annotations

import subprocess
import sys

import pytest

from initguard import STRICT_ENV, InvalidInputError, resolve_strict


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_true_values_make_it_strict(monkeypatch, value):
    monkeypatch.setenv(STRICT_ENV, value)

    assert resolve_strict(None) is True


@pytest.mark.parametrize("value", ["0", "false", "No", "off", ""])
def test_false_values_keep_it_lenient(monkeypatch, value):
    monkeypatch.setenv(STRICT_ENV, value)

    assert resolve_strict(None) is False


def test_unset_means_warn():
    assert resolve_strict(None) is False


def test_the_argument_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(STRICT_ENV, "1")

    assert resolve_strict(False) is False


@pytest.mark.parametrize("value", ["2", "strict", "maybe"])
def test_other_values_are_a_clear_error(monkeypatch, value):
    monkeypatch.setenv(STRICT_ENV, value)

    with pytest.raises(InvalidInputError, match=f"INITGUARD_STRICT must be one of .*{value!r}"):
        resolve_strict(None)


def test_strict_must_be_a_bool():
    with pytest.raises(InvalidInputError, match="`strict` must be True, False or None; received 1"):
        resolve_strict(1)  # type: ignore[arg-type]


def test_importing_the_core_imports_no_framework():
    code = (
        "import sys, initguard\n"
        "initguard.plan([0, 1, 1], 'cross_entropy')\n"
        "heavy = {'torch', 'lightning', 'pytorch_lightning', 'keras', 'tensorflow', 'scipy'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"
