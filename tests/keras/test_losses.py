"""Every supported Keras loss: the planned expected loss is the real Keras loss of the plan.

Each case builds a one-layer model, lets InitGuard write the bias, zeroes the
kernel so that every sample's output is the activated bias, and evaluates the
Keras loss object itself on that output. Keras computes in float32, hence the
relative tolerance of 2e-5.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")
if keras.backend.backend() != "tensorflow":
    pytest.skip("needs the TensorFlow backend", allow_module_level=True)

from initguard import InvalidInputError  # noqa: E402
from initguard.keras import InitGuard  # noqa: E402

L = keras.losses
RTOL = 2e-5


def _labels(rng: np.random.Generator, shape: tuple[int, ...], p: list[float]) -> np.ndarray:
    return rng.choice(len(p), size=shape, p=p)


def _one_hot(labels: np.ndarray, width: int) -> np.ndarray:
    return np.eye(width, dtype="float32")[labels]


def _soft(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    return rng.dirichlet(np.linspace(0.3, 2.0, width), size=n).astype("float32")


def _binary(rng: np.random.Generator, shape: tuple[int, ...], p: float) -> np.ndarray:
    return (rng.random(shape) < p).astype("float32")


# (id, loss as compiled, output activation, output width, feature shape, targets)
Case = tuple[str, Any, str, int, tuple[int, ...], Callable[[np.random.Generator], np.ndarray]]
CASES: list[Case] = [
    ("sparse-logits", L.SparseCategoricalCrossentropy(from_logits=True), "linear", 4, (3,),
     lambda r: _labels(r, (200,), [0.6, 0.25, 0.1, 0.05])),
    ("sparse-string-softmax", "sparse_categorical_crossentropy", "softmax", 3, (3,),
     lambda r: _labels(r, (200, 1), [0.7, 0.2, 0.1])),
    ("sparse-ignore", L.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
     "linear", 3, (3,), lambda r: _labels(r, (200,), [0.5, 0.3, 0.2])),
    ("sparse-sequence", L.SparseCategoricalCrossentropy(from_logits=True), "linear", 5, (7, 3),
     lambda r: _labels(r, (40, 7), [0.4, 0.3, 0.2, 0.08, 0.02])),
    ("sparse-sum", L.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"),
     "linear", 3, (3,), lambda r: _labels(r, (120,), [0.6, 0.3, 0.1])),
    ("categorical-smoothing", L.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
     "linear", 3, (3,), lambda r: _one_hot(_labels(r, (200,), [0.8, 0.15, 0.05]), 3)),
    ("categorical-soft", L.CategoricalCrossentropy(), "softmax", 4, (3,),
     lambda r: _soft(r, 150, 4)),
    ("categorical-string", "categorical_crossentropy", "softmax", 3, (3,),
     lambda r: _one_hot(_labels(r, (150,), [0.5, 0.3, 0.2]), 3)),
    ("categorical-map", L.CategoricalCrossentropy(from_logits=True), "linear", 3, (4, 4, 2),
     lambda r: _one_hot(_labels(r, (20, 4, 4), [0.7, 0.2, 0.1]), 3)),
    ("binary-logits", L.BinaryCrossentropy(from_logits=True), "linear", 1, (3,),
     lambda r: _binary(r, (300,), 0.05)),
    ("binary-multilabel-smoothing", L.BinaryCrossentropy(label_smoothing=0.2), "sigmoid", 3,
     (3,), lambda r: _binary(r, (300, 3), 0.2)),
    ("binary-map", L.BinaryCrossentropy(from_logits=True), "linear", 1, (4, 4, 2),
     lambda r: _binary(r, (20, 4, 4, 1), 0.15)),
    ("binary-string", "binary_crossentropy", "sigmoid", 1, (3,),
     lambda r: _binary(r, (300, 1), 0.3)),
    ("binary-focal-balanced", L.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=0.3, gamma=2.0, from_logits=True), "linear", 1, (3,),
     lambda r: _binary(r, (300,), 0.1)),
    ("binary-focal", L.BinaryFocalCrossentropy(gamma=1.5, label_smoothing=0.1), "sigmoid", 2,
     (3,), lambda r: _binary(r, (300, 2), 0.25)),
    ("categorical-focal", L.CategoricalFocalCrossentropy(from_logits=True), "linear", 3, (3,),
     lambda r: _one_hot(_labels(r, (200,), [0.6, 0.3, 0.1]), 3)),
    ("mse", L.MeanSquaredError(), "linear", 2, (3,),
     lambda r: (r.lognormal(3.0, 1.0, size=(200, 2)) + 1e4).astype("float32")),
    ("mse-string-sequence", "mse", "linear", 1, (6, 3),
     lambda r: r.normal(5.0, 2.0, size=(30, 6)).astype("float32")),
    ("mse-sum", L.MeanSquaredError(reduction="sum"), "linear", 1, (3,),
     lambda r: r.normal(3.0, 1.0, size=(64,)).astype("float32")),
    ("mae", "mae", "linear", 1, (3,), lambda r: r.exponential(4.0, size=(201,)).astype("float32")),
    ("huber", L.Huber(delta=2.0), "linear", 1, (3,),
     lambda r: r.standard_t(2, size=(200,)).astype("float32")),
    ("huber-string", "huber", "linear", 2, (3,),
     lambda r: r.laplace(1.0, 3.0, size=(200, 2)).astype("float32")),
    ("poisson-exponential", L.Poisson(), "exponential", 1, (3,),
     lambda r: r.poisson(3.0, size=(200,)).astype("float32")),
    ("poisson-softplus", "poisson", "softplus", 2, (3,),
     lambda r: r.poisson(0.5, size=(200, 2)).astype("float32")),
    ("kl", L.KLDivergence(), "softmax", 4, (3,), lambda r: _soft(r, 150, 4)),
    ("msle", L.MeanSquaredLogarithmicError(), "linear", 1, (3,),
     lambda r: r.lognormal(1.0, 0.7, size=(200,)).astype("float32")),
    ("log-cosh", L.LogCosh(), "linear", 1, (3,),
     lambda r: r.normal(2.0, 3.0, size=(200,)).astype("float32")),
]  # fmt: skip


def _model(activation: str, width: int, features: tuple[int, ...]) -> Any:
    model = keras.Sequential(
        [keras.Input(features), keras.layers.Dense(width, activation=activation, name="head")]
    )
    return model


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_expected_loss_is_the_keras_loss_of_the_planned_output(case: Case) -> None:
    _, loss, activation, width, features, make_targets = case
    rng = np.random.default_rng(7)
    targets = make_targets(rng)
    model = _model(activation, width, features)
    model.compile(optimizer="sgd", loss=loss)
    guard = InitGuard(targets)
    guard.set_model(model)
    guard.on_train_begin()

    head = model.get_layer("head")
    plan = guard.plan
    assert plan is not None
    np.testing.assert_allclose(np.asarray(head.bias), plan.bias, rtol=1e-6, atol=1e-6)

    head.kernel.assign(np.zeros(head.kernel.shape, dtype="float32"))
    inputs = rng.normal(size=(targets.shape[0], *features)).astype("float32")
    # The compiled loss, exactly as fit computes it (strings included).
    measured_tensor = model.compute_loss(y=targets, y_pred=model(inputs))
    measured = float(keras.ops.convert_to_numpy(measured_tensor))
    expected = plan.batch_expectation(targets.shape[0])[0]
    np.testing.assert_allclose(measured, expected, rtol=RTOL)


def test_the_optimum_beats_nearby_constants() -> None:
    # The planned bias is a minimum of the real Keras loss, not only a value it agrees with.
    rng = np.random.default_rng(11)
    targets = _labels(rng, (300,), [0.5, 0.3, 0.15, 0.05])
    model = _model("linear", 4, (3,))
    loss = L.CategoricalFocalCrossentropy(from_logits=True, gamma=2.0)
    model.compile(optimizer="sgd", loss=loss)
    one_hot = _one_hot(targets, 4)
    guard = InitGuard(one_hot)
    guard.set_model(model)
    guard.on_train_begin()
    assert guard.plan is not None
    best = guard.plan.bias

    def keras_loss(bias: np.ndarray) -> float:
        logits = np.tile(bias.astype("float32"), (one_hot.shape[0], 1))
        return float(keras.ops.convert_to_numpy(loss(one_hot, logits)))

    at_best = keras_loss(best)
    for _ in range(10):
        assert keras_loss(best + rng.normal(scale=0.2, size=4)) > at_best - 1e-6


def test_huber_delta_is_read_from_the_loss_object() -> None:
    targets = np.random.default_rng(2).standard_t(2, size=(100,)).astype("float32")
    plans = {}
    for delta in (0.5, 3.0):
        model = _model("linear", 1, (2,))
        model.compile(optimizer="sgd", loss=L.Huber(delta=delta))
        guard = InitGuard(targets)
        guard.set_model(model)
        guard.on_train_begin()
        plans[delta] = guard.plan
    assert plans[0.5] is not None and plans[3.0] is not None
    assert plans[0.5].expected_loss < plans[3.0].expected_loss


def test_loss_argument_overrides_a_custom_compiled_function() -> None:
    def my_loss(y_true: Any, y_pred: Any) -> Any:
        return keras.losses.binary_crossentropy(y_true, y_pred, from_logits=True)

    targets = _binary(np.random.default_rng(0), (100,), 0.2)
    model = _model("linear", 1, (2,))
    model.compile(optimizer="sgd", loss=my_loss)
    guard = InitGuard(targets)
    guard.set_model(model)
    with pytest.raises(InvalidInputError, match="cannot read the loss function 'my_loss'"):
        guard.on_train_begin()

    guard = InitGuard(targets, loss=L.BinaryCrossentropy(from_logits=True))
    guard.set_model(model)
    guard.on_train_begin()
    assert guard.plan is not None
    np.testing.assert_allclose(guard.plan.bias, [np.log(0.2 / 0.8)], atol=0.3)


def test_loss_argument_accepts_core_names_and_descriptions() -> None:
    import initguard

    targets = np.random.default_rng(1).normal(4.0, 1.0, size=(64,)).astype("float32")
    for loss in ("mse", "l1", initguard.make_loss("quantile", quantile=0.9)):
        model = _model("linear", 1, (2,))
        model.compile(optimizer="sgd", loss="mse")
        guard = InitGuard(targets, loss=loss)
        guard.set_model(model)
        guard.on_train_begin()
        assert guard.plan is not None
    assert guard.plan.loss == "quantile"


class Scaled(L.Loss):
    """A custom loss class: its formula is not one initguard can read."""

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return 2.0 * keras.ops.square(y_true - y_pred)


@pytest.mark.parametrize(
    ("loss", "match"),
    [
        (lambda y, p: y - p, r"'<lambda>': it is a custom function.*Supported Keras losses"),
        (Scaled(), r"cannot read the custom loss Scaled.*Supported Keras losses: the classes"),
        ("not_a_loss", "is not a Keras loss name"),
        (42, "must be a Keras loss"),
        (L.MeanSquaredError(reduction="none"), "reduction='none' is not supported"),
        (L.CategoricalCrossentropy(axis=1), "axis=1 is not supported"),
        (
            L.CosineSimilarity(),
            r"keras.losses.CosineSimilarity is built into Keras but not supported by initguard"
            r".*Supported Keras losses: the classes BinaryCrossentropy",
        ),
        (
            "mape",
            r"'mape' \(keras.losses.mean_absolute_percentage_error\) is built into Keras but "
            r"not supported by initguard.*functions or strings binary_crossentropy",
        ),
        ("hinge", r"'hinge' \(keras.losses.hinge\) is built into Keras but not supported"),
        (L.hinge, r"`loss` keras.losses.hinge is built into Keras but not supported"),
    ],
    ids=[
        "lambda",
        "custom-class",
        "unknown-string",
        "number",
        "no-reduction",
        "axis",
        "unsupported-class",
        "unsupported-string",
        "unsupported-string-hinge",
        "unsupported-function",
    ],
)
def test_unreadable_losses_are_rejected_when_constructed(loss: Any, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        InitGuard([0.0, 1.0], loss=loss)


def test_an_unsupported_compiled_loss_is_named_at_fit_start() -> None:
    model = _model("linear", 1, (2,))
    model.compile(optimizer="sgd", loss="mape")
    guard = InitGuard(np.ones(10, dtype="float32"))
    guard.set_model(model)
    with pytest.raises(InvalidInputError, match=r"'mape' .* not supported by initguard"):
        guard.on_train_begin()


def test_sum_over_several_regression_outputs_is_refused() -> None:
    model = _model("linear", 2, (2,))
    model.compile(optimizer="sgd", loss=L.MeanSquaredError(reduction="sum"))
    guard = InitGuard(np.ones((10, 2), dtype="float32"))
    guard.set_model(model)
    with pytest.raises(InvalidInputError, match="reduction='sum' over 2 outputs"):
        guard.on_train_begin()


def test_poisson_needs_a_positive_rate_activation() -> None:
    model = _model("relu", 1, (2,))
    model.compile(optimizer="sgd", loss="poisson")
    guard = InitGuard(np.ones(10, dtype="float32"))
    guard.set_model(model)
    with pytest.raises(InvalidInputError, match="Poisson needs a positive rate"):
        guard.on_train_begin()


def test_targets_that_are_all_ignored_are_rejected() -> None:
    model = _model("linear", 3, (2,))
    model.compile(optimizer="sgd", loss=L.SparseCategoricalCrossentropy(True, ignore_class=1))
    guard = InitGuard(np.ones(16, dtype="int64"))
    guard.set_model(model)
    with pytest.raises(InvalidInputError, match="no usable sample"):
        guard.on_train_begin()
