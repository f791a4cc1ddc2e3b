"""InitGuard inside real model.fit runs (TensorFlow backend)."""

from __future__ import annotations

import contextlib
import csv
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")
if keras.backend.backend() != "tensorflow":
    pytest.skip("needs the TensorFlow backend", allow_module_level=True)

from sklearn.datasets import load_breast_cancer, load_digits  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from initguard import (  # noqa: E402
    InitLossError,
    InitLossWarning,
    InvalidInputError,
    Tolerance,
    Verdict,
    check,
)
from initguard.keras import InitGuard  # noqa: E402

SEEDS = (0, 1, 2)


def _mlp(inputs: int, width: int, activation: str = "linear", **head: Any) -> Any:
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(width, activation=activation, name="head", **head),
        ]
    )


def _fit(model: Any, x: Any, y: Any, guard: Any, **options: Any) -> Any:
    options.setdefault("batch_size", 32)
    options.setdefault("epochs", 1)
    return model.fit(x, y, verbose=0, callbacks=[guard], **options)


def _breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    features, labels = load_breast_cancer(return_X_y=True)
    features = StandardScaler().fit_transform(features).astype("float32")
    return features, (labels == 0).astype("float32")


def _rare(seed: int, n: int = 1024, rate: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 8)).astype("float32")
    labels = (rng.random(n) < rate).astype("float32")
    return features, labels


@contextlib.contextmanager
def _warns(match: str, category: type[Warning] = InitLossWarning) -> Iterator[None]:
    """pytest.warns that leaves TensorFlow's own deprecation notices ignored."""
    with pytest.warns(category, match=match), warnings.catch_warnings():
        # pytest.warns re-raises every other warning it sees; the suite already
        # ignores these deprecation notices from TensorFlow and Keras internals.
        warnings.filterwarnings(
            "ignore", category=DeprecationWarning, module=r"(tensorflow|keras|google)\."
        )
        yield


# No false alarm on correctly set-up models.


@pytest.mark.parametrize("seed", SEEDS)
def test_imbalanced_binary_breast_cancer_passes(seed: int) -> None:
    keras.utils.set_random_seed(seed)
    features, labels = _breast_cancer()
    model = _mlp(features.shape[1], 1, "sigmoid")
    model.compile(optimizer="adam", loss="binary_crossentropy")
    guard = InitGuard(labels, strict=True)
    _fit(model, features, labels, guard)
    assert guard.report is not None and guard.report.verdict is Verdict.PASS, guard.report
    assert guard.report.bias_set and guard.report.layer == "head"
    assert guard.report.batch_size == 32


@pytest.mark.parametrize("seed", SEEDS)
def test_digits_softmax_passes(seed: int) -> None:
    keras.utils.set_random_seed(seed)
    features, labels = load_digits(return_X_y=True)
    features = (features / 16.0).astype("float32")
    model = _mlp(64, 10)
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    guard = InitGuard(labels, strict=True)
    _fit(model, features, labels, guard)
    assert guard.report is not None and guard.report.verdict is Verdict.PASS, guard.report


class StopAfterTheCheck(keras.callbacks.Callback):
    """Ends fit after its second batch: the check has concluded when that batch begins."""

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if batch >= 1:
            self.model.stop_training = True


def _default_keras_fit(features: Any, targets: Any, hidden: int, output: Any, loss: str) -> Any:
    """A default-initialised Keras MLP trained with Adam at batch 32, as a user would."""
    model = keras.Sequential(
        [keras.Input((features.shape[1],)), keras.layers.Dense(hidden, activation="relu"), output]
    )
    model.compile(optimizer="adam", loss=loss)
    guard = InitGuard(targets, strict=True)
    model.fit(
        features,
        targets,
        batch_size=32,
        epochs=1,
        verbose=0,
        callbacks=[guard, StopAfterTheCheck()],
    )
    report = guard.report
    assert report is not None and report.verdict is Verdict.PASS, report
    assert report.batch_size == 32 and report.bias_set
    assert not any("not the training data" in note for note in report.notes)
    return report


@pytest.mark.parametrize("seed", range(6))
def test_default_keras_digits_mlp_passes(seed: int) -> None:
    # Glorot-initialised softmax heads on standardised digits move the step-0 loss by
    # -3 % to +31 % on these seeds: far beyond its sampling error, well inside the band.
    keras.utils.set_random_seed(seed)
    features, labels = load_digits(return_X_y=True)
    features = StandardScaler().fit_transform(features).astype("float32")
    output = keras.layers.Dense(10, activation="softmax")
    report = _default_keras_fit(features, labels, 64, output, "sparse_categorical_crossentropy")
    np.testing.assert_allclose(report.expected_loss, np.log(10), rtol=0.01)


@pytest.mark.parametrize("positive", [0, 1])
@pytest.mark.parametrize("seed", range(10))
def test_default_keras_breast_cancer_mlp_passes(seed: int, positive: int) -> None:
    # A sigmoid head on 30 standardised features moves the step-0 loss by -38 % to +123 %
    # on these seeds (expected 0.660 for either class as positive).
    keras.utils.set_random_seed(seed)
    features, labels = load_breast_cancer(return_X_y=True)
    features = StandardScaler().fit_transform(features).astype("float32")
    targets = (labels == positive).astype("float32")
    output = keras.layers.Dense(1, activation="sigmoid")
    _default_keras_fit(features, targets, 16, output, "binary_crossentropy")


@pytest.mark.parametrize("seed", SEEDS)
def test_regression_with_widely_varying_errors_passes(seed: int) -> None:
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(512, 6)).astype("float32")
    # A large mean and heavy-tailed errors: squared errors vary over orders of magnitude.
    targets = (1000.0 + 50.0 * rng.standard_t(3, size=512)).astype("float32")
    model = _mlp(6, 1)
    model.compile(optimizer="sgd", loss="mse")
    guard = InitGuard(targets, strict=True)
    _fit(model, features, targets, guard)
    report = guard.report
    assert report is not None and report.verdict is Verdict.PASS, report
    # Without the bias the loss would be about 1000**2.
    assert report.zero_bias_loss is not None and report.zero_bias_loss > 1e5


def test_sequence_outputs_count_every_position() -> None:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(96, 10, 4)).astype("float32")
    tokens = rng.choice(6, size=(96, 10), p=[0.4, 0.3, 0.15, 0.1, 0.04, 0.01])
    values = rng.gamma(2.0, 50.0, size=(96, 10)).astype("float32")
    cases = [
        (tokens, 6, keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
        (values, 1, "mse"),
    ]
    for targets, width, loss in cases:
        model = keras.Sequential(
            [
                keras.Input((10, 4)),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dense(width, name="head"),
            ]
        )
        model.compile(optimizer="sgd", loss=loss)
        guard = InitGuard(targets, strict=True)
        _fit(model, features, targets, guard)
        report = guard.report
        assert report is not None and report.verdict is Verdict.PASS, report
        assert report.batch_size == 32
        assert guard.plan is not None and guard.plan.units_per_row == 10


def test_sequential_without_input_is_built_from_input_shape() -> None:
    keras.utils.set_random_seed(0)
    features, labels = _breast_cancer()
    model = keras.Sequential(
        [keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1, name="head")]
    )
    model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    guard = InitGuard(labels, input_shape=(features.shape[1],), strict=True)
    _fit(model, features, labels, guard)
    assert guard.report is not None and guard.report.verdict is Verdict.PASS
    assert guard.report.layer == "head" and guard.report.bias_set


# Fires on real faults, and the same set-up without the fault passes.


@pytest.mark.parametrize("seed", SEEDS)
def test_final_weights_twenty_times_too_large_fire(seed: int) -> None:
    features, labels = _breast_cancer()
    for scale, verdict in ((1.0, Verdict.PASS), (20.0, Verdict.FAIL)):
        keras.utils.set_random_seed(seed)
        model = _mlp(features.shape[1], 1)
        head = model.get_layer("head")
        head.kernel.assign(head.kernel.numpy() * scale)
        model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True))
        guard = InitGuard(labels)
        if verdict is Verdict.FAIL:
            with _warns("vary far more around the bias"):
                _fit(model, features, labels, guard)
        else:
            _fit(model, features, labels, guard)
        assert guard.report is not None and guard.report.verdict is verdict, guard.report


@pytest.mark.parametrize("seed", SEEDS)
def test_bias_left_unset_on_rare_positives_fires(seed: int) -> None:
    features, labels = _rare(seed)
    for set_bias, verdict in ((True, Verdict.PASS), (False, Verdict.FAIL)):
        keras.utils.set_random_seed(seed)
        model = _mlp(8, 1, "sigmoid")
        model.compile(optimizer="sgd", loss="binary_crossentropy")
        bias_before = model.get_layer("head").bias.numpy().copy()
        guard = InitGuard(labels, set_bias=set_bias)
        # 2 % positives: the planned bias gives 0.098, a zero bias about 0.69. A batch
        # of 32 holds 0.6 positives, far too noisy for that; 256 rows hold about 5.
        if verdict is Verdict.FAIL:
            with _warns("FAIL"):
                _fit(model, features, labels, guard, batch_size=256)
            assert guard.report is not None and not guard.report.bias_set
            assert "set_bias=False" in " ".join(guard.report.notes)
        else:
            _fit(model, features, labels, guard, batch_size=256)
            assert not np.array_equal(model.get_layer("head").bias.numpy(), bias_before)
        assert guard.report is not None and guard.report.verdict is verdict, guard.report


def test_output_width_must_match_the_targets() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(64, 4)).astype("float32")
    labels = rng.choice(4, size=64)
    one_hot = np.eye(3, dtype="float32")[rng.choice(3, size=64)]

    model = _mlp(4, 3)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
    with pytest.raises(InvalidInputError, match="must be < num_classes=3"):
        _fit(model, features, labels, InitGuard(labels))

    model = _mlp(4, 4)
    model.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    with pytest.raises(InvalidInputError, match="imply 3 outputs but layer 'head' has 4"):
        _fit(model, features, one_hot, InitGuard(one_hot))

    model = _mlp(4, 2, "sigmoid")
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    binary = (rng.random((64, 3)) < 0.5).astype("float32")
    with pytest.raises(InvalidInputError, match="imply 3 outputs but layer 'head' has 2"):
        _fit(model, features, binary, InitGuard(binary))

    # The matching width passes.
    model = _mlp(4, 4)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
    guard = InitGuard(labels)
    _fit(model, features, labels, guard)
    assert guard.report is not None and guard.report.verdict is Verdict.PASS


def test_probability_loss_on_a_linear_output_fails_at_fit_start() -> None:
    model = _mlp(4, 3)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    guard = InitGuard([0, 1, 2, 1])
    with pytest.raises(InvalidInputError, match=r"expects probabilities.*activation 'linear'"):
        _fit(model, np.zeros((4, 4), "float32"), np.array([0, 1, 2, 1]), guard)


def test_a_nan_step0_loss_never_passes() -> None:
    features, labels = _breast_cancer()
    model = _mlp(features.shape[1], 1)
    head = model.get_layer("head")
    # A broken head (say, a diverged checkpoint) makes every output NaN.
    head.kernel.assign(np.full(head.kernel.shape, np.nan, dtype="float32"))
    model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    guard = InitGuard(labels, strict=True)
    with pytest.raises(InitLossError, match="not finite"):
        _fit(model, features, labels, guard, shuffle=False)


def test_softmax_output_under_from_logits_is_noted_and_repaired_by_tensorflow() -> None:
    keras.utils.set_random_seed(0)
    features, labels = load_digits(return_X_y=True)
    features = (features / 16.0).astype("float32")
    model = _mlp(64, 10, "softmax")
    model.compile(
        optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    guard = InitGuard(labels, strict=True)
    with _warns("from_logits=True", UserWarning):
        _fit(model, features, labels, guard)
    report = guard.report
    assert report is not None and report.verdict is Verdict.PASS, report
    assert any("TensorFlow backend repairs this" in note for note in report.notes)


# Strictness.


def test_strict_failure_raises_before_the_second_optimizer_step() -> None:
    keras.utils.set_random_seed(0)
    features, labels = _rare(0)
    model = _mlp(8, 1, "sigmoid")
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    guard = InitGuard(labels, set_bias=False, strict=True)
    with pytest.raises(InitLossError, match="before the second optimizer step"):
        _fit(model, features, labels, guard, batch_size=256, epochs=3)
    assert int(model.optimizer.iterations.numpy()) == 1
    assert guard.report is not None and guard.report.verdict is Verdict.FAIL


@pytest.mark.parametrize(("value", "raises"), [("1", True), ("yes", True), ("0", False)])
def test_environment_decides_strictness(
    monkeypatch: pytest.MonkeyPatch, value: str, raises: bool
) -> None:
    monkeypatch.setenv("INITGUARD_STRICT", value)
    features, labels = _rare(1)
    keras.utils.set_random_seed(1)
    model = _mlp(8, 1, "sigmoid")
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    guard = InitGuard(labels, set_bias=False)
    assert guard.strict is raises
    if raises:
        with pytest.raises(InitLossError):
            _fit(model, features, labels, guard, batch_size=256)
    else:
        with _warns("FAIL"):
            _fit(model, features, labels, guard, batch_size=256)


def test_bad_environment_value_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INITGUARD_STRICT", "maybe")
    with pytest.raises(InvalidInputError, match="INITGUARD_STRICT must be one of"):
        InitGuard([0, 1])


# Regularisation, exactness of Keras's class_weight, and when the loss is read.


def test_weight_regularisation_is_added_to_the_expected_loss() -> None:
    keras.utils.set_random_seed(4)
    features, labels = _breast_cancer()
    model = _mlp(features.shape[1], 1, "sigmoid", kernel_regularizer=keras.regularizers.L2(0.5))
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    penalty = float(sum(float(v) for v in model.losses))
    guard = InitGuard(labels, strict=True)
    _fit(model, features, labels, guard)
    report = guard.report
    assert report is not None and report.verdict is Verdict.PASS, report
    assert guard.plan is not None and report.expected_loss is not None
    np.testing.assert_allclose(report.expected_loss, guard.plan.expected_loss + penalty)
    # Leaving the penalty out would false-alarm.
    assert report.step0_loss is not None and report.batch_size is not None
    unpenalised = check(guard.plan, report.step0_loss, report.batch_size)
    assert unpenalised.verdict is Verdict.FAIL, unpenalised


def test_keras_class_weight_is_exact() -> None:
    # 900 negatives and 100 positives with class_weight {0: 1, 1: 9}: equal weighted masses.
    labels = np.array([0] * 900 + [1] * 100)
    features = np.random.default_rng(0).normal(size=(1000, 3)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="head")])
    model.get_layer("head").kernel.assign(np.zeros((3, 2), "float32"))
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    weights = {0: 1.0, 1: 9.0}
    guard = InitGuard(labels, class_weight=weights, strict=True)
    _fit(model, features, labels, guard, batch_size=1000, class_weight=weights, shuffle=False)
    report = guard.report
    assert report is not None and report.verdict is Verdict.PASS
    assert report.expected_loss is not None and report.step0_loss is not None
    np.testing.assert_allclose(report.expected_loss, 1.247665, atol=5e-7)
    np.testing.assert_allclose(report.step0_loss, report.expected_loss, rtol=1e-5)
    assert guard.plan is not None
    np.testing.assert_allclose(guard.plan.bias[0], guard.plan.bias[1])


def test_class_weight_under_mean_with_sample_weight_is_exact() -> None:
    # This reduction divides by the summed weights, as torch's `weight` does.
    rng = np.random.default_rng(6)
    labels = rng.choice(3, size=300, p=[0.6, 0.3, 0.1])
    features = rng.normal(size=(300, 3)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, name="head")])
    model.get_layer("head").kernel.assign(np.zeros((3, 3), "float32"))
    loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight"
    )
    model.compile(optimizer="sgd", loss=loss)
    weights = {0: 1.0, 1: 2.0, 2: 6.0}
    guard = InitGuard(labels, class_weight=weights)
    _fit(model, features, labels, guard, batch_size=300, class_weight=weights)
    report = guard.report
    assert report is not None and report.step0_loss is not None
    np.testing.assert_allclose(report.step0_loss, report.expected_loss, rtol=1e-5)


def test_binary_class_weight_is_exact() -> None:
    rng = np.random.default_rng(5)
    labels = (rng.random(400) < 0.1).astype("float32")
    features = rng.normal(size=(400, 3)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="head")])
    model.get_layer("head").kernel.assign(np.zeros((3, 1), "float32"))
    model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    weights = {0: 0.5, 1: 4.0}
    guard = InitGuard(labels, class_weight=weights)
    _fit(model, features, labels, guard, batch_size=400, class_weight=weights)
    report = guard.report
    assert report is not None and report.step0_loss is not None
    np.testing.assert_allclose(report.step0_loss, report.expected_loss, rtol=1e-5)


def test_one_batch_epochs_are_read_at_epoch_end_or_before_validation() -> None:
    features, labels = _breast_cancer()
    for validation in (None, (features[:50], labels[:50])):
        keras.utils.set_random_seed(0)
        model = _mlp(features.shape[1], 1, "sigmoid")
        model.compile(optimizer="sgd", loss="binary_crossentropy")
        guard = InitGuard(labels, strict=True)
        history = _fit(
            model, features, labels, guard, batch_size=1024, epochs=2, validation_data=validation
        )
        report = guard.report
        assert report is not None and report.verdict is Verdict.PASS, report
        assert report.batch_size == features.shape[0]
        np.testing.assert_allclose(report.step0_loss, history.history["loss"][0], rtol=1e-6)


@pytest.mark.parametrize(
    ("given", "options", "match"),
    [
        (slice(0, 100), {}, r"the 100 targets .* fill 4 batch\(es\) of 32 rows .* runs 13 steps"),
        (
            slice(None),
            {"validation_split": 0.2},
            r"the 400 targets .* fill 13 batch\(es\) of 32 rows .* runs 10 steps",
        ),
        (
            slice(0, 100),
            {"batch_size": 1024},
            r"trains on 400 rows in one batch per epoch, but InitGuard was given 100 targets",
        ),
    ],
    ids=["subset", "validation-split", "one-batch-subset"],
)
def test_targets_that_are_not_the_training_data_are_noted_and_logged(
    caplog: pytest.LogCaptureFixture, given: slice, options: dict, match: str
) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 4)).astype("float32")
    labels = (rng.random(400) < 0.3).astype("float32")
    for targets, noted in ((labels[given], True), (labels, False)):
        if not noted and "validation_split" in options:
            targets = labels[:320]  # what fit keeps: the leading 80 %
        keras.utils.set_random_seed(0)
        model = _mlp(4, 1)
        model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
        guard = InitGuard(targets)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="initguard"):
            _fit(model, features, labels, guard, **options)
        report = guard.report
        assert report is not None and report.verdict is not Verdict.SKIPPED
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        mismatch = [note for note in report.notes if "not the training data" in note]
        if noted:
            assert len(mismatch) == 1 and re.search(match, mismatch[0]), report.notes
            assert re.search(r"validation_split.*pass exactly the targets", mismatch[0])
            assert [m for m in warned if re.search(match, m)], warned
        else:
            assert mismatch == [] and not warned, (report.notes, warned)


def test_metrics_reach_history_and_a_csv_logger_listed_after(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    features, labels = _breast_cancer()
    model = _mlp(features.shape[1], 1, "sigmoid")
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    guard = InitGuard(labels)
    path = tmp_path / "log.csv"
    history = model.fit(
        features,
        labels,
        batch_size=64,
        epochs=2,
        verbose=0,
        callbacks=[guard, keras.callbacks.CSVLogger(str(path))],
    )
    assert guard.report is not None
    names = ("initguard/expected_loss", "initguard/step0_loss", "initguard/deviation")
    for name in names:
        assert len(history.history[name]) == 1
    assert history.history["initguard/step0_loss"][0] == pytest.approx(guard.report.step0_loss)
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[0]["initguard/expected_loss"]) == pytest.approx(guard.report.expected_loss)
    assert rows[1]["initguard/expected_loss"] == "NA"


def test_batch_end_hooks_stay_default_so_async_dispatch_is_kept() -> None:
    base = keras.callbacks.Callback
    for hook in ("on_batch_end", "on_train_batch_end", "on_test_batch_end"):
        assert getattr(InitGuard, hook) is getattr(base, hook)


def test_steps_per_execution_above_one_skips_the_check_and_says_why() -> None:
    keras.utils.set_random_seed(0)
    features, labels = _breast_cancer()
    model = _mlp(features.shape[1], 1, "sigmoid")
    model.compile(optimizer="sgd", loss="binary_crossentropy", steps_per_execution=2)
    guard = InitGuard(labels, strict=True)
    history = _fit(model, features, labels, guard)
    report = guard.report
    assert report is not None and report.verdict is Verdict.SKIPPED
    assert "steps_per_execution=2" in report.cause and report.bias_set
    assert "initguard/step0_loss" not in history.history
    assert guard.plan is not None
    np.testing.assert_allclose(guard.plan.bias, [np.log(labels.mean() / (1 - labels.mean()))])


# Layers, bias and model state.


def test_only_the_bias_changes_and_the_activation_layer_is_walked_past() -> None:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    logits = keras.layers.Dense(3, name="head")(hidden)
    outputs = keras.layers.Softmax()(keras.layers.Dropout(0.1)(logits))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    targets = np.eye(3, dtype="float32")[np.random.default_rng(0).choice(3, 90, p=[0.6, 0.3, 0.1])]
    before = {w.path: w.numpy().copy() for w in model.weights}
    guard = InitGuard(targets)
    guard.set_model(model)
    guard.on_train_begin()
    after = {w.path: w.numpy() for w in model.weights}
    assert before.keys() == after.keys()
    changed = [p for p in before if not np.array_equal(before[p], after[p])]
    assert changed == [model.get_layer("head").bias.path]
    assert guard.plan is not None
    np.testing.assert_allclose(after[changed[0]], guard.plan.bias, rtol=1e-6)


def test_head_inside_a_nested_model_is_found() -> None:
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="inner_head")])
    inputs = keras.Input((3,))
    model = keras.Model(inputs, inner(keras.layers.Dense(4)(inputs)))
    model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    guard = InitGuard(np.array([[1, 0], [0, 0], [1, 1], [0, 0]], dtype="float32"))
    guard.set_model(model)
    guard.on_train_begin()
    np.testing.assert_allclose(
        inner.get_layer("inner_head").bias.numpy(), [0.0, np.log(1 / 3)], atol=1e-6
    )


class TwoHeads(keras.Model):
    # Attribute order puts the head first: layers[-1] is the hidden layer.
    def __init__(self) -> None:
        super().__init__()
        self.head = keras.layers.Dense(3)
        self.side = keras.layers.Dense(3)
        self.body = keras.layers.Dense(8, activation="relu")

    def call(self, x: Any) -> Any:
        return self.head(self.body(x)) + 0.0 * self.side(x)


class OneHead(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.head = keras.layers.Dense(3)
        self.body = keras.layers.Dense(8, activation="relu")

    def call(self, x: Any) -> Any:
        return self.head(self.body(x))


def test_unbuilt_subclassed_model_needs_an_input_shape() -> None:
    labels = np.random.default_rng(0).choice(3, size=64, p=[0.7, 0.2, 0.1])
    features = np.random.default_rng(1).normal(size=(64, 5)).astype("float32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    model = OneHead()
    model.compile(optimizer="sgd", loss=loss)
    with pytest.raises(
        InvalidInputError,
        match=r"not built when training begins \(on the tensorflow backend.*input_shape",
    ):
        _fit(model, features, labels, InitGuard(labels))

    model = OneHead()
    model.compile(optimizer="sgd", loss=loss)
    guard = InitGuard(labels, input_shape=(5,), strict=True)
    _fit(model, features, labels, guard)
    assert guard.report is not None and guard.report.verdict is Verdict.PASS
    assert guard.report.layer == model.head.name


def test_several_candidate_heads_ask_for_layer() -> None:
    labels = np.random.default_rng(0).choice(3, size=32)
    model = TwoHeads()
    model(np.zeros((1, 3), "float32"))
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
    guard = InitGuard(labels)
    guard.set_model(model)
    with pytest.raises(InvalidInputError, match=r"several layers.*Pass `layer=` with one of"):
        guard.on_train_begin()

    guard = InitGuard(labels, layer=model.head.name)
    guard.set_model(model)
    guard.on_train_begin()
    assert guard.plan is not None
    np.testing.assert_allclose(model.head.bias.numpy(), guard.plan.bias, rtol=1e-6)
    np.testing.assert_array_equal(model.side.bias.numpy(), np.zeros(3))


def test_head_without_bias_errors_or_checks_only() -> None:
    features, labels = _rare(3, rate=0.3)
    model = _mlp(8, 1, "sigmoid", use_bias=False)
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    with pytest.raises(InvalidInputError, match=r"has no bias .*set_bias=False"):
        _fit(model, features, labels, InitGuard(labels))

    names = [w.path for w in model.weights]
    guard = InitGuard(labels, set_bias=False)
    _fit(model, features, labels, guard)
    assert guard.report is not None and not guard.report.bias_set
    assert guard.report.verdict in (Verdict.PASS, Verdict.FAIL)
    assert [w.path for w in model.weights] == names


def test_a_second_fit_keeps_the_trained_bias_and_a_reused_callback_starts_clean() -> None:
    keras.utils.set_random_seed(0)
    features, labels = _breast_cancer()
    model = _mlp(features.shape[1], 1, "sigmoid")
    model.compile(optimizer="adam", loss="binary_crossentropy")
    guard = InitGuard(labels)
    _fit(model, features, labels, guard, epochs=2)
    assert guard.report is not None and guard.report.verdict is Verdict.PASS
    trained = model.get_layer("head").bias.numpy().copy()

    guard.set_model(model)
    guard.on_train_begin()
    np.testing.assert_array_equal(model.get_layer("head").bias.numpy(), trained)
    assert guard.report is not None and guard.report.verdict is Verdict.SKIPPED
    assert "already taken" in guard.report.cause

    fresh = _mlp(features.shape[1], 1, "sigmoid")
    fresh.compile(optimizer="adam", loss="binary_crossentropy")
    _fit(fresh, features, labels, guard)
    assert guard.report is not None and guard.report.verdict is Verdict.PASS


# Argument validation: each names the argument and what arrived.


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"targets": None}, "`targets` must be array-like"),
        ({"targets": []}, "`targets` must not be empty"),
        ({"targets": [0.0, float("nan")]}, "`targets` must be finite"),
        ({"targets": "abc"}, "`targets` must be array-like numbers"),
        ({"class_weight": [1.0, 2.0]}, "`class_weight` must be a non-empty mapping"),
        ({"class_weight": {0: -1.0}}, "`class_weight` values must be finite numbers >= 0"),
        ({"class_weight": {"a": 1.0}}, "`class_weight` keys must be class indices"),
        ({"layer": 3}, "`layer` must be a layer name"),
        ({"set_bias": "yes"}, "`set_bias` must be True or False"),
        ({"strict": 1}, "`strict` must be True, False or None"),
        ({"tolerance": 0.1}, "`tolerance` must be an initguard.Tolerance"),
        ({"input_shape": (0, 3)}, "`input_shape` must be one sample's shape"),
        ({"input_shape": 5}, "`input_shape` must be one sample's shape"),
    ],
)
def test_invalid_arguments_are_rejected_when_constructed(kwargs: dict, match: str) -> None:
    arguments: dict[str, Any] = {"targets": [0, 1, 1]}
    arguments.update(kwargs)
    with pytest.raises(InvalidInputError, match=match):
        InitGuard(arguments.pop("targets"), **arguments)


def test_tolerance_and_layer_object_are_accepted() -> None:
    model = _mlp(3, 2)
    model.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    guard = InitGuard(
        np.eye(2, dtype="float32")[[0, 0, 1]],
        layer=model.get_layer("head"),
        tolerance=Tolerance(sigmas=6.0),
    )
    guard.set_model(model)
    guard.on_train_begin()
    assert guard.plan is not None and guard.plan.bias.shape == (2,)


def test_unknown_layer_name_lists_the_candidates() -> None:
    model = _mlp(3, 2)
    model.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    guard = InitGuard(np.eye(2, dtype="float32")[[0, 1]], layer="nope")
    guard.set_model(model)
    with pytest.raises(InvalidInputError, match=r"`layer` 'nope' is not a layer.*'head'"):
        guard.on_train_begin()


def test_loss_weights_are_refused() -> None:
    model = _mlp(3, 1)
    model.compile(optimizer="sgd", loss="mse", loss_weights=2.0)
    guard = InitGuard([1.0, 2.0])
    guard.set_model(model)
    with pytest.raises(InvalidInputError, match=r"loss_weights=2\.0"):
        guard.on_train_begin()
