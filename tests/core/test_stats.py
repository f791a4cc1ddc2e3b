"""Target statistics: streaming updates and exact merges."""

from __future__ import annotations

from functools import reduce

import numpy as np
import pytest

import initguard
from initguard import InvalidInputError
from initguard._stats import BinaryStats, ClassStats


def _split(array: np.ndarray, pieces: int, rng: np.random.Generator) -> list[np.ndarray]:
    cuts = np.sort(rng.choice(np.arange(1, len(array)), size=pieces - 1, replace=False))
    return np.split(array, cuts)


def _merge_all(parts: list[ClassStats] | list[BinaryStats]) -> ClassStats | BinaryStats:
    return reduce(lambda a, b: a.merge(b), parts)  # type: ignore[arg-type, return-value]


def test_class_counts_merge_bit_for_bit_in_any_order() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 9, size=(200, 7))  # -1 is ignored
    spec = initguard.make_loss("cross_entropy", ignore_index=-1)
    whole = spec.new_stats().update(labels)

    parts = [spec.new_stats().update(p) for p in _split(labels, 6, rng)]
    rng.shuffle(parts)  # type: ignore[arg-type]
    merged = _merge_all(parts)
    assert isinstance(merged, ClassStats)
    np.testing.assert_array_equal(merged.mass, whole.mass)
    assert (merged.samples, merged.ignored, merged.rows) == (whole.samples, whole.ignored, 200)
    assert merged.samples + merged.ignored == labels.size
    np.testing.assert_array_equal(spec.solve(merged).bias, spec.solve(whole).bias)


def test_streaming_updates_equal_one_update() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, size=300)
    spec = initguard.make_loss("cross_entropy", label_smoothing=0.1)
    streamed = spec.new_stats()
    for part in _split(labels, 5, rng):
        streamed.update(part)
    whole = spec.new_stats().update(labels)
    np.testing.assert_array_equal(streamed.mass, whole.mass)
    assert spec.solve(streamed).expected_loss == spec.solve(whole).expected_loss


def test_widths_grow_with_later_labels() -> None:
    stats = ClassStats().update([0, 1]).update([4])
    np.testing.assert_array_equal(stats.mass, [1, 1, 0, 0, 1])
    merged = ClassStats().update([2]).merge(ClassStats().update([0, 0]))
    np.testing.assert_array_equal(merged.mass, [2, 0, 1])


def test_probability_rows_merge_to_the_same_moments() -> None:
    rng = np.random.default_rng(2)
    rows = rng.dirichlet(np.ones(4), size=120)
    spec = initguard.make_loss("kl_div", reduction="batchmean")
    whole = spec.new_stats().update(rows)
    merged = _merge_all([spec.new_stats().update(p) for p in _split(rows, 4, rng)])
    assert isinstance(merged, ClassStats) and merged.gram is not None
    assert whole.gram is not None
    np.testing.assert_allclose(merged.mass, whole.mass, rtol=1e-13)
    np.testing.assert_allclose(merged.gram, whole.gram, rtol=1e-13)
    np.testing.assert_allclose(merged.neg_entropy_cross, whole.neg_entropy_cross, rtol=1e-13)
    assert merged.neg_entropy == pytest.approx(whole.neg_entropy, rel=1e-13)
    assert merged.samples == whole.samples == 120
    a, b = spec.solve(merged), spec.solve(whole)
    assert a.expected_loss == pytest.approx(b.expected_loss, rel=1e-12)
    assert a.loss_std == pytest.approx(b.loss_std, rel=1e-9)


def test_binary_counts_merge_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    targets = (rng.random((500, 6)) < 0.2).astype(np.float32)
    whole = BinaryStats().update(targets)
    parts = [BinaryStats().update(p) for p in _split(targets, 7, rng)]
    merged = _merge_all(parts[::-1])
    assert isinstance(merged, BinaryStats)
    np.testing.assert_array_equal(merged.sums, whole.sums)
    np.testing.assert_array_equal(merged.squares, whole.squares)
    assert merged.gram is not None and whole.gram is not None
    np.testing.assert_array_equal(merged.gram, whole.gram)
    assert (merged.rows, merged.samples, merged.binary) == (500, 500, True)


def test_binary_soft_targets_are_remembered_through_merges() -> None:
    soft = BinaryStats().update([0.0, 0.5]).merge(BinaryStats().update([1.0, 0.0]))
    assert not soft.binary
    assert BinaryStats().update([1, 0]).merge(BinaryStats().update([True])).binary


def test_dense_binary_rows_and_samples() -> None:
    stats = BinaryStats(class_axis=-1).update(np.zeros((2, 3, 4, 5)))
    assert (stats.rows, stats.samples, stats.sums.shape) == (2, 24, (5,))


def test_merging_with_empty_statistics_is_identity() -> None:
    stats = ClassStats().update([[0.2, 0.8], [0.5, 0.5]])
    for merged in (stats.merge(ClassStats()), ClassStats().merge(stats)):
        np.testing.assert_array_equal(merged.mass, stats.mass)
        assert merged.gram is not None and stats.gram is not None
        np.testing.assert_array_equal(merged.gram, stats.gram)
        assert merged.probabilities
    binary = BinaryStats().update([[1, 0]])
    assert BinaryStats().merge(binary).samples == binary.merge(BinaryStats()).samples == 1


def test_wide_soft_targets_skip_the_class_by_class_moments() -> None:
    rng = np.random.default_rng(4)
    rows = rng.dirichlet(np.ones(1500), size=10)
    plan = initguard.plan(rows, "cross_entropy")
    assert any("upper bound" in note for note in plan.notes)
    assert np.isfinite(plan.loss_std) and plan.loss_std >= 0


@pytest.mark.parametrize(
    ("left", "right", "match"),
    [
        (ClassStats().update([0, 1]), ClassStats().update([[0.5, 0.5]]), "class-index and prob"),
        (
            ClassStats().update([[0.5, 0.5]]),
            ClassStats().update([[0.2, 0.3, 0.5]]),
            "widths 2 and 3",
        ),
        (BinaryStats().update(np.zeros((2, 2))), BinaryStats().update(np.zeros((2, 3))), "widths"),
    ],
)
def test_merge_mismatches_are_errors(left: object, right: object, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        left.merge(right)  # type: ignore[attr-defined]


def test_update_mismatches_are_errors() -> None:
    with pytest.raises(InvalidInputError, match="mix class indices and probability rows"):
        ClassStats().update([0, 1]).update([[0.5, 0.5]])
    with pytest.raises(InvalidInputError, match="changed width from 2 to 3"):
        ClassStats().update([[0.5, 0.5]]).update([[0.2, 0.3, 0.5]])
    with pytest.raises(InvalidInputError, match="changed width from 2 to 3"):
        BinaryStats().update(np.zeros((2, 2))).update(np.zeros((2, 3)))


def test_solve_rejects_statistics_of_another_kind() -> None:
    spec = initguard.make_loss("cross_entropy")
    with pytest.raises(InvalidInputError, match="needs ClassStats; received BinaryStats"):
        spec.solve(BinaryStats().update([0, 1]))
