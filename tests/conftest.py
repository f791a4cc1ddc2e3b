"""Shared test settings: a seeded generator and a clean strictness environment."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261204)


@pytest.fixture(autouse=True)
def _no_strict_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's INITGUARD_STRICT must not change what the tests see.
    monkeypatch.delenv("INITGUARD_STRICT", raising=False)
