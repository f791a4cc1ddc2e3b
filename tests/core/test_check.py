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
        4 * report.standard_error + 0.1 * imbalanced_plan.expected_loss + 1e-4
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

    report = initguard.check(plan, measured, batch_size=32, tolerance=Tolerance(relative=0.0))

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
    labels = rng.choice(3, size=3000, p=[0.8, 0.15, 0.05])
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
