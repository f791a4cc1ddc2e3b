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


def first_report(model, loader, guard=None, expect_warning=False):
    guard = guard or InitGuard()
    trainer = kit.trainer(max_steps=1, callbacks=[guard])
    if expect_warning:
        with pytest.warns(InitLossWarning):
            trainer.fit(model, loader)
    else:
        trainer.fit(model, loader)
    return guard.report


@pytest.fixture(scope="module")
def digits():
    return kit.digits()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("head_scale", [1.0, 20.0])
def test_digits_mlp_passes_and_oversized_final_weights_fail(digits, seed, head_scale):
    x, y = digits
    torch.manual_seed(seed)
    model = kit.Net(64, 10, nn.CrossEntropyLoss(), hidden=64, head_scale=head_scale)
    report = first_report(model, kit.loader(x, y, batch_size=64, seed=seed), None, head_scale > 1)
    if head_scale == 1.0:
        assert report.verdict is Verdict.PASS
    else:
        assert report.verdict is Verdict.FAIL
        assert "final-layer weights too large" in report.cause


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
    report = first_report(
        model,
        kit.loader(x, y, batch_size=32, seed=seed),
        InitGuard(set_bias=set_bias),
        not set_bias,
    )
    if set_bias:
        assert report.verdict is Verdict.PASS
        assert report.expected_loss == pytest.approx(
            float(y.double().var(unbiased=False)), rel=1e-6
        )
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
        assert "bias not written" in report.message
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
