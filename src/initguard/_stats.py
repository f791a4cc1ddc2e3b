"""Streaming, mergeable statistics of training targets.

Each accumulator takes target batches through ``update`` and combines with
another of its kind through ``merge``. Merging is exact (sums of counts and
moments, or concatenation of values), so statistics gathered batch by batch,
or rank by rank and merged in rank order, give the same plan everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._errors import InvalidInputError
from ._targets import require_finite, to_numpy

# Second-moment matrices cost classes**2 floats; above this width only their
# diagonal is kept and the spread uses a conservative bound instead.
MAX_GRAM_WIDTH = 1024


def _gram(rows: np.ndarray) -> np.ndarray | None:
    if rows.shape[1] > MAX_GRAM_WIDTH:
        return None
    return rows.T @ rows


def _add_optional(left: np.ndarray | None, right: np.ndarray | None) -> np.ndarray | None:
    if left is None or right is None:
        return None
    return left + right


def _pad(vector: np.ndarray, width: int) -> np.ndarray:
    return np.pad(vector, (0, width - vector.shape[0]))


@dataclass
class ClassStats:
    """Per-class target mass for softmax losses.

    Targets are either class indices (any shape: every element is a sample)
    or probability rows with the classes along ``class_axis``.

    Args:
        num_classes: number of classes when known; None grows with the labels.
        ignore_index: class index to leave out, or None.
        class_axis: axis of probability targets that holds the classes.
    """

    num_classes: int | None = None
    ignore_index: int | None = None
    class_axis: int = 1
    mass: np.ndarray = field(default_factory=lambda: np.zeros(0))
    diag_sq: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gram: np.ndarray | None = None
    samples: int = 0
    ignored: int = 0
    rows: int = 0
    probabilities: bool | None = None
    one_hot: bool = True

    def __post_init__(self) -> None:
        if self.num_classes is not None and self.mass.shape[0] == 0:
            self.mass = np.zeros(self.num_classes)
            self.diag_sq = np.zeros(self.num_classes)

    def update(self, targets: object) -> ClassStats:
        """Adds a batch of targets; returns self."""
        array = to_numpy(targets)
        require_finite(array)
        # A float array with a class axis holds probability rows, unless that
        # axis is a singleton (labels stored as floats, shaped [N, 1]).
        if array.ndim >= 2 and array.dtype.kind == "f" and array.shape[self.class_axis] != 1:
            self._add_probabilities(array)
        else:
            self._add_labels(array)
        self.rows += int(array.shape[0]) if array.ndim else 1
        return self

    def _add_labels(self, array: np.ndarray) -> None:
        self._set_kind(probabilities=False)
        labels = array.reshape(-1)
        if labels.dtype.kind == "f":
            if not np.all(labels == np.round(labels)):
                bad = labels[labels != np.round(labels)][0]
                raise InvalidInputError(
                    "Class-index `targets` must be whole numbers (or give probability rows "
                    f"with at least two dimensions); received {bad!r}."
                )
        labels = labels.astype(np.int64)

        keep = labels != self.ignore_index if self.ignore_index is not None else None
        if keep is not None:
            self.ignored += int(labels.size - keep.sum())
            labels = labels[keep]
        if labels.size and labels.min() < 0:
            raise InvalidInputError(
                f"Class-index `targets` must be >= 0 (or equal ignore_index="
                f"{self.ignore_index}); received {int(labels.min())}."
            )
        if labels.size and self.num_classes is not None and labels.max() >= self.num_classes:
            raise InvalidInputError(
                f"Class-index `targets` must be < num_classes={self.num_classes}; "
                f"received {int(labels.max())}."
            )

        counts = np.bincount(labels, minlength=self.mass.shape[0]).astype(np.float64)
        width = max(counts.shape[0], self.mass.shape[0])
        self.mass = _pad(self.mass, width) + _pad(counts, width)
        self.diag_sq = self.mass.copy()
        self.samples += int(labels.size)

    def _add_probabilities(self, array: np.ndarray) -> None:
        self._set_kind(probabilities=True)
        rows = np.moveaxis(array, self.class_axis, -1).astype(np.float64)
        rows = rows.reshape(-1, rows.shape[-1])
        width = rows.shape[1]
        if self.num_classes is not None and width != self.num_classes:
            raise InvalidInputError(
                f"Probability `targets` must have num_classes={self.num_classes} entries along "
                f"axis {self.class_axis}; received shape {array.shape}."
            )
        if self.mass.shape[0] not in (0, width):
            raise InvalidInputError(
                f"Probability `targets` changed width from {self.mass.shape[0]} to {width}."
            )
        if rows.min() < 0 or rows.max() > 1:
            bad = rows[(rows < 0) | (rows > 1)][0]
            raise InvalidInputError(
                f"Probability `targets` must lie in [0, 1]; received {bad!r}."
            )

        is_one_hot = bool(np.all((rows == 0) | (rows == 1)) and np.all(rows.sum(axis=1) == 1))
        self.one_hot = self.one_hot and is_one_hot
        gram = _gram(rows)
        first = self.mass.shape[0] == 0
        self.mass = rows.sum(axis=0) + (0 if first else self.mass)
        self.diag_sq = (rows**2).sum(axis=0) + (0 if first else self.diag_sq)
        self.gram = gram if first else _add_optional(self.gram, gram)
        self.samples += rows.shape[0]

    def _set_kind(self, probabilities: bool) -> None:
        if self.probabilities is not None and self.probabilities != probabilities:
            raise InvalidInputError(
                "`targets` mix class indices and probability rows; give one kind throughout."
            )
        self.probabilities = probabilities

    def merge(self, other: ClassStats) -> ClassStats:
        """Returns the statistics of both inputs together (neither is changed)."""
        merged = ClassStats(self.num_classes, self.ignore_index, self.class_axis)
        kinds = {k for k in (self.probabilities, other.probabilities) if k is not None}
        if len(kinds) > 1:
            raise InvalidInputError("Cannot merge class-index and probability statistics.")
        width = max(self.mass.shape[0], other.mass.shape[0])
        merged.mass = _pad(self.mass, width) + _pad(other.mass, width)
        merged.diag_sq = _pad(self.diag_sq, width) + _pad(other.diag_sq, width)
        if self.samples == 0 or other.samples == 0:
            merged.gram = self.gram if other.samples == 0 else other.gram
        else:
            merged.gram = _add_optional(self.gram, other.gram)
        merged.samples = self.samples + other.samples
        merged.ignored = self.ignored + other.ignored
        merged.rows = self.rows + other.rows
        merged.probabilities = kinds.pop() if kinds else None
        merged.one_hot = self.one_hot and other.one_hot
        return merged


@dataclass
class BinaryStats:
    """Per-output positive rates for sigmoid losses.

    Targets are 0/1 labels or probabilities in [0, 1], shaped ``[N]`` (one
    output) or ``[N, K]``.
    """

    sums: np.ndarray = field(default_factory=lambda: np.zeros(0))
    squares: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gram: np.ndarray | None = None
    rows: int = 0

    def update(self, targets: object) -> BinaryStats:
        """Adds a batch of targets; returns self."""
        array = to_numpy(targets).astype(np.float64)
        require_finite(array)
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2:
            raise InvalidInputError(
                f"Binary `targets` must be shaped [N] or [N, outputs]; received {array.shape}."
            )
        if array.min() < 0 or array.max() > 1:
            bad = array[(array < 0) | (array > 1)][0]
            raise InvalidInputError(f"Binary `targets` must lie in [0, 1]; received {bad!r}.")
        if self.rows and array.shape[1] != self.sums.shape[0]:
            raise InvalidInputError(
                f"Binary `targets` changed width from {self.sums.shape[0]} to {array.shape[1]}."
            )

        gram = _gram(array)
        first = self.rows == 0
        self.sums = array.sum(axis=0) + (0 if first else self.sums)
        self.squares = (array**2).sum(axis=0) + (0 if first else self.squares)
        self.gram = gram if first else _add_optional(self.gram, gram)
        self.rows += array.shape[0]
        return self

    def merge(self, other: BinaryStats) -> BinaryStats:
        """Returns the statistics of both inputs together (neither is changed)."""
        if self.rows == 0 or other.rows == 0:
            source = other if self.rows == 0 else self
            return BinaryStats(source.sums, source.squares, source.gram, source.rows)
        if self.sums.shape != other.sums.shape:
            raise InvalidInputError(
                f"Cannot merge binary statistics of widths {self.sums.shape[0]} and "
                f"{other.sums.shape[0]}."
            )
        return BinaryStats(
            self.sums + other.sums,
            self.squares + other.squares,
            _add_optional(self.gram, other.gram),
            self.rows + other.rows,
        )


@dataclass
class ValueStats:
    """The regression targets themselves, as ``[N, K]`` float64.

    Medians, quantiles and Huber roots need the values, not moments; keeping
    them also makes every expected loss exact. Memory is 8 bytes a value.
    """

    values: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def update(self, targets: object) -> ValueStats:
        """Adds a batch of targets; returns self."""
        array = to_numpy(targets).astype(np.float64)
        require_finite(array)
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2:
            raise InvalidInputError(
                f"Regression `targets` must be shaped [N] or [N, outputs]; "
                f"received {array.shape}."
            )
        self.values = self.merge(ValueStats(array)).values
        return self

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])

    def merge(self, other: ValueStats) -> ValueStats:
        """Returns the statistics of both inputs together (neither is changed)."""
        if self.rows == 0 or other.rows == 0:
            return ValueStats(other.values if self.rows == 0 else self.values)
        if self.values.shape[1] != other.values.shape[1]:
            raise InvalidInputError(
                f"Regression `targets` changed width from {self.values.shape[1]} to "
                f"{other.values.shape[1]}."
            )
        return ValueStats(np.concatenate([self.values, other.values]))


Stats = ClassStats | BinaryStats | ValueStats
