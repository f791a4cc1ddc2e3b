"""The callback's contract: arguments, report, metrics, strictness, resume, set-ups."""

from __future__ import annotations

import csv
import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")

import ig_lightning_kit as kit  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from torch import nn  # noqa: E402

import initguard  # noqa: E402
from initguard import InitLossError, InitLossWarning, InvalidInputError, Verdict  # noqa: E402
from initguard.lightning import InitGuard  # noqa: E402


def fit(model, data, guard, **trainer_args):
    trainer = kit.trainer(**{"max_steps": 2, "callbacks": [guard], **trainer_args})
    trainer.fit(model, data)
    return trainer


def binary_setup(seed=0, rate=0.3, **net_args):
    x, y = kit.binary_data(512, rate, seed)
    torch.manual_seed(seed)
    model = kit.Net(8, 1, nn.BCEWithLogitsLoss(), squeeze=True, **net_args)
    return model, kit.loader(x, y, batch_size=128, seed=seed)


# ------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"loss": 3}, "`loss` must be None, a torch loss module"),
        ({"loss": "crossentropy"}, "`loss` must be one of"),
        ({"loss": "mse", "loss_options": {"delta": 1.0}}, "Unknown option"),
        ({"loss_options": ["weight"]}, "`loss_options` must be a mapping"),
        ({"layer": ""}, "`layer` must be a non-empty module name"),
        ({"layer": 3}, "`layer` must be a non-empty module name"),
        ({"targets": []}, "`targets` must not be empty"),
        ({"targets": ["a", "b"]}, "`targets` must hold numbers"),
        ({"targets_from_batch": "y"}, "`targets_from_batch` must be a function"),
        ({"set_bias": 1}, "`set_bias` must be True or False; received 1"),
        ({"allow_buffer": "yes"}, "`allow_buffer` must be True or False"),
        ({"strict": "yes"}, "`strict` must be True, False or None"),
        ({"tolerance": 0.1}, "`tolerance` must be an initguard.Tolerance"),
        ({"max_target_batches": 0}, "`max_target_batches` must be an integer >= 1; received 0"),
        ({"max_target_batches": True}, "`max_target_batches` must be an integer"),
        (
            {"loss": nn.CrossEntropyLoss(reduction="none")},
            "reduction in .*received reduction='none'",
        ),
        ({"loss": nn.CosineEmbeddingLoss()}, "CosineEmbeddingLoss is not supported"),
        (
            {"loss": torch.nn.functional.cross_entropy},
            'function .cross_entropy.*loss="cross_entropy"',
        ),
    ],
)
def test_invalid_arguments_fail_in_init(kwargs, fragment):
    with pytest.raises(InvalidInputError, match=fragment):
        InitGuard(**kwargs)


def test_strict_comes_from_environment(monkeypatch):
    monkeypatch.setenv(initguard.STRICT_ENV, "yes")
    assert InitGuard().strict is True
    assert InitGuard(strict=False).strict is False
    monkeypatch.setenv(initguard.STRICT_ENV, "sometimes")
    with pytest.raises(InvalidInputError, match="INITGUARD_STRICT must be one of"):
        InitGuard()


def test_loss_module_must_be_unique_when_not_given():
    model, data = binary_setup()
    model.aux = nn.MSELoss()
    with pytest.raises(
        InvalidInputError, match=r"found 'loss' \(BCEWithLogitsLoss\), 'aux'.*loss="
    ):
        fit(model, data, InitGuard())
    del model.aux, model.loss
    model.loss = nn.functional.binary_cross_entropy_with_logits
    with pytest.raises(InvalidInputError, match=r"found none\. Pass `loss=`"):
        fit(model, data, InitGuard())


def test_loss_name_and_options_override_the_module():
    model, data = binary_setup()
    model.loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(3.0))
    snapshot = kit.Snapshot()
    guard = InitGuard("binary_cross_entropy", loss_options={"pos_weight": 3.0})
    fit(model, data, guard, callbacks=[guard, snapshot])
    positives = float(data.dataset.tensors[1].mean())
    expected = math.log(3.0 * positives / (1 - positives))
    assert snapshot.at_start["head.bias"].item() == pytest.approx(expected, rel=1e-6)
    assert guard.report.verdict is Verdict.PASS


# ------------------------------------------------------------- report, metrics


def test_report_and_metrics_in_csv_logger(tmp_path):
    model, data = binary_setup()
    guard, snapshot = InitGuard(), kit.Snapshot()
    fit(model, data, guard, logger=CSVLogger(tmp_path, name="run"), callbacks=[guard, snapshot])

    report = guard.report
    assert report.verdict is Verdict.PASS and report.bias_set and report.layer == "head"
    assert report.batch_size == 128
    positives = float(data.dataset.tensors[1].double().mean())
    bias = snapshot.at_start["head.bias"].double()
    assert bias.item() == pytest.approx(math.log(positives / (1 - positives)), rel=1e-6)
    # The expectation is that bias's real loss on the first batch's targets.
    _, first_y = next(iter(kit.loader(*data.dataset.tensors, batch_size=128, seed=0)))
    on_batch = nn.BCEWithLogitsLoss()(bias.expand(len(first_y)), first_y.double())
    assert report.expected_loss == pytest.approx(float(on_batch), rel=1e-9)
    assert report.standard_error == 0.0 and report.spread_excess is not None
    assert any("TensorDataset's last tensor" in n for n in report.notes)

    (metrics_file,) = tmp_path.glob("run/*/metrics.csv")
    with metrics_file.open() as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("initguard/step0_loss")]
    assert len(rows) == 1
    assert float(rows[0]["initguard/expected_loss"]) == pytest.approx(report.expected_loss)
    assert float(rows[0]["initguard/step0_loss"]) == pytest.approx(report.step0_loss)
    assert float(rows[0]["initguard/deviation"]) == pytest.approx(report.deviation)


def test_step0_loss_is_the_real_first_batch_loss():
    model, data = binary_setup(seed=3)
    _, y = next(iter(kit.loader(*data.dataset.tensors, batch_size=128, seed=3)))
    guard = InitGuard()

    class Measure(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                with torch.no_grad():
                    self.loss = float(pl_module.loss(pl_module(batch[0]), batch[1]))
                assert torch.equal(batch[1], y)

    measure = Measure()
    fit(model, data, guard, callbacks=[guard, measure])
    assert guard.report.step0_loss == pytest.approx(measure.loss, rel=1e-6)


def test_failure_warns_with_the_likely_cause():
    model, data = binary_setup(rate=0.05)
    guard = InitGuard(set_bias=False)
    with pytest.raises(InitLossWarning, match="bias was not set"):
        fit(model, data, guard)


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_strict_failure_stops_before_second_step_and_keeps_files(tmp_path):
    model, data = binary_setup(head_scale=50.0)
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    old = ckpt_dir / "earlier.ckpt"
    old.write_bytes(b"trained weights")
    old_log = tmp_path / "run" / "version_0" / "metrics.csv"
    old_log.parent.mkdir(parents=True)
    old_log.write_text("epoch,step,train_loss\n0,9,0.25\n")
    steps = []

    class CountSteps(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            steps.append(trainer.global_step)

    trainer = kit.trainer(
        max_steps=20,
        callbacks=[InitGuard(strict=True), CountSteps(), ModelCheckpoint(dirpath=ckpt_dir)],
        enable_checkpointing=True,
        logger=CSVLogger(tmp_path, name="run"),
    )
    with pytest.raises(InitLossError, match="Training stopped before the second optimizer step"):
        trainer.fit(model, data)
    assert steps == [0] and trainer.global_step == 1
    assert old.read_bytes() == b"trained weights"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["earlier.ckpt"]
    assert old_log.read_text() == "epoch,step,train_loss\n0,9,0.25\n"


def test_strict_from_environment_raises(monkeypatch):
    monkeypatch.setenv(initguard.STRICT_ENV, "1")
    model, data = binary_setup(head_scale=50.0)
    with pytest.raises(InitLossError, match=r"Likely cause: .*initial weights are too large"):
        fit(model, data, InitGuard())


def test_non_finite_step0_loss_fails():
    x, y = kit.binary_data(128, 0.3, 0)
    x[:, 0] = float("nan")
    torch.manual_seed(0)
    model = kit.Net(8, 1, nn.BCEWithLogitsLoss(), squeeze=True)
    with pytest.raises(InitLossError, match="not finite"):
        fit(model, kit.loader(x, y), InitGuard(strict=True))


def test_all_ignored_first_batch_falls_back_to_the_plan_and_fails():
    x, y = kit.digits()
    y = y.clone()
    y[:32] = -100  # CrossEntropyLoss's default ignore_index: the first batch is all ignored
    torch.manual_seed(0)
    model = kit.Net(64, 10, nn.CrossEntropyLoss(), hidden=16)
    guard = InitGuard(strict=False)
    with pytest.warns(InitLossWarning, match="not finite"):
        fit(model, kit.loader(x, y, batch_size=32, shuffle=False), guard, max_steps=1)
    report = guard.report
    assert report.verdict is Verdict.FAIL and math.isnan(report.step0_loss)
    # No exact batch expectation: the plan's, with its sampling error.
    assert report.standard_error > 0.0
    assert any("first batch's own targets could not be evaluated" in n for n in report.notes)


# ------------------------------------------------------------ fresh-head spread


class OneByOneHead(L.LightningModule):
    """A 1x1 convolution straight on the image: each pixel's output is weight * pixel + bias."""

    def __init__(self, weight):
        super().__init__()
        self.head = nn.Conv2d(1, 3, 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor(weight).reshape(3, 1, 1, 1))
        self.loss = nn.CrossEntropyLoss()

    def forward(self, x):
        return self.head(x)

    def training_step(self, batch, batch_idx):
        return self.loss(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_spread_of_a_convolution_head_is_measured_on_its_channel_axis():
    rng = np.random.default_rng(0)
    masks = torch.tensor(rng.choice(3, size=(16, 6, 6), p=[0.6, 0.3, 0.1]))
    images = torch.ones(16, 1, 6, 6)
    deviation = torch.tensor([1.5, -0.5, 0.8], dtype=torch.float64)
    guard, snapshot = InitGuard(), kit.Snapshot()
    fit(
        OneByOneHead(deviation.tolist()),
        kit.loader(images, masks, batch_size=16),
        guard,
        callbacks=[guard, snapshot],
        max_steps=1,
    )

    # Every pixel deviates from the bias by the same vector: the spread is the
    # real loss's mean excess at bias +/- that vector over all the targets.
    bias = snapshot.at_start["head.bias"].double()
    loss = nn.CrossEntropyLoss()
    flat = masks.reshape(-1)

    def at(output):
        return float(loss(output.expand(len(flat), 3), flat))

    excess = (at(bias + deviation) + at(bias - deviation)) / 2 - at(bias)
    assert excess > 0.1
    assert guard.report.spread_excess == pytest.approx(excess, rel=1e-6)


def test_spread_not_measured_without_enough_traced_rows():
    model, data = binary_setup()
    guard = InitGuard(layer="head")
    fit(model, data, guard)
    assert guard.report.verdict is Verdict.PASS and guard.report.spread_excess is None
    assert any("`layer=` was given, so no forward pass ran" in n for n in guard.report.notes)

    model, data = binary_setup()
    model.example_input_array = torch.zeros(2, 8)
    guard = InitGuard()
    fit(model, data, guard)
    assert guard.report.verdict is Verdict.PASS and guard.report.spread_excess is None
    assert any("from at least 8 rows" in n for n in guard.report.notes)


# ------------------------------------------------------- resume, reuse, state


def _train_and_checkpoint(tmp_path):
    model, data = binary_setup(seed=1)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    # One whole epoch, so the resumed fit starts at an epoch boundary.
    trainer = kit.trainer(max_epochs=1, callbacks=[InitGuard(), ckpt], enable_checkpointing=True)
    trainer.fit(model, data)
    return data, ckpt


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
@pytest.mark.parametrize("which", ["path", "last"])
def test_resume_keeps_every_trained_weight(tmp_path, which):
    data, ckpt = _train_and_checkpoint(tmp_path)
    saved = torch.load(ckpt.last_model_path, weights_only=True)["state_dict"]

    torch.manual_seed(7)
    fresh = kit.Net(8, 1, nn.BCEWithLogitsLoss(), squeeze=True)
    guard, snapshot = InitGuard(), kit.Snapshot()
    trainer = kit.trainer(
        max_steps=8,
        callbacks=[guard, snapshot, ModelCheckpoint(dirpath=tmp_path, save_last=True)],
        enable_checkpointing=True,
    )
    trainer.fit(fresh, data, ckpt_path=ckpt.last_model_path if which == "path" else "last")

    assert snapshot.at_start.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(snapshot.at_start[key], value), key
    assert guard.report.verdict is Verdict.SKIPPED
    assert "resumed from checkpoint" in guard.report.message
    assert not guard.report.bias_set


def test_checkpoint_loads_with_weights_only(tmp_path):
    _, ckpt = _train_and_checkpoint(tmp_path)
    checkpoint = torch.load(ckpt.last_model_path, weights_only=True)
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("InitGuard")]
    assert state["report"]["verdict"] == "pass"
    assert isinstance(state["report"]["expected_loss"], float)


def test_reused_callback_starts_clean():
    guard = InitGuard()
    model, data = binary_setup(head_scale=50.0)
    with pytest.warns(InitLossWarning):
        fit(model, data, guard)
    first_notes = guard.report.notes

    model, data = binary_setup(seed=2)
    fit(model, data, guard)
    assert guard.report.verdict is Verdict.PASS
    assert len(guard.report.notes) == len(first_notes)


def test_validate_test_predict_do_nothing():
    model, _ = binary_setup()
    data = kit.loader(*kit.binary_data(64, 0.3, 0), shuffle=False)
    model.validation_step = lambda batch, batch_idx: model.loss(model(batch[0]), batch[1])
    model.test_step = model.validation_step
    model.predict_step = lambda batch, batch_idx: model(batch[0])
    bias = model.head.bias.detach().clone()
    guard = InitGuard()
    trainer = kit.trainer(callbacks=[guard])
    trainer.validate(model, data)
    trainer.test(model, data)
    trainer.predict(model, data)
    assert guard.report is None
    assert torch.equal(model.head.bias, bias)


# ----------------------------------------------------------- training set-ups


def _first_loss(guard, **trainer_args):
    model, data = binary_setup(seed=4, zero_head=False)
    fit(model, data, guard, **trainer_args)
    return guard.report


def test_gradient_accumulation_undoes_lightning_division():
    plain = _first_loss(InitGuard())
    accumulated = _first_loss(InitGuard(), accumulate_grad_batches=4, max_steps=1)
    assert accumulated.step0_loss == pytest.approx(plain.step0_loss, rel=1e-6)
    assert accumulated.verdict is Verdict.PASS


class Manual(kit.Net):
    def __init__(self, *args, returns=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False
        self.returns = returns

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        loss = self.loss(self(batch[0]), batch[1])
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return loss if self.returns else None


@pytest.mark.parametrize("returns", [True, False])
def test_manual_optimisation(returns):
    x, y = kit.binary_data(256, 0.2, 0)
    torch.manual_seed(0)
    model = Manual(8, 1, nn.BCEWithLogitsLoss(), squeeze=True, returns=returns)
    guard = InitGuard()
    fit(model, kit.loader(x, y, batch_size=64), guard)
    if returns:
        assert guard.report.verdict is Verdict.PASS
        assert guard.report.step0_loss == pytest.approx(_first_loss_of(x, y), rel=1e-6)
    else:
        assert guard.report.verdict is Verdict.SKIPPED
        assert "manual optimisation" in guard.report.cause


def _first_loss_of(x, y):
    # The same model and bias, evaluated directly on the first batch.
    torch.manual_seed(0)
    model = kit.Net(8, 1, nn.BCEWithLogitsLoss(), squeeze=True)
    plan = initguard.plan(y.numpy(), "binary_cross_entropy")
    with torch.no_grad():
        model.head.bias.fill_(float(plan.bias[0]))
        xb, yb = next(iter(kit.loader(x, y, batch_size=64)))
        return float(model.loss(model(xb), yb))


def test_bf16_mixed_precision_passes_and_keeps_dtype():
    model, data = binary_setup(seed=5)
    guard = InitGuard()
    snapshot = kit.Snapshot()
    fit(model, data, guard, precision="bf16-mixed", callbacks=[guard, snapshot])
    assert guard.report.verdict is Verdict.PASS
    assert model.head.bias.dtype == torch.float32
    plan = initguard.plan(data.dataset.tensors[1].numpy(), "binary_cross_entropy")
    assert snapshot.at_start["head.bias"].item() == pytest.approx(plan.bias[0], rel=1e-6)


def test_double_precision_bias_written_in_float64():
    model, data = binary_setup(seed=5)
    snapshot = kit.Snapshot()
    fit(model, data, InitGuard(), precision="64-true", callbacks=[InitGuard(), snapshot])
    plan = initguard.plan(data.dataset.tensors[1].numpy(), "binary_cross_entropy")
    assert snapshot.at_start["head.bias"].dtype == torch.float64
    assert snapshot.at_start["head.bias"].item() == plan.bias[0]


def test_bf16_parameters_get_a_bf16_bias():
    model, data = binary_setup(seed=5)
    snapshot = kit.Snapshot()
    guard = InitGuard()
    fit(model, data, guard, precision="bf16-true", callbacks=[guard, snapshot])
    plan = initguard.plan(data.dataset.tensors[1].numpy(), "binary_cross_entropy")
    bias = snapshot.at_start["head.bias"]
    assert bias.dtype == torch.bfloat16
    assert bias.item() == torch.tensor(plan.bias[0]).to(torch.bfloat16).item()
    assert guard.report.verdict is Verdict.PASS


def test_weights_loaded_by_hand_are_kept_with_set_bias_false():
    trained, data = binary_setup(seed=6)
    fit(trained, data, InitGuard(), max_steps=12)
    torch.manual_seed(99)
    fresh = kit.Net(8, 1, nn.BCEWithLogitsLoss(), squeeze=True)
    fresh.load_state_dict(trained.state_dict())
    guard, snapshot = InitGuard(set_bias=False), kit.Snapshot()
    with warnings.catch_warnings():
        # A trained model may sit below the constant-output loss; that is not the point here.
        warnings.simplefilter("ignore", InitLossWarning)
        fit(fresh, data, guard, callbacks=[guard, snapshot])
    for key, value in trained.state_dict().items():
        assert torch.equal(snapshot.at_start[key], value), key
    assert not guard.report.bias_set
    assert "bias not written: set_bias=False (check only)" in guard.report.notes


def test_fast_dev_run_and_sanity_validation():
    val = kit.loader(*kit.binary_data(64, 0.3, 1), shuffle=False)
    model, data = binary_setup()
    model.validation_step = lambda batch, batch_idx: model.loss(model(batch[0]), batch[1])
    guard = InitGuard()
    trainer = kit.trainer(fast_dev_run=True, callbacks=[guard])
    trainer.fit(model, data, val)
    assert guard.report.verdict is Verdict.PASS

    model, data = binary_setup()
    model.validation_step = lambda batch, batch_idx: model.loss(model(batch[0]), batch[1])
    guard = InitGuard()
    trainer = kit.trainer(
        max_steps=2, callbacks=[guard], num_sanity_val_steps=2, val_check_interval=1
    )
    trainer.fit(model, data, val)
    assert guard.report.verdict is Verdict.PASS


def test_no_training_batch_is_reported():
    model, data = binary_setup()
    guard = InitGuard()
    fit(model, data, guard, limit_train_batches=0)
    assert guard.report.verdict is Verdict.SKIPPED
    assert "no training batch will run" in guard.report.cause


def test_works_in_a_pytorch_lightning_trainer():
    pl = pytest.importorskip("pytorch_lightning")

    class PlNet(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 1)
            self.loss = nn.BCEWithLogitsLoss()

        def forward(self, x):
            return self.head(x).squeeze(-1)

        def training_step(self, batch, i):
            return self.loss(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    x, y = kit.binary_data(256, 0.1, 0)
    torch.manual_seed(0)
    model = PlNet()
    guard = InitGuard()
    trainer = pl.Trainer(
        max_steps=2,
        callbacks=[guard],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, kit.loader(x, y))
    assert guard.report.verdict is Verdict.PASS
    rate = float(y.double().mean())
    bias = torch.tensor(np.log(rate / (1 - rate)), dtype=torch.float64)
    _, first_y = next(iter(kit.loader(x, y)))
    on_batch = nn.BCEWithLogitsLoss()(bias.expand(len(first_y)), first_y.double())
    assert guard.report.bias_set
    assert guard.report.expected_loss == pytest.approx(float(on_batch), rel=1e-9)
