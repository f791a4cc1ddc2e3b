"""Regression plans against the real Keras losses, in float64.

Keras averages each sample's loss over the last axis, then reduces over
the batch: "sum_over_batch_size" is torch's mean, but "sum" adds one
per-sample mean per row, not every element.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import initguard

keras = pytest.importorskip("keras")

REL = 1e-6

# Each Keras loss beside the plan options that describe it. Keras's Poisson
# takes the rate itself, after an exponential or softplus output layer, and
# uses backend.epsilon() = 1e-7 inside the log.
CASES: list[tuple[str, dict[str, Any], str, Any]] = [
    ("mse", {}, "identity", lambda **kw: keras.losses.MeanSquaredError(**kw)),
    ("l1", {}, "identity", lambda **kw: keras.losses.MeanAbsoluteError(**kw)),
    ("huber", {"delta": 1.0}, "identity", lambda **kw: keras.losses.Huber(delta=1.0, **kw)),
    ("huber", {"delta": 0.05}, "identity", lambda **kw: keras.losses.Huber(delta=0.05, **kw)),
    ("huber", {"delta": 3e4}, "identity", lambda **kw: keras.losses.Huber(delta=3e4, **kw)),
    (
        "poisson_nll",
        {"log_input": False, "eps": 1e-7, "activation": "exp"},
        "exp",
        lambda **kw: keras.losses.Poisson(**kw),
    ),
    (
        "poisson_nll",
        {"log_input": False, "eps": 1e-7, "activation": "softplus"},
        "softplus",
        lambda **kw: keras.losses.Poisson(**kw),
    ),
    ("msle", {}, "identity", lambda **kw: keras.losses.MeanSquaredLogarithmicError(**kw)),
    ("log_cosh", {}, "identity", lambda **kw: keras.losses.LogCosh(**kw)),
]


def _activate(name: str, z: np.ndarray) -> Any:
    tensor = keras.ops.convert_to_tensor(z, dtype="float64")
    if name == "exp":
        return keras.activations.exponential(tensor)
    if name == "softplus":
        return keras.activations.softplus(tensor)
    return tensor


def keras_loss(
    factory: Any, activation: str, bias: np.ndarray, targets: np.ndarray, reduction: Any
) -> np.ndarray:
    """The real Keras loss of a constant output ``bias`` (or of given [N, K] outputs)."""
    n = targets.shape[0]
    k = 1 if targets.ndim == 1 else targets.shape[1]
    outputs = np.asarray(bias, dtype=np.float64)
    if outputs.ndim == 1:
        outputs = np.broadcast_to(outputs.reshape(1, k), (n, k))
    loss = factory(reduction=reduction, dtype="float64")
    y_pred = _activate(activation, np.ascontiguousarray(outputs))
    return keras.ops.convert_to_numpy(loss(targets, y_pred))


def _close(actual: float, expected: float, rel: float, scale: float, offset: float = 0.0) -> bool:
    return abs(actual - expected) <= rel * abs(expected) + 1e-12 * scale + offset


def _offset_for(loss: str) -> float:
    # Keras's LogCosh subtracts log(2) computed in float32 even for float64
    # inputs, so every element sits 1.9e-9 below log(cosh(x)).
    return 2e-9 if loss == "log_cosh" else 0.0


def assert_matches_keras(
    loss: str, options: dict[str, Any], activation: str, factory: Any, targets: np.ndarray
) -> None:
    targets = np.asarray(targets, dtype=np.float64)
    plan = initguard.plan(targets, loss, **options)
    n = targets.shape[0]
    k = 1 if targets.ndim == 1 else targets.shape[1]
    scale = 1.0 + float(np.max(np.abs(targets))) ** 2
    rel = REL
    offset = _offset_for(loss)
    zeros = np.zeros_like(plan.bias)

    assert plan.activation == activation
    expected = float(keras_loss(factory, activation, plan.bias, targets, "sum_over_batch_size"))
    zero = float(keras_loss(factory, activation, zeros, targets, "sum_over_batch_size"))
    assert _close(plan.expected_loss, expected, rel, scale, offset), (plan.expected_loss, expected)
    assert _close(plan.zero_bias_loss, zero, rel, scale, offset), (plan.zero_bias_loss, zero)

    # Keras's "sum" adds per-sample means (each already averaged over the K
    # outputs); the plan's summed expectation follows torch and adds every
    # element, K per row.
    sum_plan = initguard.plan(targets, loss, reduction="sum", **options)
    batch_expected, batch_zero, _ = sum_plan.batch_expectation(n)
    total = float(keras_loss(factory, activation, plan.bias, targets, "sum"))
    total_zero = float(keras_loss(factory, activation, zeros, targets, "sum"))
    assert _close(batch_expected / k, total, rel, scale * n, offset * n), (batch_expected, total)
    assert _close(batch_zero / k, total_zero, rel, scale * n, offset * n), (batch_zero, total_zero)

    per_sample = keras_loss(factory, activation, plan.bias, targets, None)
    assert per_sample.shape == (n,)
    std = float(np.std(per_sample))
    assert abs(plan.loss_std - std) <= rel * std + 1e-9 * scale, (plan.loss_std, std)

    if any("floored" in note for note in plan.notes):
        return
    # Every nearby constant at once: one real Keras call on the stacked
    # batches, each batch's mean its loss.
    spread = float(np.std(targets)) + 1e-12
    moved = []
    for fraction in (1e-2, 1e-5):
        for j in range(plan.bias.size):
            for sign in (-1.0, 1.0):
                bias = plan.bias.copy()
                bias[j] += sign * fraction * (abs(bias[j]) + spread)
                moved.append(bias)
    stacked_targets = np.concatenate([targets] * len(moved))
    stacked = np.concatenate([np.broadcast_to(b.reshape(1, k), (n, k)) for b in moved])
    losses = keras_loss(factory, activation, stacked, stacked_targets, None).reshape(-1, n)
    nearby = losses.mean(axis=1)
    assert np.all(nearby >= expected - 1e-12 * (abs(expected) + 1.0)), (moved, nearby, expected)


def _seed(*parts: object) -> int:
    return zlib.crc32(repr(parts).encode())


def _targets(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if kind == "large_mean":
        return rng.normal(2.0e5, 5.0e4, shape)
    if kind == "heavy_tail":
        return np.abs(rng.standard_cauchy(shape)) * 10.0
    if kind == "ties":
        return rng.integers(0, 4, shape).astype(np.float64)
    if kind == "counts":
        return rng.poisson(3.5, shape).astype(np.float64)
    if kind == "skewed":
        return rng.lognormal(0.0, 1.5, shape)
    raise AssertionError(kind)


KINDS = ("large_mean", "heavy_tail", "ties", "counts", "skewed")
SHAPES = ((48,), (48, 3), (1,), (2,))


def _label(case: tuple[str, dict[str, Any], str, Any]) -> str:
    return case[0] + "".join(f"-{key}={value}" for key, value in case[1].items())


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", CASES, ids=_label)
def test_regression_losses_match_keras(
    case: tuple[str, dict[str, Any], str, Any], kind: str, shape: tuple[int, ...]
) -> None:
    loss, options, activation, factory = case
    targets = _targets(kind, shape, np.random.default_rng(_seed(kind, shape)))
    assert_matches_keras(loss, options, activation, factory, targets)


def test_keras_sum_differs_from_torch_sum_by_the_outputs_per_row() -> None:
    # Three outputs per row: Keras's sum is a third of the sum over elements.
    targets = np.random.default_rng(5).normal(0.0, 2.0, (10, 3))
    plan = initguard.plan(targets, "mse", reduction="sum")
    factory = CASES[0][3]
    keras_sum = float(keras_loss(factory, "identity", plan.bias, targets, "sum"))

    assert plan.batch_expectation(10)[0] == pytest.approx(3 * keras_sum, rel=1e-12)


def test_msle_clips_negative_targets_like_keras() -> None:
    targets = np.array([-3.0, -0.5, 0.0, 2.0, 7.0])
    plan = initguard.plan(targets, "msle")
    factory = CASES[7][3]

    assert any("negative" in note for note in plan.notes)
    assert_matches_keras("msle", {}, "identity", factory, targets)
    assert_matches_keras("msle", {}, "identity", factory, np.zeros((4, 2)))


def test_poisson_floors_an_all_zero_output_under_keras() -> None:
    targets = np.zeros((6, 2))
    targets[:, 0] = [0, 1, 4, 0, 2, 3]
    options = {"log_input": False, "eps": 1e-7, "activation": "exp"}
    plan = initguard.plan(targets, "poisson_nll", **options)

    assert any("floored" in note for note in plan.notes)
    assert plan.bias[1] == pytest.approx(np.log(1e-8))
    assert_matches_keras("poisson_nll", options, "exp", CASES[5][3], targets)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False),
            st.sampled_from([0.0, 1.0, -2.0]),
        ),
        min_size=1,
        max_size=20,
    ),
    st.sampled_from([0, 1, 2, 4, 8]),
)
def test_random_location_problems_match_keras(values: list[float], index: int) -> None:
    loss, options, activation, factory = CASES[index]
    assert_matches_keras(loss, options, activation, factory, np.array(values))
