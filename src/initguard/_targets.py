"""Turning user targets (numpy, lists, torch or TensorFlow tensors) into numpy."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._errors import InvalidInputError


def to_numpy(targets: Any, name: str = "targets") -> np.ndarray:
    """Converts array-like targets to a numpy array without importing a framework.

    torch tensors and TensorFlow tensors are recognised by their methods
    (``detach``/``cpu``/``numpy``), so the core never imports either.

    Args:
        targets: a numpy array, a (nested) list or tuple of numbers, a torch
            tensor or a TensorFlow tensor.
        name: the argument name used in error messages. Defaults to "targets".

    Returns:
        The targets as a numpy array (integer, boolean or float dtype).

    Raises:
        InvalidInputError: the input is None, empty, ragged, or not numeric.
    """
    if targets is None:
        raise InvalidInputError(f"`{name}` must be array-like; received None.")

    array = _convert(targets, name)
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise InvalidInputError(
            f"`{name}` must hold numbers (bool, int or float); received dtype {array.dtype}."
        )
    if array.size == 0:
        raise InvalidInputError(f"`{name}` must not be empty; received shape {array.shape}.")
    return array


def _convert(targets: Any, name: str) -> np.ndarray:
    value = targets
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return np.asarray(value.numpy())
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):  # tf.Tensor, jax
        try:
            return np.asarray(value.numpy())
        except (TypeError, ValueError, AttributeError):
            pass
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(
            f"`{name}` could not be read as an array ({error}); received {type(targets)!r}."
        ) from None


def require_finite(array: np.ndarray, name: str = "targets") -> None:
    """Raises when a float array holds NaN or infinity, naming the first bad entry."""
    if array.dtype.kind != "f":
        return
    bad = ~np.isfinite(array)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InvalidInputError(
            f"`{name}` must be finite; received {array[index].item()!r} at index {index}."
        )
