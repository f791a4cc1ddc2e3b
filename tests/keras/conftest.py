"""Keras test settings: TensorFlow backend, quiet TensorFlow logs, tiny seeded models."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
