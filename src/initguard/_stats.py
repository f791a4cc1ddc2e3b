"""Streaming, mergeable statistics of training targets.

Each accumulator takes target batches through ``update`` and combines with
another of its kind through ``merge``. Merging is exact (sums of counts and
moments, or concatenation of values), so statistics gathered batch by batch,
or rank by rank and merged in rank order, give the same plan everywhere.
"""

from __future__ import annotations

import dataclasses
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


# Class indices imply the output width when ``num_classes`` is not given; a
# label above this is far more likely garbage than a real class, and counting
# up to it would allocate memory for every class below it.
MAX_INFERRED_CLASSES = 1 << 20

# The widest softmax initguard accepts (the largest vocabularies in use are
# about 2**18); larger is almost certainly a wrong argument.
MAX_CLASSES = 1 << 24


def _check_axis(axis: int, array: np.ndarray, name: str) -> int:
    if not -array.ndim <= axis < array.ndim:
        raise InvalidInputError(
            f"`{name}`={axis} is outside `targets` of shape {array.shape} "
            f"(valid: {-array.ndim}..{array.ndim - 1})."
        )
    return axis % array.ndim


def _xlogx(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values > 0, values * np.log(values), 0.0)


@dataclass
class ClassStats:
    """Per-class target mass for softmax losses.

    Targets are either class indices (any shape: every element is a sample,
    ``ignore_index`` elements are left out) or probability rows with the
    classes along ``class_axis`` (every other position is a sample). A float
    array counts as probability rows when it has at least two dimensions, a
    non-singleton class axis, and (given ``num_classes``) that many classes.

    Merging adds every field, so counts merge bit for bit in any order.

    Args:
        num_classes: number of classes when known; None grows with the labels.
        ignore_index: class index to leave out, or None.
        class_axis: axis of probability targets that holds the classes.
        kind: "auto" (class indices or probability rows, as above) or
            "probabilities" (every target is read as probability rows).
        log_targets: probability targets arrive as their logarithms.
        target_floor: probability targets are clipped to [target_floor, 1]
            before they are counted (Keras clips KL-divergence targets).
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
    kind: str = "auto"
    log_targets: bool = False
    target_floor: float = 0.0
    # Sums of each probability row's sum_c q log q (its negative entropy), of
    # its square, and of it times the row: what a KL divergence's spread needs.
    neg_entropy: float = 0.0
    neg_entropy_sq: float = 0.0
    neg_entropy_cross: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        if self.num_classes is not None and self.mass.shape[0] == 0:
            self.mass = np.zeros(self.num_classes)
            self.diag_sq = np.zeros(self.num_classes)

    def update(self, targets: object) -> ClassStats:
        """Adds a batch of targets; returns self.

        Raises:
            InvalidInputError: the targets are not numbers, not finite, out of
                range, or of a different kind or width than earlier batches.
        """
        array = to_numpy(targets)
        require_finite(array)
        if self._is_probabilities(array):
            self._add_probabilities(array)
        else:
            self._add_labels(array)
        self.rows += int(array.shape[0]) if array.ndim else 1
        return self

    def _is_probabilities(self, array: np.ndarray) -> bool:
        if self.kind == "probabilities":
            if array.ndim < 2:
                raise InvalidInputError(
                    "`targets` must be probability rows with the classes along "
                    f"axis {self.class_axis} (at least two dimensions); received shape "
                    f"{array.shape}."
                )
            return True
        if array.ndim < 2 or array.dtype.kind != "f":
            return False
        width = array.shape[_check_axis(self.class_axis, array, "class_axis")]
        return width != 1 and (self.num_classes is None or width == self.num_classes)

    def _add_labels(self, array: np.ndarray) -> None:
        self._set_kind(probabilities=False)
        labels = array.reshape(-1)
        if labels.dtype.kind in "bf":
            # Half-precision floats cannot even hold the class limit below.
            labels = labels.astype(np.float64 if labels.dtype.kind == "f" else np.int64)
        if labels.dtype.kind == "f":
            fractional = labels != np.round(labels)
            if fractional.any():
                raise InvalidInputError(
                    "Class-index `targets` must be whole numbers (probability rows need at "
                    "least two dimensions and num_classes entries along `class_axis`="
                    f"{self.class_axis}); received {labels[fractional][0].item()!r} in shape "
                    f"{array.shape}."
                )
        if self.ignore_index is not None:
            keep = labels != self.ignore_index
            self.ignored += int(labels.size - np.count_nonzero(keep))
            labels = labels[keep]

        # Range checks run on the original dtype: a cast first would wrap
        # huge unsigned or float labels into plausible-looking ones.
        limit = self.num_classes if self.num_classes is not None else MAX_INFERRED_CLASSES
        if labels.size and labels.min() < 0:
            raise InvalidInputError(
                f"Class-index `targets` must be >= 0 (or equal ignore_index="
                f"{self.ignore_index}); received {labels.min().item()!r}."
            )
        if labels.size and labels.max() >= limit:
            rule = (
                f"< num_classes={self.num_classes}"
                if self.num_classes is not None
                else f"< {MAX_INFERRED_CLASSES} unless `num_classes` is given"
            )
            raise InvalidInputError(
                f"Class-index `targets` must be {rule}; received {labels.max().item()!r}."
            )

        counts = np.bincount(labels.astype(np.int64), minlength=self.mass.shape[0])
        width = max(counts.shape[0], self.mass.shape[0])
        self.mass = _pad(self.mass, width) + _pad(counts.astype(np.float64), width)
        # For one-hot rows every squared entry equals the entry itself.
        self.diag_sq = self.mass.copy()
        self.samples += int(labels.size)

    def _add_probabilities(self, array: np.ndarray) -> None:
        self._set_kind(probabilities=True)
        axis = _check_axis(self.class_axis, array, "class_axis")
        if array.shape[axis] > MAX_CLASSES:
            raise InvalidInputError(
                f"Probability `targets` may have at most {MAX_CLASSES} classes along "
                f"`class_axis`={self.class_axis}; received shape {array.shape}."
            )
        rows = np.moveaxis(array, axis, -1).astype(np.float64)
        rows = rows.reshape(-1, rows.shape[-1])
        width = rows.shape[1]
        if self.num_classes is not None and width != self.num_classes:
            raise InvalidInputError(
                f"Probability `targets` must have num_classes={self.num_classes} entries "
                f"along `class_axis`={self.class_axis}; received shape {array.shape}."
            )
        if self.mass.shape[0] not in (0, width):
            raise InvalidInputError(
                f"Probability `targets` changed width from {self.mass.shape[0]} to {width} "
                f"along `class_axis`={self.class_axis}."
            )
        if self.log_targets:
            if rows.max() > 0:
                raise InvalidInputError(
                    f"Log-probability `targets` must be <= 0; received {rows.max().item()!r}."
                )
            rows = np.exp(rows)
        elif rows.min() < 0 or rows.max() > 1:
            bad = rows[(rows < 0) | (rows > 1)][0]
            hint = (
                " (class indices stored as floats need `num_classes` or an integer dtype)"
                if self.kind == "auto"
                else ""
            )
            raise InvalidInputError(
                f"Probability `targets` must lie in [0, 1]; received {bad.item()!r}{hint}."
            )
        if self.target_floor > 0:
            rows = np.clip(rows, self.target_floor, 1.0)

        is_one_hot = bool(np.all((rows == 0) | (rows == 1)) and np.all(rows.sum(axis=1) == 1))
        self.one_hot = self.one_hot and is_one_hot
        neg_entropy = _xlogx(rows).sum(axis=1)
        gram = _gram(rows)
        first = self.mass.shape[0] == 0 or self.samples == 0
        self.mass = rows.sum(axis=0) + (0 if first else self.mass)
        self.diag_sq = (rows**2).sum(axis=0) + (0 if first else self.diag_sq)
        self.gram = gram if first else _add_optional(self.gram, gram)
        self.neg_entropy += float(neg_entropy.sum())
        self.neg_entropy_sq += float(neg_entropy @ neg_entropy)
        cross = neg_entropy @ rows
        self.neg_entropy_cross = cross if first else self.neg_entropy_cross + cross
        self.samples += rows.shape[0]

    def _set_kind(self, probabilities: bool) -> None:
        if self.probabilities is not None and self.probabilities != probabilities:
            raise InvalidInputError(
                "`targets` mix class indices and probability rows; give one kind throughout."
            )
        self.probabilities = probabilities

    def merge(self, other: ClassStats) -> ClassStats:
        """Returns the statistics of both inputs together (neither is changed).

        Raises:
            InvalidInputError: one holds class indices and the other
                probability rows, or their widths differ.
        """
        kinds = {k for k in (self.probabilities, other.probabilities) if k is not None}
        if len(kinds) > 1:
            raise InvalidInputError("Cannot merge class-index and probability statistics.")
        both = kinds == {True} and self.samples and other.samples
        if both and self.mass.shape != other.mass.shape:
            raise InvalidInputError(
                f"Cannot merge probability statistics of widths {self.mass.shape[0]} "
                f"and {other.mass.shape[0]}."
            )
        width = max(self.mass.shape[0], other.mass.shape[0])
        merged = ClassStats(
            self.num_classes,
            self.ignore_index,
            self.class_axis,
            mass=_pad(self.mass, width) + _pad(other.mass, width),
            diag_sq=_pad(self.diag_sq, width) + _pad(other.diag_sq, width),
            samples=self.samples + other.samples,
            ignored=self.ignored + other.ignored,
            rows=self.rows + other.rows,
            probabilities=kinds.pop() if kinds else None,
            one_hot=self.one_hot and other.one_hot,
            kind=self.kind,
            log_targets=self.log_targets,
            target_floor=self.target_floor,
            neg_entropy=self.neg_entropy + other.neg_entropy,
            neg_entropy_sq=self.neg_entropy_sq + other.neg_entropy_sq,
        )
        if self.samples == 0 or other.samples == 0:
            source = other if self.samples == 0 else self
            merged.gram = source.gram
            merged.neg_entropy_cross = source.neg_entropy_cross
        else:
            merged.gram = _add_optional(self.gram, other.gram)
            merged.neg_entropy_cross = _add_cross(self.neg_entropy_cross, other.neg_entropy_cross)
        return merged


def _add_cross(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    width = max(left.shape[0], right.shape[0])
    return _pad(left, width) + _pad(right, width)


@dataclass
class BinaryStats:
    """Per-output positive rates for sigmoid losses.

    Targets are 0/1 labels or probabilities in [0, 1], shaped ``[N]`` (one
    output), ``[N, K]`` (K outputs), or dense ``[N, K, d1, ...]`` with the
    outputs along ``class_axis`` (every position a sample).

    Args:
        class_axis: axis of dense (three or more dimensions) targets that
            holds the outputs: 1 for torch, -1 for Keras.
    """

    sums: np.ndarray = field(default_factory=lambda: np.zeros(0))
    squares: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gram: np.ndarray | None = None
    rows: int = 0
    samples: int = 0
    binary: bool = True
    class_axis: int = 1

    def update(self, targets: object) -> BinaryStats:
        """Adds a batch of targets; returns self.

        Raises:
            InvalidInputError: the targets are not numbers, not finite, not in
                [0, 1], or of a different width than earlier batches.
        """
        array = to_numpy(targets)
        require_finite(array)
        rows = int(array.shape[0]) if array.ndim else 1
        if array.ndim <= 1:
            array = array.reshape(-1, 1)
        elif array.ndim > 2:
            axis = _check_axis(self.class_axis, array, "class_axis")
            array = np.moveaxis(array, axis, -1).reshape(-1, array.shape[axis])
        array = array.astype(np.float64)
        if array.min() < 0 or array.max() > 1:
            bad = array[(array < 0) | (array > 1)][0]
            raise InvalidInputError(
                f"Binary `targets` must lie in [0, 1]; received {bad.item()!r}."
            )
        if self.samples and array.shape[1] != self.sums.shape[0]:
            raise InvalidInputError(
                f"Binary `targets` changed width from {self.sums.shape[0]} to {array.shape[1]}."
            )

        gram = _gram(array)
        first = self.samples == 0
        self.sums = array.sum(axis=0) + (0 if first else self.sums)
        self.squares = (array**2).sum(axis=0) + (0 if first else self.squares)
        self.gram = gram if first else _add_optional(self.gram, gram)
        self.binary = self.binary and bool(np.all((array == 0) | (array == 1)))
        self.rows += rows
        self.samples += array.shape[0]
        return self

    def merge(self, other: BinaryStats) -> BinaryStats:
        """Returns the statistics of both inputs together (neither is changed).

        Raises:
            InvalidInputError: the two have different widths.
        """
        if self.samples == 0 or other.samples == 0:
            source = other if self.samples == 0 else self
            return dataclasses.replace(source, rows=self.rows + other.rows)
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
            self.samples + other.samples,
            self.binary and other.binary,
            self.class_axis,
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
                f"Regression `targets` must be shaped [N] or [N, outputs]; received {array.shape}."
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
