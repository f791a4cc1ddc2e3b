"""InitGuard under tf.distribute.MirroredStrategy over two logical CPU devices."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
if keras.backend.backend() != "tensorflow":
    pytest.skip("needs the TensorFlow backend", allow_module_level=True)

from initguard import Verdict  # noqa: E402
from initguard.keras import InitGuard  # noqa: E402

# Logical devices can only be split before TensorFlow first uses a device;
# pytest imports this module while collecting, before any test runs.
try:
    (_CPU,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(_CPU, [tf.config.LogicalDeviceConfiguration()] * 2)
    _SPLIT = True
except RuntimeError:
    _SPLIT = False


def test_mirrored_strategy_writes_one_bias_on_every_replica_and_checks_step0() -> None:
    if not _SPLIT:
        # Devices were already initialised in this process: run here alone.
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return

    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    features = rng.normal(size=(256, 6)).astype("float32")
    labels = rng.choice(4, size=256, p=[0.55, 0.25, 0.15, 0.05])

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dense(4, name="head"),
            ]
        )
        model.compile(
            optimizer="sgd",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    guard = InitGuard(labels, strict=True)
    written: list[np.ndarray] = []

    class ReadReplicas(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            bias = self.model.get_layer("head").bias.value
            written.extend(np.asarray(v) for v in strategy.experimental_local_results(bias))

    model.fit(
        features, labels, batch_size=64, epochs=1, verbose=0, callbacks=[guard, ReadReplicas()]
    )

    report = guard.report
    assert report is not None and report.verdict is Verdict.PASS, report
    # The loss metric counts the rows of both replicas: the global batch.
    assert report.batch_size == 64
    assert guard.plan is not None
    log_freq = np.log(np.bincount(labels, minlength=4) / 256)
    np.testing.assert_allclose(guard.plan.bias, log_freq, rtol=1e-12)
    assert len(written) == 2
    for replica in written:
        np.testing.assert_allclose(replica, log_freq, rtol=1e-6)

    # After one epoch of identical updates every replica must still agree.
    bias = model.get_layer("head").bias
    replicas = strategy.experimental_local_results(bias.value)
    assert len(replicas) == 2
    np.testing.assert_array_equal(np.asarray(replicas[0]), np.asarray(replicas[1]))
