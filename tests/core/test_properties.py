"""Property-based tests of the classification core (hypothesis, derandomized).

Whatever arrives, ``initguard.plan`` returns a finite plan or raises
``InvalidInputError`` naming the argument; statistics merge exactly in any
split; and a planned bias is never beaten by a zero bias or a nudge.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from functools import reduce
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import initguard
from initguard import InvalidInputError
from initguard._stats import BinaryStats, ClassStats

CLASSIFICATION = (
    "cross_entropy",
    "binary_cross_entropy",
    "kl_div",
    "sigmoid_focal",
    "softmax_focal",
)

# Derandomized: the same examples on every run and every machine.
SETTINGS = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# ----------------------------------------------------------------------------
# Hostile inputs.

_shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)
_any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)

hostile_targets = st.one_of(
    hnp.arrays(st.sampled_from([np.int8, np.int64, np.uint8, np.uint64]), _shapes),
    hnp.arrays(st.sampled_from([np.float16, np.float32, np.float64]), _shapes),
    hnp.arrays(np.float64, _shapes, elements=st.floats(0, 1)),
    hnp.arrays(np.int64, _shapes, elements=st.integers(-101, 6)),
    hnp.arrays(np.bool_, _shapes),
    hnp.arrays(np.complex128, _shapes),
    st.lists(st.lists(st.integers(-5, 5), max_size=4), max_size=4),  # ragged
    st.lists(st.text(max_size=2), max_size=3),
    st.lists(_any_float, max_size=5),
    st.lists(st.integers(-(2**70), 2**70), max_size=4),
    st.none(),
    st.integers(-3, 3),
    st.just([object(), 1]),
    st.builds(dict),
)

_hostile_number = st.one_of(
    st.floats(-2, 2), _any_float, st.integers(-3, 60), st.text(max_size=2), st.none(), st.booleans()
)
_hostile_vector = st.one_of(
    _hostile_number,
    st.lists(st.one_of(st.floats(0, 5), _any_float, st.integers(-1, 3)), max_size=7),
    st.dictionaries(st.integers(-1, 4), st.floats(0, 3), max_size=5),
)

_small_vector = st.one_of(st.floats(0.01, 5), st.lists(st.floats(0, 5), min_size=1, max_size=8))
_valid_options: dict[str, st.SearchStrategy[Any]] = {
    "num_classes": st.integers(1, 8),
    "weight": _small_vector,
    "class_weight": _small_vector,
    "label_smoothing": st.floats(0, 1),
    "ignore_index": st.one_of(st.integers(-100, 5), st.none()),
    "class_axis": st.sampled_from([1, -1]),
    "reduction": st.sampled_from(["mean", "sum", "batchmean", "sum_over_batch_size"]),
    "bias": st.lists(st.floats(-30, 30), min_size=1, max_size=8),
    "pos_weight": _small_vector,
    "prior": st.one_of(st.floats(0.001, 0.999), st.lists(st.floats(0.01, 0.99), max_size=5)),
    "alpha": st.one_of(st.none(), st.floats(0, 1), st.lists(st.floats(0, 1), max_size=8)),
    "gamma": st.floats(0, 10),
    "log_target": st.booleans(),
    "epsilon": st.sampled_from([0.0, 1e-7]),
}
_hostile_options: dict[str, st.SearchStrategy[Any]] = {
    "num_classes": st.one_of(st.integers(-2, 0), st.just(2**40), st.floats(0, 5), st.text()),
    "weight": _hostile_vector,
    "class_weight": _hostile_vector,
    "label_smoothing": _hostile_number,
    "ignore_index": st.one_of(st.floats(-2, 2), st.text(max_size=1)),
    "class_axis": st.one_of(st.integers(-5, 5), st.text(max_size=1)),
    "reduction": st.sampled_from(["none", "", 3, None]),
    "bias": _hostile_vector,
    "pos_weight": _hostile_vector,
    "prior": _hostile_vector,
    "alpha": _hostile_vector,
    "gamma": _hostile_number,
    "log_target": st.one_of(st.integers(0, 1), st.none()),
    "epsilon": _hostile_number,
}
_valid_targets = st.one_of(
    hnp.arrays(np.int64, _shapes, elements=st.integers(-100, 7)),
    hnp.arrays(np.float64, _shapes, elements=st.sampled_from([0.0, 1.0])),
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=6),
        elements=st.floats(0, 1),
    ),
)


@st.composite
def hostile_cases(draw: st.DrawFn) -> tuple[Any, str, dict[str, Any]]:
    """A loss, options named as that loss names them, and targets.

    Mostly valid values, so that every loss's arithmetic is reached, with a
    hostile value (or an unknown option, or hostile targets) mixed in often.
    """
    loss = draw(st.sampled_from(CLASSIFICATION))
    cls = initguard.LOSSES[loss]
    names = draw(st.sets(st.sampled_from([f.name for f in dataclasses.fields(cls)])))
    options: dict[str, Any] = {}
    for name in sorted(names):
        if draw(st.integers(0, 7)) == 0:
            options[name] = draw(_hostile_options[name])
        elif name == "reduction":
            options[name] = draw(st.sampled_from(cls.reductions))
        else:
            options[name] = draw(_valid_options[name])
    if draw(st.integers(0, 19)) == 0:
        options["not_an_option"] = 1
    hostile = draw(st.integers(0, 3)) == 0
    targets = draw(hostile_targets if hostile else _valid_targets)
    return targets, loss, options


@pytest.mark.parametrize(
    ("targets", "loss", "options"),
    [
        # Examples hypothesis once found; kept so they stay fixed.
        (np.int8(0), "cross_entropy", {"weight": 1.5331395145196595e-258}),
        (np.int8(0), "softmax_focal", {"alpha": None, "bias": 0.0, "gamma": 0.0}),
        (np.float16(0), "cross_entropy", {}),
        (np.array([1.0]), "cross_entropy", {"weight": [1.9343378009719903e154]}),
        (None, "softmax_focal", {"num_classes": 2**40}),
    ],
)
def test_found_examples(targets: Any, loss: str, options: dict[str, Any]) -> None:
    try:
        plan = initguard.plan(targets, loss, **options)
    except InvalidInputError as error:
        _assert_named(error)
    else:
        _assert_finite_plan(plan)


def _assert_finite_plan(plan: initguard.Plan) -> None:
    assert plan.bias.dtype == np.float64 and plan.bias.ndim == 1 and plan.bias.size >= 1
    values = (plan.expected_loss, plan.zero_bias_loss, plan.loss_std, plan.sum_std)
    assert np.all(np.isfinite(plan.bias)) and np.all(np.isfinite(values))
    assert plan.loss_std >= 0 and plan.samples >= 1 and plan.units_per_row > 0
    expected, zero, error = plan.batch_expectation(4)
    assert np.isfinite([expected, zero, error]).all()


def _assert_named(error: InvalidInputError) -> None:
    message = str(error)
    assert re.search(r"`\w+`|Unknown option", message), message


@settings(SETTINGS, max_examples=1500)
@given(case=hostile_cases())
def test_hostile_input_gives_a_finite_plan_or_a_named_error(
    case: tuple[Any, str, dict[str, Any]],
) -> None:
    targets, loss, options = case
    try:
        plan = initguard.plan(targets, loss, **options)
    except InvalidInputError as error:
        _assert_named(error)
    else:
        _assert_finite_plan(plan)


# ----------------------------------------------------------------------------
# Valid inputs: finite, and never beaten.


@st.composite
def labelled_problems(draw: st.DrawFn) -> tuple[np.ndarray, dict[str, Any]]:
    classes = draw(st.integers(2, 7))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=8))
    labels = draw(hnp.arrays(np.int64, shape, elements=st.integers(-1, classes - 1)))
    options: dict[str, Any] = {"num_classes": classes, "ignore_index": -1}
    if draw(st.booleans()):
        options["label_smoothing"] = draw(st.floats(0, 1))
    weighting = draw(st.sampled_from([None, "weight", "class_weight"]))
    if weighting:
        options[weighting] = draw(
            st.lists(st.floats(0.01, 100), min_size=classes, max_size=classes)
        )
    return labels, options


@settings(SETTINGS, max_examples=150)
@given(problem=labelled_problems(), seed=st.integers(0, 2**32 - 1))
def test_cross_entropy_plans_are_optimal(
    problem: tuple[np.ndarray, dict[str, Any]], seed: int
) -> None:
    labels, options = problem
    try:
        plan = initguard.plan(labels, "cross_entropy", **options)
    except InvalidInputError as error:
        assert (labels == -1).all()
        assert "every target ignored" in str(error)
        return
    _assert_finite_plan(plan)
    assert plan.expected_loss <= plan.zero_bias_loss + 1e-9
    nudged = plan.bias + np.random.default_rng(seed).normal(0, 0.1, plan.bias.shape)
    # A never-seen class is floored at probability ~1e-8 instead of 0, which
    # costs about that much loss per class, times the largest weight ratio.
    weights = options.get("weight") or options.get("class_weight") or [1.0]
    ratio = max(weights) / min(weights)
    slack = 1e-9 + (2e-8 * plan.bias.size * ratio if plan.notes else 0.0)
    assert plan.expected_loss <= plan.loss_at(nudged) + slack


@settings(SETTINGS, max_examples=100)
@given(
    targets=hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 30), st.integers(1, 4)),
        elements=st.sampled_from([0.0, 1.0]),
    ),
    loss=st.sampled_from(["binary_cross_entropy", "sigmoid_focal"]),
    gamma=st.floats(0, 5),
    smoothing=st.floats(0, 1),
)
def test_sigmoid_plans_are_optimal(
    targets: np.ndarray, loss: str, gamma: float, smoothing: float
) -> None:
    options: dict[str, Any] = {"label_smoothing": smoothing}
    if loss == "sigmoid_focal":
        options["gamma"] = gamma
    plan = initguard.plan(targets, loss, **options)
    _assert_finite_plan(plan)
    assert plan.expected_loss <= plan.zero_bias_loss + 1e-9
    for step in (-0.05, 0.05):
        assert plan.expected_loss <= plan.loss_at(plan.bias + step) + 1e-9


@settings(SETTINGS, max_examples=60)
@given(
    counts=st.lists(st.integers(0, 50), min_size=2, max_size=6).filter(lambda c: sum(c) > 0),
    gamma=st.floats(0, 6),
    smoothing=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_softmax_focal_plans_are_optimal(
    counts: list[int], gamma: float, smoothing: float, seed: int
) -> None:
    labels = np.repeat(np.arange(len(counts)), counts)
    plan = initguard.plan(
        labels, "softmax_focal", num_classes=len(counts), gamma=gamma, label_smoothing=smoothing
    )
    _assert_finite_plan(plan)
    assert plan.expected_loss <= plan.zero_bias_loss + 1e-9
    nudged = plan.bias + np.random.default_rng(seed).normal(0, 0.05, plan.bias.shape)
    assert plan.expected_loss <= plan.loss_at(nudged) + 1e-9


# ----------------------------------------------------------------------------
# Merging: any split, any order, the statistics of the whole.


def _pieces(draw: st.DrawFn, length: int) -> list[slice]:
    cuts = sorted(draw(st.lists(st.integers(0, length), max_size=6)))
    bounds = [0, *cuts, length]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


@settings(SETTINGS, max_examples=150)
@given(data=st.data())
def test_class_counts_merge_exactly_in_any_split(data: st.DataObject) -> None:
    labels = data.draw(
        hnp.arrays(np.int64, st.integers(1, 60), elements=st.sampled_from([-100, *range(10)])),
        label="labels",
    )
    pieces = _pieces(data.draw, len(labels))
    order = data.draw(st.permutations(range(len(pieces))), label="order")
    parts = [
        ClassStats(ignore_index=-100).update(labels[pieces[i]])
        for i in order
        if pieces[i].stop > pieces[i].start
    ]
    merged = reduce(lambda a, b: a.merge(b), parts, ClassStats(ignore_index=-100))
    whole = ClassStats(ignore_index=-100).update(labels)
    width = max(merged.mass.size, whole.mass.size)
    np.testing.assert_array_equal(
        np.pad(merged.mass, (0, width - merged.mass.size)),
        np.pad(whole.mass, (0, width - whole.mass.size)),
    )
    assert (merged.samples, merged.ignored, merged.rows) == (
        whole.samples,
        whole.ignored,
        whole.rows,
    )


@settings(SETTINGS, max_examples=150)
@given(data=st.data())
def test_binary_counts_merge_exactly_in_any_split(data: st.DataObject) -> None:
    targets = data.draw(
        hnp.arrays(
            np.float64,
            st.tuples(st.integers(1, 40), st.integers(1, 5)),
            elements=st.sampled_from([0.0, 1.0]),
        )
    )
    pieces = [p for p in _pieces(data.draw, len(targets)) if p.stop > p.start]
    order = data.draw(st.permutations(range(len(pieces))))
    merged = reduce(
        lambda a, b: a.merge(b), [BinaryStats().update(targets[pieces[i]]) for i in order]
    )
    whole = BinaryStats().update(targets)
    np.testing.assert_array_equal(merged.sums, whole.sums)
    np.testing.assert_array_equal(merged.squares, whole.squares)
    assert merged.gram is not None and whole.gram is not None
    np.testing.assert_array_equal(merged.gram, whole.gram)
    assert (merged.rows, merged.samples, merged.binary) == (whole.rows, whole.samples, True)
    first = initguard.make_loss("sigmoid_focal")
    assert first.solve(merged).expected_loss == first.solve(whole).expected_loss


@pytest.mark.parametrize("loss", CLASSIFICATION)
def test_every_classification_loss_is_registered(loss: str) -> None:
    assert initguard.LOSSES[loss].name == loss
