"""Classification plans against the real Keras losses.

Every plan is evaluated by the Keras loss object itself, in float64, on
outputs equal to ``plan.bias`` at every sample (every position for dense
targets; classes on the last axis, as Keras has them). Keras's
``class_weight`` in ``fit`` becomes ``sample_weight=class_weight[y]``: a
weighted sum divided by the number of samples.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from exactness_kit import RTOL, assert_close, check_optimal, draw_labels

import initguard

keras = pytest.importorskip("keras")
losses = keras.losses

SEEDS = (0, 1)


def _constant(bias: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An array of ``shape`` whose last axis is ``bias`` everywhere."""
    return np.broadcast_to(np.asarray(bias, dtype=np.float64), shape).copy()


def _softmax(bias: np.ndarray) -> np.ndarray:
    exp = np.exp(bias - bias.max())
    return exp / exp.sum()


def _value(loss: Any, y: np.ndarray, output: np.ndarray, **kwargs: Any) -> float:
    return float(np.asarray(loss(y, output, **kwargs)))


def _per_sample(loss: Any, y: np.ndarray, output: np.ndarray, **kwargs: Any) -> np.ndarray:
    # get_config does not carry the float64 dtype back through from_config.
    config = {**loss.get_config(), "reduction": None, "dtype": "float64"}
    return np.asarray(type(loss).from_config(config)(y, output, **kwargs))


def _assert_plan_matches(
    loss: Any, targets: np.ndarray, plan: initguard.Plan, rng: np.random.Generator
) -> None:
    """Expected, zero-bias, optimal and spread, all from Keras on one-hot or soft rows."""

    def loss_at(bias: np.ndarray) -> float:
        return _value(loss, targets, _constant(bias, targets.shape))

    assert_close(loss_at(plan.bias), plan.expected_loss)
    assert_close(loss_at(np.zeros(plan.bias.shape[0])), plan.zero_bias_loss)
    check_optimal(loss_at, plan.bias, rng, draws=3)
    per_sample = _per_sample(loss, targets, _constant(plan.bias, targets.shape))
    assert_close(float(per_sample.std()), plan.loss_std)


# ----------------------------------------------------------------------------
# Softmax cross-entropy.


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["balanced", "imbalanced", "unseen"])
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("class_weight", [False, True])
@pytest.mark.parametrize("ignore_class", [None, -1, 2])
def test_sparse_categorical(
    seed: int, kind: str, dense: bool, class_weight: bool, ignore_class: int | None
) -> None:
    rng = np.random.default_rng(seed)
    classes = 5
    shape = (10, 30) if dense else (300,)
    targets = draw_labels(kind, classes, shape, rng)
    if ignore_class == -1:
        targets = np.where(rng.random(shape) < 0.25, -1, targets)
    weights = rng.uniform(0.3, 3.0, classes) if class_weight else None
    plan = initguard.plan(
        targets,
        "cross_entropy",
        num_classes=classes,
        class_weight=None if weights is None else dict(enumerate(weights)),
        ignore_index=ignore_class,
        class_axis=-1,
    )
    loss = losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=ignore_class, dtype="float64"
    )
    kept = targets != ignore_class
    kwargs = {}
    if weights is not None:
        kwargs["sample_weight"] = np.where(kept, weights[np.where(kept, targets, 0)], 0.0)

    def loss_at(bias: np.ndarray) -> float:
        return _value(loss, targets, _constant(bias, (*shape, classes)), **kwargs)

    assert_close(loss_at(plan.bias), plan.expected_loss)
    assert_close(loss_at(np.zeros(classes)), plan.zero_bias_loss)
    check_optimal(loss_at, plan.bias, rng, draws=3)
    per_sample = _per_sample(loss, targets, _constant(plan.bias, (*shape, classes)), **kwargs)
    assert_close(float(per_sample[kept].std()), plan.loss_std)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("targets_kind", ["one_hot", "soft"])
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_categorical(seed: int, targets_kind: str, dense: bool, smoothing: float) -> None:
    rng = np.random.default_rng(seed)
    classes = 4
    shape = (8, 25) if dense else (250,)
    if targets_kind == "one_hot":
        targets = np.eye(classes)[draw_labels("imbalanced", classes, shape, rng)]
    else:
        targets = rng.dirichlet(np.linspace(0.3, 3.0, classes), size=shape)
    plan = initguard.plan(targets, "cross_entropy", label_smoothing=smoothing, class_axis=-1)
    loss = losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=smoothing, dtype="float64"
    )

    _assert_plan_matches(loss, targets, plan, rng)


def test_categorical_class_weight_one_hot_and_sum() -> None:
    rng = np.random.default_rng(4)
    labels = draw_labels("imbalanced", 3, (400,), rng)
    weights = np.array([1.0, 2.5, 6.0])
    plan = initguard.plan(
        np.eye(3)[labels], "cross_entropy", class_weight=weights, label_smoothing=0.2
    )
    loss = losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2, dtype="float64")
    measured = _value(
        loss, np.eye(3)[labels], _constant(plan.bias, (400, 3)), sample_weight=weights[labels]
    )
    assert_close(measured, plan.expected_loss)

    summed = initguard.plan(labels, "cross_entropy", reduction="sum")
    loss = losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum", dtype="float64")
    measured = _value(loss, labels, _constant(summed.bias, (400, 3)))
    assert_close(measured, summed.batch_expectation(400)[0])


# ----------------------------------------------------------------------------
# Sigmoid losses.


def _binary_targets(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    outputs = shape[-1]
    if kind == "soft":
        return rng.beta(0.5, 2.0, size=shape)
    rates = {
        "balanced": np.full(outputs, 0.5),
        "imbalanced": np.geomspace(0.4, 0.01, outputs),
        "unseen": np.r_[np.linspace(0.1, 0.6, outputs - 1), 0.0],
    }[kind]
    return (rng.random(shape) < rates).astype(np.float64)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["balanced", "imbalanced", "unseen", "soft"])
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_binary(seed: int, kind: str, dense: bool, smoothing: float) -> None:
    rng = np.random.default_rng(seed)
    shape = (5, 6, 7, 4) if dense else (300, 4)
    targets = _binary_targets(kind, shape, rng)
    plan = initguard.plan(targets, "binary_cross_entropy", label_smoothing=smoothing, class_axis=-1)
    loss = losses.BinaryCrossentropy(from_logits=True, label_smoothing=smoothing, dtype="float64")

    def loss_at(bias: np.ndarray) -> float:
        return _value(loss, targets, _constant(bias, shape))

    assert_close(loss_at(plan.bias), plan.expected_loss)
    assert_close(loss_at(np.zeros(4)), plan.zero_bias_loss)
    if kind != "unseen" or smoothing > 0:  # an always-0 output is clipped, not optimal
        check_optimal(loss_at, plan.bias, rng, draws=3)
    per_sample = _per_sample(loss, targets, _constant(plan.bias, shape))
    assert_close(float(per_sample.std()), plan.loss_std)
    assert plan.units_per_row == (42 if dense else 1)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["balanced", "imbalanced", "unseen"])
@pytest.mark.parametrize("alpha", [None, 0.25, 0.8])
@pytest.mark.parametrize("gamma", [0.0, 2.0, 4.0])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_binary_focal(
    seed: int, kind: str, alpha: float | None, gamma: float, smoothing: float
) -> None:
    rng = np.random.default_rng(seed)
    shape = (400, 3)
    targets = _binary_targets(kind, shape, rng)
    plan = initguard.plan(
        targets, "sigmoid_focal", alpha=alpha, gamma=gamma, label_smoothing=smoothing
    )
    loss = losses.BinaryFocalCrossentropy(
        apply_class_balancing=alpha is not None,
        alpha=0.25 if alpha is None else alpha,
        gamma=gamma,
        from_logits=True,
        label_smoothing=smoothing,
        dtype="float64",
    )

    def loss_at(bias: np.ndarray) -> float:
        return _value(loss, targets, _constant(bias, shape))

    # On the TensorFlow backend Keras recovers the logits behind the sigmoid
    # and its cross-entropy is exact; on the torch backend it works from the
    # probability clipped to [1e-7, 1 - 1e-7], which moves values by ~1e-6.
    rtol = 1e-5 if keras.backend.backend() == "torch" else RTOL
    assert_close(loss_at(plan.bias), plan.expected_loss, rtol)
    assert_close(loss_at(np.zeros(3)), plan.zero_bias_loss, rtol)
    if kind != "unseen" or smoothing > 0:
        check_optimal(loss_at, plan.bias, rng, draws=3)
    per_sample = _per_sample(loss, targets, _constant(plan.bias, shape))
    assert_close(float(per_sample.std()), plan.loss_std, rtol)


def test_binary_focal_dense_map() -> None:
    rng = np.random.default_rng(12)
    targets = _binary_targets("imbalanced", (4, 5, 6, 3), rng)
    plan = initguard.plan(
        targets, "sigmoid_focal", alpha=0.25, gamma=2.0, label_smoothing=0.1, class_axis=-1
    )
    loss = losses.BinaryFocalCrossentropy(
        apply_class_balancing=True,
        alpha=0.25,
        gamma=2.0,
        from_logits=True,
        label_smoothing=0.1,
        dtype="float64",
    )
    rtol = 1e-5 if keras.backend.backend() == "torch" else RTOL  # see test_binary_focal
    measured = _value(loss, targets, _constant(plan.bias, targets.shape))
    assert_close(measured, plan.expected_loss, rtol)
    assert plan.units_per_row == 30


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["balanced", "imbalanced", "unseen", "soft"])
@pytest.mark.parametrize("alpha", [0.25, "per_class"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_categorical_focal(
    seed: int, kind: str, alpha: Any, gamma: float, smoothing: float
) -> None:
    rng = np.random.default_rng(seed)
    classes = 5
    if kind == "soft":
        targets = rng.dirichlet(np.linspace(0.3, 3.0, classes), size=300)
    else:
        targets = np.eye(classes)[draw_labels(kind, classes, (300,), rng)]
    alpha_value = rng.uniform(0.2, 1.0, classes) if alpha == "per_class" else alpha
    plan = initguard.plan(
        targets, "softmax_focal", alpha=alpha_value, gamma=gamma, label_smoothing=smoothing
    )
    loss = losses.CategoricalFocalCrossentropy(
        alpha=np.asarray(alpha_value).tolist(),
        gamma=gamma,
        from_logits=True,
        label_smoothing=smoothing,
        dtype="float64",
    )

    _assert_plan_matches(loss, targets, plan, rng)


def test_categorical_focal_class_indices_and_sequences() -> None:
    rng = np.random.default_rng(9)
    labels = draw_labels("imbalanced", 6, (12, 20), rng)
    plan = initguard.plan(labels, "softmax_focal", num_classes=6, gamma=2.0)
    loss = losses.CategoricalFocalCrossentropy(gamma=2.0, from_logits=True, dtype="float64")
    measured = _value(loss, np.eye(6)[labels], _constant(plan.bias, (12, 20, 6)))
    assert_close(measured, plan.expected_loss)
    assert plan.units_per_row == 20


# ----------------------------------------------------------------------------
# KL divergence on a softmax output (Keras takes probabilities, not logits).


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("zeros", [False, True])
def test_kl_divergence(seed: int, dense: bool, zeros: bool) -> None:
    rng = np.random.default_rng(seed)
    classes = 5
    targets = rng.dirichlet(np.linspace(0.3, 3.0, classes), size=(6, 30) if dense else (200,))
    if zeros:
        targets[..., -1] = 0.0
        targets[..., 0] = np.where(rng.random(targets.shape[:-1]) < 0.3, 0.0, targets[..., 0])
        targets = targets / targets.sum(axis=-1, keepdims=True)
    plan = initguard.plan(
        targets,
        "kl_div",
        epsilon=keras.backend.epsilon(),
        reduction="sum_over_batch_size",
        class_axis=-1,
    )
    loss = losses.KLDivergence(dtype="float64")

    def loss_at(bias: np.ndarray) -> float:
        return _value(loss, targets, _constant(_softmax(bias), targets.shape))

    assert_close(loss_at(plan.bias), plan.expected_loss)
    assert_close(loss_at(np.zeros(classes)), plan.zero_bias_loss)
    check_optimal(loss_at, plan.bias, rng, draws=3)
    per_sample = _per_sample(loss, targets, _constant(_softmax(plan.bias), targets.shape))
    assert_close(float(per_sample.std()), plan.loss_std)


def test_kl_divergence_summed_over_a_dense_batch() -> None:
    rng = np.random.default_rng(8)
    targets = rng.dirichlet(np.ones(4), size=(5, 12))
    plan = initguard.plan(
        targets, "kl_div", epsilon=keras.backend.epsilon(), reduction="sum", class_axis=-1
    )
    loss = losses.KLDivergence(reduction="sum", dtype="float64")
    measured = _value(loss, targets, _constant(_softmax(plan.bias), targets.shape))
    assert_close(measured, plan.batch_expectation(5)[0])
    assert plan.units_per_row == 12


# ----------------------------------------------------------------------------
# CASES.md, measured by Keras.


def test_cases_keras_values() -> None:
    labels = np.array([0] * 900 + [1] * 100)
    plan = initguard.plan(labels, "cross_entropy", class_weight={0: 1, 1: 9})
    loss = losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")
    weights = np.array([1.0, 9.0])[labels]
    at = lambda b: _value(loss, labels, _constant(b, (1000, 2)), sample_weight=weights)  # noqa: E731
    assert at(plan.bias) == pytest.approx(1.247665, abs=5e-7)
    assert at(np.log([0.9, 0.1])) == pytest.approx(2.167151, abs=5e-7)
    np.testing.assert_allclose(plan.bias[0], plan.bias[1])

    labels = np.array([0] * 800 + [1] * 150 + [2] * 50)
    plan = initguard.plan(np.eye(3)[labels], "cross_entropy", label_smoothing=0.1)
    loss = losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1, dtype="float64")
    assert _value(loss, np.eye(3)[labels], _constant(plan.bias, (1000, 3))) == pytest.approx(
        0.712816, abs=5e-7
    )

    rates = np.array([0.5, 0.2, 0.1, 0.05, 0.01])
    targets = (np.arange(1000)[:, None] < rates * 1000).astype(np.float64)
    plan = initguard.plan(targets, "binary_cross_entropy")
    loss = losses.BinaryCrossentropy(from_logits=True, dtype="float64")
    assert _value(loss, targets, _constant(plan.bias, (1000, 5))) == pytest.approx(
        0.354630, abs=5e-7
    )
    assert _value(loss, targets, np.zeros((1000, 5))) == pytest.approx(math.log(2), rel=RTOL)
