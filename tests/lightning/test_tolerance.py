"""The tolerance in real fits: silent on sound set-ups, firing on real mistakes, over seeds."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning.pytorch")

import ig_lightning_kit as kit  # noqa: E402
from torch import nn  # noqa: E402

from initguard import InitLossWarning, InvalidInputError, Verdict  # noqa: E402
from initguard.lightning import InitGuard  # noqa: E402

SEEDS = [0, 1, 2]


def first_report(model, loader, guard=None, expect_warning=False, extra=()):
    guard = guard or InitGuard()
    trainer = kit.trainer(max_steps=1, callbacks=[guard, *extra])
    if expect_warning:
        with pytest.warns(InitLossWarning):
            trainer.fit(model, loader)
    else:
        trainer.fit(model, loader)
    return guard.report


@pytest.fixture(scope="module")
def digits():
    return kit.digits()


@pytest.fixture(scope="module")
def standard_digits(digits):
    x, y = digits
    return (x - x.mean(0)) / (x.std(0) + 1e-6), y


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scaling", ["unit", "standard"])
def test_digits_mlp_passes(digits, standard_digits, seed, scaling):
    x, y = digits if scaling == "unit" else standard_digits
    torch.manual_seed(seed)
    model = kit.Net(64, 10, nn.CrossEntropyLoss(), hidden=64)
    report = first_report(model, kit.loader(x, y, batch_size=64, seed=seed))
    assert report.verdict is Verdict.PASS
    assert 0.0 <= report.spread_excess < 0.1 * report.expected_loss


@pytest.mark.parametrize("seed", SEEDS)
def test_digits_mlp_with_final_weights_20_times_too_large_fails(standard_digits, seed):
    x, y = standard_digits
    torch.manual_seed(seed)
    model = kit.Net(64, 10, nn.CrossEntropyLoss(), hidden=64, head_scale=20.0)
    report = first_report(model, kit.loader(x, y, batch_size=64, seed=seed), None, True)
    assert report.verdict is Verdict.FAIL
    assert "initial weights are too large" in report.cause
    # The measured spread alone passes the headroom.
    assert report.spread_excess > report.expected_loss


def regression_data(seed, n=1024):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    # A large mean and a noise scale that varies tenfold between rows.
    noise = rng.standard_t(4, size=n) * 30.0 * (0.3 + np.abs(x[:, 0]))
    y = 150.0 + 20.0 * x[:, 1] + noise
    return torch.tensor(x), torch.tensor(y.astype(np.float32))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("set_bias", [True, False])
def test_regression_with_batch_32_passes_and_an_unset_bias_fails(seed, set_bias):
    x, y = regression_data(seed)
    torch.manual_seed(seed)
    model = kit.Net(6, 1, nn.MSELoss(), squeeze=True)
    snapshot = kit.Snapshot()
    report = first_report(
        model,
        kit.loader(x, y, batch_size=32, seed=seed),
        InitGuard(set_bias=set_bias),
        not set_bias,
        extra=[snapshot],
    )
    if set_bias:
        assert report.verdict is Verdict.PASS
        bias = snapshot.at_start["head.bias"].double()
        assert bias.item() == pytest.approx(float(y.double().mean()), rel=1e-6)
        # The expectation is the real loss of that constant on the first
        # batch, whose squared errors vary widely.
        _, first_y = next(iter(kit.loader(x, y, batch_size=32, seed=seed)))
        on_batch = float(nn.MSELoss()(bias.expand(len(first_y)), first_y.double()))
        assert report.expected_loss == pytest.approx(on_batch, rel=1e-6)
        assert report.standard_error == 0.0
    else:
        assert report.verdict is Verdict.FAIL
        assert "zero output bias" in report.cause


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mistake", ["none", "bias_not_set", "sigmoid_then_logit_loss"])
def test_imbalanced_binary_passes_and_common_mistakes_fail(seed, mistake):
    x, y = kit.binary_data(2048, 0.05, seed)
    torch.manual_seed(seed)
    final = "sigmoid" if mistake == "sigmoid_then_logit_loss" else ""
    model = kit.Net(8, 1, nn.BCEWithLogitsLoss(), squeeze=True, final=final)
    guard = InitGuard(set_bias=mistake != "bias_not_set")
    report = first_report(
        model, kit.loader(x, y, batch_size=128, seed=seed), guard, mistake != "none"
    )
    if mistake == "none":
        assert report.verdict is Verdict.PASS
    elif mistake == "bias_not_set":
        assert report.verdict is Verdict.FAIL and not report.bias_set
        assert "bias not written" in report.message and "zero output bias" in report.cause
        # Judged against the first batch's own targets, with no sampling error.
        assert report.standard_error == 0.0
    else:
        assert report.verdict is Verdict.FAIL and "sigmoid twice" in report.cause


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("outputs", [10, 7])
def test_output_width_must_match_the_number_of_classes(digits, seed, outputs):
    x, y = digits
    torch.manual_seed(seed)
    model = kit.Net(64, outputs, nn.CrossEntropyLoss(), hidden=64)
    before = model.head.bias.detach().clone()
    loader = kit.loader(x, y, batch_size=64, seed=seed)
    if outputs == 10:
        assert first_report(model, loader).verdict is Verdict.PASS
        return
    with pytest.raises(InvalidInputError, match=r"num_classes=7 from the layer's outputs"):
        first_report(model, loader)
    assert torch.equal(model.head.bias, before)


@pytest.mark.parametrize("seed", range(10))
def test_default_initialised_linear_regression_on_standardised_diabetes_passes(seed):
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    torch.manual_seed(seed)
    # hidden=0: the model is one default-initialised nn.Linear(10, 1).
    model = kit.Net(10, 1, nn.MSELoss(), hidden=0, squeeze=True)
    loader = kit.loader(x.astype(np.float32), y.astype(np.float32), batch_size=len(y), seed=seed)
    report = first_report(model, loader)
    assert report.verdict is Verdict.PASS
    assert report.batch_size == len(y)
    assert report.expected_loss == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_spread_excess_matches_the_real_loss_a_random_head_adds(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(1024, 16))
    y = rng.choice(4, size=1024, p=[0.55, 0.25, 0.15, 0.05])
    # Every row also with its features negated and the same label: the
    # head's deviations come in +/- pairs, so the loss they add has no term
    # linear in the deviation and the real excess is what the spread predicts.
    x = torch.tensor(np.concatenate([x, -x]), dtype=torch.float32)
    y = torch.tensor(np.concatenate([y, y]))
    torch.manual_seed(seed)
    model = kit.Net(16, 4, nn.CrossEntropyLoss(), hidden=0)
    nn.init.normal_(model.head.weight, std=0.3)
    guard, snapshot = InitGuard(), kit.Snapshot()
    kit.trainer(max_steps=1, callbacks=[guard, snapshot]).fit(
        model, kit.loader(x, y, batch_size=len(y), shuffle=False)
    )

    model.load_state_dict(snapshot.at_start)
    with torch.no_grad():
        measured = float(nn.CrossEntropyLoss()(model(x), y))
        constant = float(nn.CrossEntropyLoss()(model.head.bias.expand(len(y), 4), y))
    report = guard.report
    assert report.step0_loss == pytest.approx(measured, rel=1e-6)
    assert report.expected_loss == pytest.approx(constant, rel=1e-6)
    assert measured - constant > 0.3
    assert report.spread_excess == pytest.approx(measured - constant, rel=0.2)
    assert report.verdict is Verdict.PASS


@pytest.mark.parametrize("weighted", [False, True])
def test_batch_expectation_is_the_real_loss_of_the_constant_output(digits, weighted):
    x, y = digits
    weight = torch.linspace(0.5, 2.0, 10) if weighted else None
    loss = nn.CrossEntropyLoss(weight=weight)
    torch.manual_seed(0)
    model = kit.Net(64, 10, loss, hidden=16, zero_head=True)
    guard, snapshot = InitGuard(), kit.Snapshot()
    kit.trainer(max_steps=1, callbacks=[guard, snapshot]).fit(
        model, kit.loader(x, y, batch_size=64, seed=0)
    )

    # A zero-weight head outputs its bias: the first batch's loss is the
    # constant output's real loss, which the check must predict exactly.
    _, first_y = next(iter(kit.loader(x, y, batch_size=64, seed=0)))
    bias = snapshot.at_start["head.bias"].double()
    with torch.no_grad():
        on_batch = float(loss.double()(bias.expand(len(first_y), 10), first_y))
        on_all = float(loss.double()(bias.expand(len(y), 10), y))
    report = guard.report
    assert report.expected_loss == pytest.approx(on_batch, rel=1e-9)
    assert abs(on_batch - on_all) > 1e-4  # the batch is not the data set
    assert abs(report.deviation) < 1e-6
    assert report.verdict is Verdict.PASS and report.standard_error == 0.0
    assert report.spread_excess == pytest.approx(0.0, abs=1e-12)
