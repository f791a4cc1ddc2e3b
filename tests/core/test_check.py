"""The step-0 check: tolerance, verdict, likely cause, and the guard's warn/raise."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pytest

import initguard
from initguard import InitLossError, InitLossWarning, InvalidInputError, Tolerance, Verdict
from initguard._check import skipped
from initguard._guard import Guard


@pytest.fixture
def imbalanced_plan(rng: np.random.Generator) -> initguard.Plan:
    labels = rng.choice(4, size=2000, p=[0.7, 0.2, 0.07, 0.03])
    return initguard.plan(labels, "cross_entropy", num_classes=4)


def test_expected_loss_passes_and_reports_every_number(imbalanced_plan):
    report = initguard.check(imbalanced_plan, imbalanced_plan.expected_loss, batch_size=64)

    assert report.verdict is Verdict.PASS
    assert report.deviation == pytest.approx(0.0, abs=1e-12)
    assert report.standard_error == pytest.approx(imbalanced_plan.loss_std / 8)
    assert report.tolerance == pytest.approx(
        4 * report.standard_error + 0.25 * imbalanced_plan.expected_loss + 1e-4
    )
    assert report.zero_bias_loss == pytest.approx(math.log(4))
    assert report.cause == ""
    assert "PASS" in report.message


def test_tolerance_shrinks_with_the_batch(imbalanced_plan):
    small = initguard.check(imbalanced_plan, imbalanced_plan.expected_loss, batch_size=4)
    large = initguard.check(imbalanced_plan, imbalanced_plan.expected_loss, batch_size=4096)

    assert small.tolerance > large.tolerance
    assert small.standard_error == pytest.approx(32 * large.standard_error)


def test_batch_sampling_error_stays_inside_the_tolerance(rng):
    # The real spread of batch means of the per-sample loss, drawn over many
    # batches, must sit inside the tolerance for almost every batch.
    targets = rng.normal(150.0, 80.0, size=5000) ** 2 / 150.0
    plan = initguard.plan(targets, "mse")
    losses = []
    for _ in range(2000):
        batch = rng.choice(targets, size=32)
        losses.append(float(np.mean((batch - plan.bias[0]) ** 2)))
    reports = [initguard.check(plan, loss, batch_size=32) for loss in losses]
    failures = sum(r.verdict is Verdict.FAIL for r in reports)

    assert failures <= 2


def test_sigmas_alone_would_fail_heavy_tailed_regression_without_the_spread(rng):
    targets = rng.lognormal(3.0, 1.2, size=4000)
    plan = initguard.plan(targets, "mse")
    batch = np.sort(targets)[-32:]  # an unlucky batch: the 32 largest targets
    measured = float(np.mean((batch - plan.bias[0]) ** 2))

    report = initguard.check(
        plan, measured, batch_size=32, tolerance=Tolerance(relative=0.0, headroom=0.0)
    )

    assert report.verdict is Verdict.FAIL
    assert report.deviation > 0


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_step0_loss_never_passes(imbalanced_plan, value):
    report = initguard.check(imbalanced_plan, value, batch_size=32)

    assert report.verdict is Verdict.FAIL
    assert "not finite" in report.cause


def test_zero_bias_loss_points_at_an_unset_bias(rng):
    labels = (rng.random(4000) < 0.05).astype(float)
    plan = initguard.plan(labels, "binary_cross_entropy")

    report = initguard.check(plan, plan.zero_bias_loss, batch_size=256, bias_set=False)

    assert report.verdict is Verdict.FAIL
    assert "zero output bias" in report.cause
    assert "bias was not set" in report.cause


def test_doubled_sigmoid_points_at_probabilities_fed_to_logits():
    torch = pytest.importorskip("torch")
    labels = np.zeros(1000)
    labels[:50] = 1.0
    plan = initguard.plan(labels, "binary_cross_entropy")
    probabilities = torch.sigmoid(torch.tensor(plan.bias)).expand(1000)
    measured = torch.nn.BCEWithLogitsLoss()(probabilities, torch.tensor(labels)).item()

    report = initguard.check(plan, measured, batch_size=1000)

    assert report.verdict is Verdict.FAIL
    assert "expects logits" in report.cause


def test_doubled_softmax_points_at_probabilities_fed_to_logits(rng):
    torch = pytest.importorskip("torch")
    labels = rng.choice(3, size=3000, p=[0.96, 0.03, 0.01])
    plan = initguard.plan(labels, "cross_entropy")
    probabilities = torch.softmax(torch.tensor(plan.bias), 0).expand(3000, 3)
    measured = torch.nn.CrossEntropyLoss()(probabilities, torch.tensor(labels)).item()

    report = initguard.check(plan, measured, batch_size=3000)

    assert report.verdict is Verdict.FAIL
    assert "expects logits" in report.cause


def test_a_loss_below_any_constant_points_at_trained_weights(imbalanced_plan):
    report = initguard.check(imbalanced_plan, 0.05, batch_size=512)

    assert report.verdict is Verdict.FAIL
    assert "already be trained" in report.cause


def test_a_loss_far_above_points_at_large_weights(imbalanced_plan):
    report = initguard.check(imbalanced_plan, 9.0, batch_size=512)

    assert report.verdict is Verdict.FAIL
    assert "weights too large" in report.cause


def test_penalty_is_added_to_the_expectation(imbalanced_plan):
    measured = imbalanced_plan.expected_loss + 3.0

    assert initguard.check(imbalanced_plan, measured, 64).verdict is Verdict.FAIL
    report = initguard.check(imbalanced_plan, measured, 64, penalty=3.0)
    assert report.verdict is Verdict.PASS
    assert report.expected_loss == pytest.approx(imbalanced_plan.expected_loss + 3.0)


def test_sum_reduction_scales_with_the_batch():
    torch = pytest.importorskip("torch")
    targets = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    plan = initguard.plan(targets, "mse", reduction="sum")
    outputs = torch.full((6,), float(plan.bias[0]), dtype=torch.float64)
    measured = torch.nn.MSELoss(reduction="sum")(outputs, torch.tensor(targets)).item()

    report = initguard.check(plan, measured, batch_size=6)

    assert report.expected_loss == pytest.approx(measured, rel=1e-12)
    assert report.verdict is Verdict.PASS


def test_report_to_dict_holds_plain_python(imbalanced_plan):
    data = initguard.check(imbalanced_plan, 1.0, 32).to_dict()

    def plain(value):
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or type(value) in (bool, int, float, str)

    assert all(plain(v) for v in data.values())
    assert data["verdict"] in {"pass", "fail"}


def test_skipped_report_says_why():
    report = skipped("steps_per_execution is 4", layer="head")

    assert report.verdict is Verdict.SKIPPED
    assert report.message == "initguard: check skipped (layer 'head'): steps_per_execution is 4"


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("sigmas", -1.0, r"`sigmas` must be a finite number >= 0; received -1\.0"),
        ("relative", math.nan, "`relative` must be a finite number >= 0; received nan"),
        ("absolute", "1", "`absolute` must be a finite number >= 0; received '1'"),
    ],
)
def test_tolerance_rejects_bad_settings(field, value, match):
    with pytest.raises(InvalidInputError, match=match):
        Tolerance(**{field: value})


def test_guard_warns_on_failure_by_default(imbalanced_plan, caplog):
    guard = Guard()
    guard.plan = imbalanced_plan

    with pytest.warns(InitLossWarning, match=r"step-0 loss 9 vs expected .*: FAIL"):
        guard.conclude(9.0, 64, bias_set=True, layer="head")
    assert guard.report is not None and guard.report.verdict is Verdict.FAIL
    assert any(r.levelno == logging.WARNING for r in caplog.records)


def test_guard_raises_when_strict(imbalanced_plan):
    guard = Guard(strict=True)
    guard.plan = imbalanced_plan

    with pytest.raises(InitLossError, match="before the second optimizer step"):
        guard.conclude(9.0, 64, bias_set=True, layer="head")


def test_guard_passes_quietly_and_logs_the_summary(imbalanced_plan, caplog):
    guard = Guard(strict=True)
    guard.plan = imbalanced_plan

    with caplog.at_level(logging.INFO, logger="initguard"), warnings.catch_warnings():
        warnings.simplefilter("error")
        report = guard.conclude(imbalanced_plan.expected_loss, 64, bias_set=True, layer="head")

    assert report.verdict is Verdict.PASS
    assert any("PASS" in r.getMessage() for r in caplog.records)
    assert set(guard.metrics()) == {
        "initguard/expected_loss",
        "initguard/step0_loss",
        "initguard/deviation",
    }


def test_guard_warns_only_on_rank_zero(imbalanced_plan):
    guard = Guard()
    guard.plan = imbalanced_plan

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = guard.conclude(9.0, 64, bias_set=True, layer="", is_global_zero=False)
    assert report.verdict is Verdict.FAIL


def test_guard_strict_raises_on_every_rank(imbalanced_plan):
    guard = Guard(strict=True)
    guard.plan = imbalanced_plan

    with pytest.raises(InitLossError):
        guard.conclude(9.0, 64, bias_set=True, layer="", is_global_zero=False)


def test_guard_rejects_a_tolerance_of_the_wrong_type():
    with pytest.raises(InvalidInputError, match=r"`tolerance` must be an initguard\.Tolerance"):
        Guard(tolerance=0.1)  # type: ignore[arg-type]


def test_an_unwritten_bias_is_never_blamed_on_a_doubled_activation(rng):
    # With 5 % positives, sigmoid(bias) is near 0, so the doubled-sigmoid loss
    # sits next to the zero-bias loss; without a written bias only the latter
    # can explain the measurement.
    labels = (rng.random(4000) < 0.05).astype(float)
    plan = initguard.plan(labels, "binary_cross_entropy")
    doubled = plan.loss_at(1.0 / (1.0 + np.exp(-plan.bias)))
    measured = doubled + 0.001

    report = initguard.check(plan, measured, batch_size=128, bias_set=False)

    assert report.verdict is Verdict.FAIL
    assert "bias was not set" in report.cause


def test_headroom_allows_a_fresh_heads_excess_above_but_not_below(imbalanced_plan):
    expected = imbalanced_plan.expected_loss
    tolerance = Tolerance(sigmas=0.0, relative=0.1, absolute=0.0, headroom=0.5)

    above = initguard.check(imbalanced_plan, expected * 1.55, 64, tolerance)
    further = initguard.check(imbalanced_plan, expected * 1.65, 64, tolerance)
    below = initguard.check(imbalanced_plan, expected * 0.85, 64, tolerance)

    assert above.verdict is Verdict.PASS
    assert above.tolerance == pytest.approx(0.6 * expected)
    assert further.verdict is Verdict.FAIL
    assert below.verdict is Verdict.FAIL
    assert below.tolerance == pytest.approx(0.1 * expected)


def test_batch_loss_matches_torch_on_the_batchs_own_targets(rng):
    torch = pytest.importorskip("torch")
    labels = rng.choice(3, size=3000, p=[0.6, 0.3, 0.1])
    weight = [1.0, 2.0, 5.0]
    plan = initguard.plan(labels, "cross_entropy", weight=weight, label_smoothing=0.05)
    batch = np.array([2, 2, 2, 1, 0, 2, 2, 1])  # far from the data's frequencies
    loss = torch.nn.CrossEntropyLoss(
        weight=torch.tensor(weight, dtype=torch.float64), label_smoothing=0.05
    )
    logits = torch.tensor(plan.bias).expand(8, 3)
    measured = loss(logits, torch.tensor(batch)).item()

    exact = plan.batch_loss(batch)

    assert exact.at_bias == pytest.approx(measured, rel=1e-12)
    assert exact.at_zero == pytest.approx(loss(logits * 0, torch.tensor(batch)).item())
    doubled = torch.softmax(logits, dim=1)
    assert exact.doubled == pytest.approx(loss(doubled, torch.tensor(batch)).item())
    report = initguard.check(plan, measured, 8, batch=exact)
    assert report.verdict is Verdict.PASS
    assert report.standard_error == 0.0
    assert report.deviation == pytest.approx(0.0, abs=1e-12)
    assert initguard.check(plan, measured * 0.7, 8, batch=exact).verdict is Verdict.FAIL


def test_batch_loss_of_a_summed_loss_scales_with_the_batch():
    torch = pytest.importorskip("torch")
    plan = initguard.plan([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]], "binary_cross_entropy")
    plan = initguard.plan(
        [[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]], "binary_cross_entropy", reduction="sum"
    )
    batch = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    logits = torch.tensor(plan.bias).expand(2, 2)
    measured = torch.nn.BCEWithLogitsLoss(reduction="sum")(logits, batch).item()

    assert plan.batch_loss(batch).at_bias == pytest.approx(measured, rel=1e-12)


def test_an_all_ignored_batch_has_no_exact_loss():
    plan = initguard.plan([0, 1, 1, 2], "cross_entropy")

    with pytest.raises(InvalidInputError, match="every target ignored"):
        plan.batch_loss([-100, -100])


def test_spread_excess_is_exact_for_squared_error(rng):
    torch = pytest.importorskip("torch")
    targets = rng.normal(3.0, 2.0, size=500)
    plan = initguard.plan(targets, "mse")
    deviations = rng.normal(0.0, 0.7, size=(64, 1))
    # The real mean loss when every sample's output is the bias plus one of
    # the deviations, each deviation applied to every target.
    y = torch.tensor(targets)
    outputs = torch.tensor(plan.bias[0] + deviations)  # [64, 1] broadcast over the targets
    measured = torch.nn.MSELoss()(outputs.expand(64, 500), y.expand(64, 500)).item()

    assert plan.spread_excess(deviations) == pytest.approx(measured - plan.expected_loss)
    assert plan.spread_excess(deviations) == pytest.approx(float(np.mean(deviations**2)))


def test_spread_excess_predicts_the_real_cross_entropy_of_a_noisy_head(rng):
    torch = pytest.importorskip("torch")
    labels = rng.choice(5, size=4000, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    plan = initguard.plan(labels, "cross_entropy")
    noise = rng.normal(0.0, 0.8, size=(4000, 5))
    logits = torch.tensor(plan.bias + noise)
    measured = torch.nn.CrossEntropyLoss()(logits, torch.tensor(labels)).item()

    excess = plan.spread_excess(noise[:64])

    assert measured - plan.expected_loss == pytest.approx(excess, rel=0.25)
    report = initguard.check(plan, measured, 4000, spread_excess=excess)
    assert report.verdict is Verdict.PASS
    assert report.spread_excess == excess


def test_a_head_spread_beyond_the_headroom_is_blamed_on_its_weights(rng):
    torch = pytest.importorskip("torch")
    labels = rng.choice(4, size=2000, p=[0.4, 0.3, 0.2, 0.1])
    plan = initguard.plan(labels, "cross_entropy")
    noise = rng.normal(0.0, 8.0, size=(2000, 4))  # twenty times a sane head's spread
    logits = torch.tensor(plan.bias + noise)
    measured = torch.nn.CrossEntropyLoss()(logits, torch.tensor(labels)).item()

    report = initguard.check(plan, measured, 2000, spread_excess=plan.spread_excess(noise[:64]))

    assert report.verdict is Verdict.FAIL
    assert "initial weights are too large" in report.cause


def test_spread_excess_rejects_the_wrong_width():
    plan = initguard.plan([0, 1, 2], "cross_entropy")

    with pytest.raises(InvalidInputError, match=r"`deviations` must be shaped \[rows, 3\]"):
        plan.spread_excess(np.zeros((4, 2)))


def test_a_head_that_lines_up_with_the_targets_by_chance_is_not_blamed(rng):
    torch = pytest.importorskip("torch")
    targets = rng.normal(0.0, 1.0, size=442)
    plan = initguard.plan(targets, "mse")
    # Outputs correlated with the targets, as a random projection of
    # predictive features can be: the loss falls below the best constant.
    outputs = 0.45 * targets + rng.normal(0.0, 0.3, size=442)
    measured = torch.nn.MSELoss()(
        torch.tensor(plan.bias[0] + outputs), torch.tensor(targets)
    ).item()
    deviations = (outputs - outputs.mean())[:64, None]

    without_spread = initguard.check(plan, measured, 442, batch=plan.batch_loss(targets))
    report = initguard.check(
        plan,
        measured,
        442,
        batch=plan.batch_loss(targets),
        spread_excess=plan.spread_excess(deviations),
    )

    assert measured < 0.75 * plan.expected_loss
    assert without_spread.verdict is Verdict.FAIL
    assert report.verdict is Verdict.PASS


def test_many_never_seen_classes_fail_as_a_wrong_width(rng):
    labels = rng.choice(10, size=2000)
    twelve = initguard.plan(labels, "cross_entropy", num_classes=12)
    eleven = initguard.plan(labels, "cross_entropy", num_classes=11)

    report = initguard.check(twelve, twelve.expected_loss, 64)

    assert report.verdict is Verdict.FAIL
    assert "2 of the layer's 12 outputs are classes that never occur" in report.cause
    # One padding slot is fine; so is a wider share when the user allows it.
    assert initguard.check(eleven, eleven.expected_loss, 64).verdict is Verdict.PASS
    allowing = Tolerance(unseen_classes=0.5)
    assert initguard.check(twelve, twelve.expected_loss, 64, allowing).verdict is Verdict.PASS


def test_a_bias_worse_than_zero_on_the_batch_means_the_wrong_targets(rng):
    torch = pytest.importorskip("torch")
    labels = (rng.random(4000) < 0.1).astype(float)
    wrong = initguard.plan(1.0 - labels, "binary_cross_entropy")  # planned from flipped targets
    batch = labels[:512]
    logits = torch.tensor(wrong.bias).expand(512)
    measured = torch.nn.BCEWithLogitsLoss()(logits, torch.tensor(batch)).item()

    report = initguard.check(wrong, measured, 512, batch=wrong.batch_loss(batch))

    assert report.deviation == pytest.approx(0.0, abs=1e-9)
    assert report.verdict is Verdict.FAIL
    assert "scores worse on the first batch than a zero bias" in report.cause


def test_a_seen_activation_before_a_logits_loss_decides_inside_the_band(rng):
    torch = pytest.importorskip("torch")
    labels = (rng.random(4000) < 0.1).astype(float)
    plan = initguard.plan(labels, "binary_cross_entropy")
    batch = labels[:256]
    probabilities = torch.sigmoid(torch.tensor(plan.bias)).expand(256)
    measured = torch.nn.BCEWithLogitsLoss()(probabilities, torch.tensor(batch)).item()
    exact = plan.batch_loss(batch)

    unseen = initguard.check(plan, measured, 256, batch=exact)
    seen = initguard.check(plan, measured, 256, batch=exact, doubled_seen=True)
    correct = initguard.check(plan, exact.at_bias, 256, batch=exact, doubled_seen=True)

    assert unseen.verdict is Verdict.PASS  # inside the band for a fresh model
    assert seen.verdict is Verdict.FAIL
    assert "passed through sigmoid twice" in seen.cause
    assert correct.verdict is Verdict.PASS


def test_poisson_band_follows_the_loss_spread_not_its_offset(rng):
    torch = pytest.importorskip("torch")
    counts = rng.poisson(30.0, size=3000).astype(float)
    plan = initguard.plan(counts, "poisson_nll")
    loss = torch.nn.PoissonNLLLoss()
    target = torch.tensor(counts[:256])
    at_zero = loss(torch.zeros(256, dtype=torch.float64), target).item()
    at_bias = loss(torch.tensor(plan.bias).expand(256), target).item()

    assert plan.expected_loss < -70  # the offset is far from 0
    assert plan.scale == pytest.approx(plan.loss_std)
    exact = plan.batch_loss(counts[:256])
    assert initguard.check(plan, at_bias, 256, batch=exact).verdict is Verdict.PASS
    unset = initguard.check(plan, at_zero, 256, batch=exact, bias_set=False)
    assert unset.verdict is Verdict.FAIL
    assert "bias was not set" in unset.cause


def test_gaussian_band_follows_the_loss_spread(rng):
    values = rng.normal(3.0, 0.6065, size=(2000, 1))
    plan = initguard.plan(values, "gaussian_nll")

    assert abs(plan.expected_loss) < 0.05  # near 0: |expected| would be no scale
    assert plan.scale == pytest.approx(plan.loss_std)
    assert plan.loss_std == pytest.approx(math.sqrt(0.5), rel=0.1)
