"""Regression plans in the core: known answers, options, notes and errors.

The numbers of every loss are checked against the real torch and Keras
losses in tests/exactness; here are the answers worked out by hand, the
validation of options, and the corner cases of the minimisers.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import initguard
from initguard import InvalidInputError, make_loss

LARGE_MEAN = [100000.0, 150000.0, 200000.0, 250000.0, 300000.0]


def test_mse_with_a_large_mean() -> None:
    plan = initguard.plan(LARGE_MEAN, "mse")

    assert plan.bias.tolist() == [200000.0]
    assert plan.expected_loss == pytest.approx(5.0e9, rel=1e-12)
    assert plan.zero_bias_loss == pytest.approx(4.5e10, rel=1e-12)


def test_l1_with_a_large_mean() -> None:
    plan = initguard.plan(LARGE_MEAN, "l1")

    assert plan.bias.tolist() == [200000.0]
    assert plan.expected_loss == pytest.approx(60000.0, rel=1e-12)
    assert plan.zero_bias_loss == pytest.approx(200000.0, rel=1e-12)


def test_huber_optimum_is_neither_mean_nor_median() -> None:
    plan = initguard.plan([0.0, 0.0, 0.0, 0.0, 10.0], "huber", delta=1.0)

    assert plan.bias.tolist() == [0.25]
    assert plan.expected_loss == pytest.approx(1.875, rel=1e-12)
    assert plan.loss_at(np.array([2.0])) == pytest.approx(2.7, rel=1e-12)
    assert plan.loss_at(np.array([0.0])) == pytest.approx(1.9, rel=1e-12)


def test_summed_reduction_scales_with_the_elements_of_a_batch() -> None:
    plan = initguard.plan(LARGE_MEAN, "mse", reduction="sum")
    expected, zero, _ = plan.batch_expectation(5)

    assert expected == pytest.approx(2.5e10, rel=1e-12)
    assert zero == pytest.approx(2.25e11, rel=1e-12)

    two_outputs = initguard.plan(np.ones((4, 2)) * [[1.0, 3.0]], "l1", reduction="sum")
    assert two_outputs.batch_expectation(4)[0] == 0.0
    assert two_outputs.batch_expectation(4)[1] == pytest.approx(4 * (1.0 + 3.0), rel=1e-12)


def test_bias_fixed_by_hand_gives_its_own_loss() -> None:
    plan = initguard.plan([0.0, 0.0, 0.0, 0.0, 10.0], "huber", delta=1.0, bias=[0.0])

    assert plan.bias.tolist() == [0.0]
    assert plan.expected_loss == pytest.approx(1.9, rel=1e-12)
    assert "bias fixed by hand (not the optimum)" in plan.notes


@pytest.mark.parametrize(
    ("loss", "targets", "options", "bias"),
    [
        # Every constant in [1, 9] is a Huber root for [0, 10]: the middle.
        ("huber", [0.0, 10.0], {"delta": 1.0}, 5.0),
        ("smooth_l1", [0.0, 10.0], {"beta": 2.0}, 5.0),
        ("smooth_l1", [0.0, 1.0, 10.0, 11.0], {"beta": 0.0}, 5.5),
        ("l1", [1.0, 2.0, 3.0, 4.0], {}, 2.5),
        # q N whole: the middle of the (q N)-th and next smallest targets.
        ("quantile", [1.0, 2.0, 3.0, 4.0], {"quantile": 0.5}, 2.5),
        ("quantile", list(range(1, 9)), {"quantile": 0.25}, 2.5),
        ("quantile", list(range(1, 11)), {"quantile": 0.3}, 3.5),
        ("quantile", list(range(30)), {"quantile": 0.1}, 2.5),
        # q N fractional: the ceil(q N)-th smallest target alone.
        ("quantile", list(range(1, 11)), {"quantile": 0.35}, 4.0),
        ("quantile", [5.0], {"quantile": 0.9}, 5.0),
        ("quantile", [3.0, 1.0, 2.0], {"quantile": 0.99}, 3.0),
        # Symmetric targets: tanh terms cancel at 0.
        ("log_cosh", [-5.0, -1.0, 1.0, 5.0], {}, 0.0),
    ],
)
def test_minimiser_intervals_pick_their_middle(
    loss: str, targets: list[float], options: dict[str, float], bias: float
) -> None:
    plan = initguard.plan(np.array(targets, dtype=np.float64), loss, **options)

    assert plan.bias[0] == pytest.approx(bias, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("loss", ["l1", "quantile", "huber", "smooth_l1", "log_cosh"])
def test_no_target_value_beats_the_plan(loss: str, rng: np.random.Generator) -> None:
    # Piecewise-linear losses are minimised at a target value, and the
    # smooth ones are convex: no target does better than the plan.
    targets = np.round(rng.standard_cauchy(41) * 3.0, 1)
    plan = initguard.plan(targets, loss, **({"quantile": 0.2} if loss == "quantile" else {}))

    candidates = [plan.loss_at(np.array([value])) for value in targets]
    assert plan.expected_loss <= min(candidates) * (1 + 1e-12)


def test_roots_reach_machine_precision() -> None:
    # A delta wider than the spread makes Huber the squared error: the mean.
    plan = initguard.plan([0.0, 0.0, 1.0], "huber", delta=10.0)
    assert abs(plan.bias[0] - 1.0 / 3.0) <= 2 * math.ulp(1.0 / 3.0)

    far = initguard.plan([1.0e6, -1.0e6, 1.0e6 + 2.0], "log_cosh")
    assert np.isfinite(far.expected_loss)
    assert far.bias[0] == pytest.approx(1.0e6, abs=1.0)


def test_outputs_are_solved_column_by_column() -> None:
    targets = np.column_stack([[0.0, 0.0, 0.0, 0.0, 10.0], LARGE_MEAN])
    plan = initguard.plan(targets, "huber", delta=1.0)

    assert plan.bias[0] == 0.25
    assert plan.bias[1] == pytest.approx(200000.0, rel=1e-12)
    assert plan.sum_scale == 2.0


def test_merged_statistics_give_the_same_plan(rng: np.random.Generator) -> None:
    targets = rng.lognormal(0.0, 2.0, (50, 2))
    spec = make_loss("quantile", quantile=0.7)
    halves = spec.new_stats().update(targets[:20]).merge(spec.new_stats().update(targets[20:]))

    whole = spec.solve(spec.new_stats().update(targets))
    merged = spec.solve(halves)
    np.testing.assert_array_equal(whole.bias, merged.bias)
    assert whole.expected_loss == merged.expected_loss


def test_poisson_log_input_is_the_log_of_the_mean() -> None:
    plan = initguard.plan([1.0, 2.0, 3.0], "poisson_nll")

    assert plan.activation == "identity"
    assert plan.bias[0] == pytest.approx(math.log(2.0), rel=1e-12)
    assert plan.expected_loss == pytest.approx(2.0 - 2.0 * math.log(2.0), rel=1e-12)


@pytest.mark.parametrize("activation", ["exp", "softplus", "identity"])
def test_poisson_rate_is_the_mean_less_eps(activation: str) -> None:
    # d/dr (r - y log(r + eps)) vanishes at r = mean(y) - eps.
    plan = initguard.plan(
        [1.0, 2.0, 3.0], "poisson_nll", log_input=False, eps=0.5, activation=activation
    )
    rate = {"exp": np.exp, "softplus": lambda z: np.logaddexp(0.0, z), "identity": lambda z: z}

    assert plan.activation == activation
    assert rate[activation](plan.bias[0]) == pytest.approx(1.5, rel=1e-12)


@pytest.mark.parametrize(
    ("options", "bias"),
    [
        ({}, math.log(1e-8)),
        ({"log_input": False}, math.log(1e-8)),
        ({"log_input": False, "activation": "identity"}, 0.0),
    ],
)
def test_poisson_all_zero_output_is_floored_with_a_note(
    options: dict[str, object], bias: float
) -> None:
    targets = np.column_stack([[0.0, 2.0, 1.0, 3.0], np.zeros(4)])
    plan = initguard.plan(targets, "poisson_nll", **options)

    assert plan.bias[1] == pytest.approx(bias, abs=1e-9)
    assert np.isfinite(plan.bias).all()
    assert any("floored" in note for note in plan.notes)


def test_poisson_rejects_negative_targets() -> None:
    with pytest.raises(InvalidInputError, match=r"Poisson `targets` .* >= 0; received -1\.0"):
        initguard.plan([2.0, -1.0, 3.0], "poisson_nll")


def test_gaussian_bias_holds_means_then_variance_heads() -> None:
    # Column 0: mean 2, variance 1; column 1: mean 10, variance 4.
    targets = np.array([[1.0, 8.0], [3.0, 12.0]])
    plan = initguard.plan(targets, "gaussian_nll")
    full = initguard.plan(targets, "gaussian_nll", full=True)
    softplus = initguard.plan(targets, "gaussian_nll", variance_activation="softplus")

    np.testing.assert_allclose(plan.bias, [2.0, 10.0, 0.0, math.log(4.0)], rtol=1e-12)
    assert plan.activation == "identity+exp"
    assert plan.expected_loss == pytest.approx(0.5 + 0.25 * math.log(4.0), rel=1e-12)
    assert full.expected_loss - plan.expected_loss == pytest.approx(
        0.5 * math.log(2 * math.pi), rel=1e-12
    )
    assert np.logaddexp(0.0, softplus.bias[2:]) == pytest.approx([1.0, 4.0], rel=1e-12)
    assert plan.sum_scale == 2.0


def test_gaussian_variance_below_eps_is_clamped_with_a_note() -> None:
    plan = initguard.plan(np.full(5, 3.0), "gaussian_nll", variance_activation="identity")

    assert plan.bias.tolist() == [3.0, 1e-6]
    assert plan.notes and "clamps" in plan.notes[0]


def test_gaussian_fixed_bias_needs_two_entries_per_output() -> None:
    with pytest.raises(InvalidInputError, match=r"`bias` must have one entry per output \(4\)"):
        initguard.plan(np.ones((3, 2)), "gaussian_nll", bias=[0.0, 0.0])


def test_msle_counts_negative_targets_as_eps_with_a_note() -> None:
    plan = initguard.plan([-4.0, 0.0, math.e - 1.0], "msle")
    # log1p of the clipped targets: about [0, 0, 1]; the optimum is their mean.
    assert plan.bias[0] == pytest.approx(math.expm1(1.0 / 3.0), rel=1e-6)
    assert any("negative" in note for note in plan.notes)
    assert not initguard.plan([0.0, 1.0], "msle").notes


def test_log_cosh_is_finite_for_huge_residuals() -> None:
    plan = initguard.plan([-1.0e300, 1.0e300], "log_cosh")

    assert plan.bias.tolist() == [0.0]
    assert plan.expected_loss == pytest.approx(1.0e300, rel=1e-12)


@pytest.mark.parametrize(
    ("loss", "options", "message"),
    [
        ("huber", {"delta": 0.0}, r"`delta` must be a finite number > 0; received 0\.0"),
        ("huber", {"delta": -1}, r"`delta` must be a finite number > 0; received -1\."),
        ("huber", {"delta": math.inf}, r"`delta` must be a finite number > 0; received inf"),
        ("huber", {"delta": "1"}, r"`delta` must be a finite number > 0; received '1'"),
        ("huber", {"delta": True}, r"`delta` must be a finite number > 0; received True"),
        ("smooth_l1", {"beta": -0.5}, r"`beta` must be a finite number >= 0; received -0\.5"),
        ("smooth_l1", {"beta": math.nan}, r"`beta` must be a finite number >= 0; received nan"),
        ("quantile", {"quantile": 0.0}, r"`quantile` must be a number in \(0, 1\); received 0"),
        ("quantile", {"quantile": 1}, r"`quantile` must be a number in \(0, 1\); received 1\."),
        ("quantile", {"quantile": None}, r"`quantile` .* received None"),
        ("poisson_nll", {"log_input": "no"}, r"`log_input` must be True or False; received 'no'"),
        ("poisson_nll", {"full": 1}, r"`full` must be True or False; received 1\."),
        ("poisson_nll", {"eps": 0.0}, r"`eps` must be a finite number > 0; received 0\.0"),
        (
            "poisson_nll",
            {"activation": "relu"},
            r"`activation` must be one of \('exp', 'softplus', 'identity'\); received 'relu'",
        ),
        ("gaussian_nll", {"eps": -1e-6}, r"`eps` must be a finite number > 0; received -1e-06"),
        ("gaussian_nll", {"full": None}, r"`full` must be True or False; received None"),
        (
            "gaussian_nll",
            {"variance_activation": "log"},
            r"`variance_activation` must be one of .*; received 'log'",
        ),
        ("msle", {"eps": -1.0}, r"`eps` must be a finite number > 0; received -1\.0"),
        ("log_cosh", {"reduction": "none"}, r"`reduction` must be one of .*; received 'none'"),
        ("l1", {"delta": 1.0}, r"Unknown option\(s\) \['delta'\] for loss 'l1'"),
    ],
)
def test_invalid_options_name_the_option_rule_and_value(
    loss: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        make_loss(loss, **options)


@pytest.mark.parametrize(
    "loss", ["l1", "huber", "smooth_l1", "quantile", "poisson_nll", "gaussian_nll", "msle"]
)
def test_every_regression_loss_is_registered(loss: str) -> None:
    assert loss in initguard.LOSSES
    assert initguard.LOSSES[loss].name == loss


def test_core_imports_no_framework() -> None:
    code = (
        "import sys, initguard, initguard._regression\n"
        "heavy = {'torch', 'keras', 'tensorflow', 'scipy', 'lightning'}\n"
        "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


_LOSSES = ["mse", "l1", "huber", "smooth_l1", "quantile", "poisson_nll", "gaussian_nll"]


@settings(max_examples=80, deadline=None)
@given(
    loss=st.sampled_from([*_LOSSES, "msle", "log_cosh"]),
    values=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=12),
    fixed=st.one_of(st.none(), st.floats(-1e300, 1e300)),
)
def test_hostile_targets_give_a_finite_plan_or_a_clear_error(
    loss: str, values: list[float], fixed: float | None
) -> None:
    options = {} if fixed is None else {"bias": [fixed]}
    if loss == "gaussian_nll" and fixed is not None:
        options["bias"] = [fixed, fixed]
    try:
        plan = initguard.plan(np.array(values), loss, **options)
    except InvalidInputError as error:
        assert re.search(r"not finite|must be >= 0", str(error))
        return
    assert np.isfinite(plan.bias).all()
    assert math.isfinite(plan.expected_loss)
    assert math.isfinite(plan.loss_std) and plan.loss_std >= 0
