"""Keras on scikit-learn's breast cancer data (imbalanced binary: 37 % malignant).

Run: .venv/bin/python examples/keras_breast_cancer.py
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from _report import print_report
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler

from initguard.keras import InitGuard


def main() -> None:
    keras.utils.set_random_seed(0)
    features, labels = load_breast_cancer(return_X_y=True)
    features = StandardScaler().fit_transform(features).astype("float32")
    # Predict "malignant" (label 0 in scikit-learn), the minority class.
    malignant = (labels == 0).astype("float32")

    model = keras.Sequential(
        [
            keras.Input(shape=(features.shape[1],)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")

    guard = InitGuard(malignant)
    model.fit(features, malignant, batch_size=32, epochs=2, verbose=0, callbacks=[guard])

    print_report("Keras, breast cancer (binary)", guard)
    rate = float(np.mean(malignant))
    print(f"{'positive rate':>22}: {rate:.4f}")


if __name__ == "__main__":
    main()
