"""InitGuard under KERAS_BACKEND=torch (run in its own process: the backend is fixed at import)."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":
    pytest.skip("run with KERAS_BACKEND=torch", allow_module_level=True)

from initguard import (  # noqa: E402
    InitLossError,
    InitLossWarning,
    InvalidInputError,
    Verdict,
    check,
)
from initguard.keras import InitGuard  # noqa: E402

SEEDS = (0, 1, 2)


@contextlib.contextmanager
def _warns(match: str) -> Iterator[None]:
    """pytest.warns for InitLossWarning that leaves Keras's own notices ignored."""
    with pytest.warns(InitLossWarning, match=match), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(torch|keras)\.")
        yield


def _data(seed: int, n: int = 512, rate: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 6)).astype("float32")
    return features, (rng.random(n) < rate).astype("float32")


def _mlp(width: int = 1, activation: str = "linear") -> Any:
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(width, activation=activation, name="head"),
        ]
    )


class RecordThreads(keras.callbacks.Callback):
    """Notes the thread each batch end runs in; async_safe keeps dispatch asynchronous."""

    async_safe = True

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.threads.append(threading.get_ident())


@pytest.mark.parametrize("seed", SEEDS)
def test_bias_is_written_and_the_check_passes(seed: int) -> None:
    keras.utils.set_random_seed(seed)
    features, labels = _data(seed)
    model = _mlp()
    model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    before = {w.path: keras.ops.convert_to_numpy(w).copy() for w in model.weights}
    guard = InitGuard(labels, strict=True)
    model.fit(features, labels, batch_size=64, epochs=1, verbose=0, callbacks=[guard])
    report = guard.report
    assert report is not None and report.verdict is Verdict.PASS, report
    assert report.bias_set and report.batch_size == 64
    assert guard.plan is not None
    np.testing.assert_allclose(guard.plan.bias, [np.log(labels.mean() / (1 - labels.mean()))])
    assert [w.path for w in model.weights] == list(before)


def test_the_bias_written_is_the_plan_in_the_variable_dtype() -> None:
    model = _mlp(3)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
    labels = np.random.default_rng(0).choice(3, size=90, p=[0.6, 0.3, 0.1])
    guard = InitGuard(labels)
    guard.set_model(model)
    guard.on_train_begin()
    bias = model.get_layer("head").bias
    assert bias.dtype == "float32"
    assert guard.plan is not None
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bias), guard.plan.bias, rtol=1e-6)


def test_subclassed_model_is_built_before_train_begins_on_torch() -> None:
    class Net(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.head = keras.layers.Dense(1)
            self.body = keras.layers.Dense(8, activation="relu")

        def call(self, x: Any) -> Any:
            return self.head(self.body(x))

    keras.utils.set_random_seed(0)
    features, labels = _data(0)
    model = Net()
    model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    guard = InitGuard(labels, strict=True)
    model.fit(features, labels, batch_size=64, epochs=1, verbose=0, callbacks=[guard])
    assert guard.report is not None and guard.report.verdict is Verdict.PASS
    assert guard.report.layer == model.head.name


def test_an_unbuilt_model_is_reported_with_the_torch_backend_named() -> None:
    class Net(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.head = keras.layers.Dense(1)

        def call(self, x: Any) -> Any:
            return self.head(x)

    model = Net()
    model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    guard = InitGuard(np.array([0.0, 1.0, 1.0]))
    guard.set_model(model)
    with pytest.raises(
        InvalidInputError,
        match=r"not built when training begins \(on the torch backend .*Pass `input_shape=`",
    ):
        guard.on_train_begin()


def test_targets_under_validation_split_are_noted_on_torch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    features, labels = _data(0, n=400)
    match = r"the 400 targets .* fill 13 batch\(es\) of 32 rows .* runs 10 steps"
    for targets, noted in ((labels, True), (labels[:320], False)):
        keras.utils.set_random_seed(0)
        model = _mlp()
        model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
        guard = InitGuard(targets)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="initguard"):
            model.fit(
                features,
                labels,
                batch_size=32,
                validation_split=0.2,
                verbose=0,
                callbacks=[guard],
            )
        assert guard.report is not None
        notes = [note for note in guard.report.notes if re.search(match, note)]
        warned = [r.getMessage() for r in caplog.records if re.search(match, r.getMessage())]
        assert (len(notes), len(warned)) == ((1, 1) if noted else (0, 0)), guard.report.notes


def test_strict_failure_stops_before_the_second_step() -> None:
    keras.utils.set_random_seed(0)
    features, labels = _data(0, n=1024, rate=0.02)
    model = _mlp(1, "sigmoid")
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    guard = InitGuard(labels, set_bias=False, strict=True)
    with pytest.raises(InitLossError, match="before the second optimizer step"):
        model.fit(features, labels, batch_size=256, epochs=2, verbose=0, callbacks=[guard])
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 1


@pytest.mark.parametrize("seed", SEEDS)
def test_probabilities_fed_to_a_from_logits_loss_fire(seed: int) -> None:
    # The torch backend does not repair a sigmoid output under from_logits=True:
    # the loss sees sigmoid(0.02) = 0.505 where the bias meant 0.02 (loss 0.69, not 0.098).
    features, labels = _data(seed, n=1024, rate=0.02)
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    for activation, verdict in (("linear", Verdict.PASS), ("sigmoid", Verdict.FAIL)):
        keras.utils.set_random_seed(seed)
        model = _mlp(1, activation)
        model.compile(optimizer="sgd", loss=loss)
        guard = InitGuard(labels)
        if verdict is Verdict.FAIL:
            with _warns("probabilities are fed to a loss that expects logits"):
                model.fit(features, labels, batch_size=256, verbose=0, callbacks=[guard])
            assert guard.report is not None
            assert any("from_logits=True" in note for note in guard.report.notes)
        else:
            model.fit(features, labels, batch_size=256, verbose=0, callbacks=[guard])
        assert guard.report is not None and guard.report.verdict is verdict, guard.report


@pytest.mark.parametrize("seed", SEEDS)
def test_probabilities_fed_to_a_from_logits_loss_fail_at_ten_percent(seed: int) -> None:
    # At 10 % positives the doubled loss (about 0.73) sits inside the band around
    # the expected 0.33; the sigmoid on the head under from_logits=True decides it.
    features, labels = _data(seed, n=1024, rate=0.1)
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    keras.utils.set_random_seed(seed)
    model = _mlp(1, "sigmoid")
    model.compile(optimizer="sgd", loss=loss)
    guard = InitGuard(labels)
    with _warns("passed through sigmoid twice"):
        model.fit(features, labels, batch_size=256, verbose=0, callbacks=[guard])
    assert guard.report is not None and guard.report.verdict is Verdict.FAIL, guard.report
    assert guard.report.step0_loss > guard.report.expected_loss

    keras.utils.set_random_seed(seed)
    model = _mlp(1, "linear")
    model.compile(optimizer="sgd", loss=loss)
    guard = InitGuard(labels)
    model.fit(features, labels, batch_size=256, verbose=0, callbacks=[guard])
    assert guard.report is not None and guard.report.verdict is Verdict.PASS, guard.report


def test_async_batch_dispatch_stays_on() -> None:
    keras.utils.set_random_seed(0)
    features, labels = _data(0)
    model = _mlp()
    model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    guard = InitGuard(labels, strict=True)
    recorder = RecordThreads()
    model.fit(features, labels, batch_size=64, verbose=0, callbacks=[guard, recorder])
    assert guard.report is not None and guard.report.verdict is Verdict.PASS
    # Asynchronous dispatch runs batch-end hooks on worker threads, never the main one.
    assert len(recorder.threads) == 8
    assert threading.get_ident() not in recorder.threads

    # The control: a callback with a batch-end hook of its own turns it off.
    class Blocking(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            pass

    recorder = RecordThreads()
    model.fit(features, labels, batch_size=64, verbose=0, callbacks=[Blocking(), recorder])
    assert set(recorder.threads) == {threading.get_ident()}


def test_weight_regularisation_is_accounted_on_torch() -> None:
    keras.utils.set_random_seed(0)
    features, labels = _data(0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(
                16, activation="relu", kernel_regularizer=keras.regularizers.L2(1.0)
            ),
            keras.layers.Dense(1, name="head"),
        ]
    )
    model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    guard = InitGuard(labels, strict=True)
    model.fit(features, labels, batch_size=64, epochs=1, verbose=0, callbacks=[guard])
    report = guard.report
    assert report is not None and report.verdict is Verdict.PASS, report
    assert guard.plan is not None and report.expected_loss is not None
    penalty = report.expected_loss - guard.plan.expected_loss
    assert penalty > 1.0
    # Leaving the penalty out would false-alarm.
    assert report.step0_loss is not None and report.batch_size is not None
    unpenalised = check(guard.plan, report.step0_loss, report.batch_size)
    assert unpenalised.verdict is Verdict.FAIL, unpenalised
