"""torch loss modules read into core plans, checked against the real torch losses."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning.pytorch")

import ig_lightning_kit as kit  # noqa: E402
from torch import nn  # noqa: E402

from initguard import InvalidInputError, Verdict  # noqa: E402
from initguard.lightning import InitGuard  # noqa: E402
from initguard.lightning._torch_losses import read_torch_loss  # noqa: E402

N = 240


def labels(rng, classes=4, shape=(N,)):
    return torch.tensor(rng.choice(classes, size=shape, p=[0.55, 0.25, 0.15, 0.05][:classes]))


def soft_rows(rng, classes=4):
    return torch.tensor(rng.dirichlet(np.ones(classes) * 0.7, size=N))


def binary(rng, rates=(0.3, 0.1, 0.6)):
    return torch.tensor((rng.random((N, len(rates))) < np.asarray(rates)).astype(np.float64))


def skewed(rng, outputs=2):
    return torch.tensor(rng.lognormal(1.0, 0.8, size=(N, outputs)) * 10 + 50)


def counts(rng):
    return torch.tensor(rng.poisson(3.5, size=(N, 2)).astype(np.float64))


def identity(out):
    return out


def log_softmax(out):
    return torch.log_softmax(out, dim=1)


# (id, loss module, target maker, output transform, options for the core)
CASES = [
    ("ce", nn.CrossEntropyLoss(), labels, identity, {}),
    (
        "ce_weight_smooth_ignore",
        nn.CrossEntropyLoss(
            weight=torch.tensor([1.0, 2.0, 0.5, 4.0]), label_smoothing=0.1, ignore_index=3
        ),
        labels,
        identity,
        {"num_classes": 4},
    ),
    ("ce_sum", nn.CrossEntropyLoss(reduction="sum"), labels, identity, {}),
    ("ce_soft", nn.CrossEntropyLoss(label_smoothing=0.05), soft_rows, identity, {}),
    ("nll", nn.NLLLoss(weight=torch.tensor([1.0, 3.0, 1.0, 2.0])), labels, log_softmax, {}),
    (
        "bce_logits",
        nn.BCEWithLogitsLoss(
            pos_weight=torch.tensor([2.0, 5.0, 1.0]), weight=torch.tensor([1.0, 0.5, 2.0])
        ),
        binary,
        identity,
        {},
    ),
    ("bce_sigmoid", nn.BCELoss(), binary, torch.sigmoid, {}),
    (
        "multilabel_soft_margin",
        nn.MultiLabelSoftMarginLoss(weight=torch.tensor([1.0, 2.0, 0.5])),
        binary,
        identity,
        {},
    ),
    ("mse", nn.MSELoss(), skewed, identity, {}),
    ("l1", nn.L1Loss(), skewed, identity, {}),
    ("huber", nn.HuberLoss(delta=4.0), skewed, identity, {}),
    ("smooth_l1", nn.SmoothL1Loss(beta=3.0), skewed, identity, {}),
    ("poisson_log", nn.PoissonNLLLoss(full=True), counts, identity, {}),
    (
        "poisson_rate_exp",
        nn.PoissonNLLLoss(log_input=False),
        counts,
        torch.exp,
        {"activation": "exp"},
    ),
    (
        "poisson_rate_softplus",
        nn.PoissonNLLLoss(log_input=False, eps=1e-3),
        counts,
        nn.functional.softplus,
        {"activation": "softplus"},
    ),
    ("kl_batchmean", nn.KLDivLoss(reduction="batchmean"), soft_rows, log_softmax, {}),
    pytest.param(
        "kl_mean",
        nn.KLDivLoss(reduction="mean"),
        soft_rows,
        log_softmax,
        {},
        # torch warns that its "mean" divides by the classes too; that is the point here.
        marks=pytest.mark.filterwarnings("ignore:reduction. 'mean' divides"),
    ),
]


def _case(case):
    if hasattr(case, "marks"):  # already a pytest.param
        return pytest.param(*case.values[1:], id=case.values[0], marks=case.marks)
    return pytest.param(*case[1:], id=case[0])


def _planned_output(plan, targets, classes_axis_dense=False):
    bias = torch.tensor(plan.bias, dtype=torch.float64)
    if classes_axis_dense:
        shape = [1, -1] + [1] * (targets.ndim - 1)
        return bias.reshape(shape).expand(targets.shape[0], -1, *targets.shape[1:])
    return bias.expand(targets.shape[0], -1)


@pytest.mark.parametrize(
    ("loss", "make", "transform", "options"),
    [_case(c) for c in CASES],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_plan_matches_the_torch_loss_at_the_planned_output(loss, make, transform, options, seed):
    rng = np.random.default_rng(seed)
    targets = make(rng)
    spec = read_torch_loss(loss).spec(options)
    plan = spec.solve(spec.new_stats().update(targets))

    output = _planned_output(plan, targets)
    measured = float(loss.double()(transform(output), targets))
    # A summed loss scales with the rows (and positions) of the batch.
    expected, _, _ = plan.batch_expectation(targets.shape[0])
    assert measured == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_gaussian_nll_plan_matches_torch_with_a_mean_and_log_variance_head(seed):
    targets = skewed(np.random.default_rng(seed))
    loss = nn.GaussianNLLLoss(full=True)
    spec = read_torch_loss(loss).spec({"variance_activation": "exp"})
    plan = spec.solve(spec.new_stats().update(targets))

    output = _planned_output(plan, targets)
    mean, variance = output[:, :2], torch.exp(output[:, 2:])
    measured = float(loss(mean, targets, variance))
    assert plan.bias.shape == (4,)
    assert measured == pytest.approx(plan.expected_loss, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_dense_cross_entropy_over_a_segmentation_map(seed):
    rng = np.random.default_rng(seed)
    targets = labels(rng, shape=(6, 5, 7))
    targets[:, 0, :] = -100  # an ignored border
    loss = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 1.5, 2.0, 3.0]))
    spec = read_torch_loss(loss).spec({"num_classes": 4})
    plan = spec.solve(spec.new_stats().update(targets))

    output = _planned_output(plan, targets, classes_axis_dense=True)
    assert output.shape == (6, 4, 5, 7)
    assert float(loss.double()(output, targets)) == pytest.approx(plan.expected_loss, rel=1e-6)


def test_translation_keeps_every_option():
    choice = read_torch_loss(
        nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0]), ignore_index=7, label_smoothing=0.2)
    )
    assert choice.loss == "cross_entropy"
    assert choice.options == {
        "weight": [1.0, 2.0],
        "ignore_index": 7,
        "label_smoothing": pytest.approx(0.2),
        "reduction": "mean",
    }
    assert read_torch_loss(nn.HuberLoss(delta=0.25)).options["delta"] == 0.25
    assert read_torch_loss(nn.SmoothL1Loss(beta=0.5)).options["beta"] == 0.5
    poisson = read_torch_loss(nn.PoissonNLLLoss(log_input=False, full=True, eps=1e-3))
    assert poisson.options == {"log_input": False, "full": True, "eps": 1e-3, "reduction": "mean"}
    assert read_torch_loss(nn.KLDivLoss(log_target=True)).options["log_target"] is True


@pytest.mark.parametrize(
    ("loss", "fragment"),
    [
        (nn.MSELoss(reduction="none"), "reduction in \\('mean', 'sum'\\)"),
        (nn.KLDivLoss(reduction="none"), "reduction in \\('mean', 'batchmean', 'sum'\\)"),
        (nn.MultiLabelSoftMarginLoss(reduction="sum"), "reduction in \\('mean',\\)"),
        (nn.MarginRankingLoss(), "MarginRankingLoss is not supported"),
    ],
)
def test_unreadable_losses_fail_clearly(loss, fragment):
    with pytest.raises(InvalidInputError, match=fragment):
        read_torch_loss(loss)


# ------------------------------------------------------------ through a fit

FIT_CASES = [
    (
        "ce_weight_smooth",
        nn.CrossEntropyLoss(torch.tensor([1.0, 2.0, 0.5, 4.0]), label_smoothing=0.1),
        labels,
        "",
        4,
    ),
    ("nll", nn.NLLLoss(), labels, "log_softmax", 4),
    ("bce_sigmoid", nn.BCELoss(), binary, "sigmoid", 3),
    (
        "bce_pos_weight",
        nn.BCEWithLogitsLoss(pos_weight=torch.tensor([3.0, 1.0, 2.0])),
        binary,
        "",
        3,
    ),
    ("mse", nn.MSELoss(), skewed, "", 2),
    ("huber", nn.HuberLoss(delta=2.0), skewed, "", 2),
    ("poisson", nn.PoissonNLLLoss(), counts, "", 2),
    ("kl", nn.KLDivLoss(reduction="batchmean"), soft_rows, "log_softmax", 4),
]


@pytest.mark.parametrize(
    ("loss", "make", "final", "width"),
    [c[1:] for c in FIT_CASES],
    ids=[c[0] for c in FIT_CASES],
)
def test_fit_with_a_zero_weight_head_measures_exactly_the_expected_loss(loss, make, final, width):
    rng = np.random.default_rng(3)
    targets = make(rng).float()
    if targets.dtype.is_floating_point and make is labels:
        targets = targets.long()
    x = torch.tensor(rng.normal(size=(N, 5)), dtype=torch.float32)
    torch.manual_seed(0)
    model = kit.Net(5, width, loss, final=final, zero_head=True)
    guard = InitGuard()
    # One batch holding every row: the first batch's loss is the planned loss.
    kit.trainer(max_steps=1, callbacks=[guard]).fit(model, kit.loader(x, targets, batch_size=N))

    report = guard.report
    assert report.verdict is Verdict.PASS and report.bias_set
    assert report.step0_loss == pytest.approx(report.expected_loss, rel=2e-6, abs=1e-6)


class MeanAndLogVariance(kit.Net):
    """One head of width 2K: K means, then K log-variances."""

    def training_step(self, batch, batch_idx):
        out = self(batch[0])
        mean, log_variance = out.chunk(2, dim=1)
        return self.loss(mean, batch[1], log_variance.exp())


def test_gaussian_nll_fit_writes_means_then_log_variances():
    rng = np.random.default_rng(4)
    targets = skewed(rng).float()
    x = torch.tensor(rng.normal(size=(N, 5)), dtype=torch.float32)
    torch.manual_seed(0)
    model = MeanAndLogVariance(5, 4, nn.GaussianNLLLoss(), zero_head=True)
    guard = InitGuard(loss_options={"variance_activation": "exp"})
    snapshot = kit.Snapshot()
    trainer = kit.trainer(max_steps=1, callbacks=[guard, snapshot])
    trainer.fit(model, kit.loader(x, targets, batch_size=N))

    bias = snapshot.at_start["head.bias"].double()
    values = targets.double()
    assert torch.allclose(bias[:2], values.mean(0), rtol=1e-6)
    assert torch.allclose(bias[2:], values.var(0, unbiased=False).log(), rtol=1e-6)
    assert guard.report.step0_loss == pytest.approx(guard.report.expected_loss, rel=1e-5)


# Field cases (CASES.md): known right answers, measured through a real fit.
FIELD = [
    (
        "class_weight_1_9",
        nn.CrossEntropyLoss(weight=torch.tensor([1.0, 9.0])),
        torch.tensor([0] * 900 + [1] * 100),
        2,
        [0.0, 0.0],
        0.693147,
    ),
    (
        "pos_weight_3",
        nn.BCEWithLogitsLoss(pos_weight=torch.tensor(3.0)),
        torch.tensor([1.0] * 100 + [0.0] * 300),
        1,
        [0.0],
        1.039721,
    ),
    ("huber_outlier", nn.HuberLoss(delta=1.0), torch.tensor([0.0, 0, 0, 0, 10]), 1, [0.25], 1.875),
    (
        "mse_large_mean",
        nn.MSELoss(),
        torch.tensor([100000.0, 150000, 200000, 250000, 300000]),
        1,
        [200000.0],
        5.0e9,
    ),
]


@pytest.mark.parametrize(
    ("loss", "targets", "width", "bias", "expected"),
    [pytest.param(*c[1:], id=c[0]) for c in FIELD],
)
def test_field_cases_through_a_fit(loss, targets, width, bias, expected):
    x = torch.zeros(len(targets), 3)
    torch.manual_seed(0)
    model = kit.Net(3, width, loss, hidden=0, squeeze=width == 1, zero_head=True)
    guard, snapshot = InitGuard(), kit.Snapshot()
    trainer = kit.trainer(max_steps=1, callbacks=[guard, snapshot])
    trainer.fit(model, kit.loader(x, targets, batch_size=len(targets)))

    written = snapshot.at_start["head.bias"].double().numpy()
    # Softmax biases are defined up to a constant; compare the differences.
    if width > 1:
        written = written - written[0]
    assert written == pytest.approx(bias, abs=1e-6 * max(1.0, abs(bias[0])))
    assert guard.report.expected_loss == pytest.approx(expected, rel=1e-6)
    assert guard.report.step0_loss == pytest.approx(expected, rel=1e-6)
