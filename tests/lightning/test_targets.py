"""Where the statistics come from: dataset targets, samplers, and the last-resort loader pass."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")

import ig_lightning_kit as kit  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import (  # noqa: E402
    ConcatDataset,
    DataLoader,
    Dataset,
    Subset,
    TensorDataset,
    WeightedRandomSampler,
)

import initguard  # noqa: E402
from initguard import InvalidInputError, Verdict  # noqa: E402
from initguard.lightning import InitGuard  # noqa: E402


class Rows(Dataset):
    """Features and labels, with the labels exposed under ``attribute``; counts item reads."""

    def __init__(self, x, y, attribute="targets"):
        self.x, self.y = x, y
        setattr(self, attribute, y.tolist() if attribute == "targets" else y.numpy())
        self.reads = 0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        self.reads += 1
        return self.x[i], self.y[i]


def binary_model(seed=0):
    torch.manual_seed(seed)
    return kit.Net(8, 1, nn.BCEWithLogitsLoss(), squeeze=True)


def run(loader, guard=None, model=None, **fit_args):
    """The report, and the bias written at fit start (float64)."""
    guard = guard or InitGuard(layer="head")
    snapshot = kit.Snapshot()
    trainer = kit.trainer(max_steps=1, callbacks=[guard, snapshot])
    trainer.fit(model or binary_model(), loader, **fit_args)
    return guard.report, snapshot.at_start["head.bias"].double().numpy()


def bce_bias(labels):
    """The bias planned from exactly these labels (the report's loss is the first batch's)."""
    return initguard.plan(np.asarray(labels, dtype=np.float64), "binary_cross_entropy").bias


@pytest.mark.parametrize("attribute", ["targets", "labels"])
def test_exposed_targets_are_read_without_touching_inputs(attribute):
    x, y = kit.binary_data(300, 0.2, 0)
    rows = Rows(x, y, attribute)
    report, bias = run(DataLoader(rows, batch_size=50))
    assert bias == pytest.approx(bce_bias(y), abs=1e-6)
    assert any(
        f"the dataset's `.{attribute}`" in n and "inputs not read" in n for n in report.notes
    )
    # Only the one training step read rows.
    assert rows.reads == 50


def test_subset_and_concat_datasets_map_their_indices():
    x, y = kit.binary_data(400, 0.3, 1)
    base = TensorDataset(x, y)
    chosen = np.flatnonzero(y.numpy() == 1)[:40].tolist() + list(range(0, 400, 7))
    report, bias = run(DataLoader(Subset(base, chosen), batch_size=64))
    assert bias == pytest.approx(bce_bias(y[chosen]), abs=1e-6)
    assert any("(through a Subset)" in n for n in report.notes)

    x2, y2 = kit.binary_data(100, 0.8, 2)
    both = ConcatDataset([base, Rows(x2, y2)])
    report, bias = run(DataLoader(both, batch_size=64))
    expected = bce_bias(np.concatenate([y.numpy(), y2.numpy()]))
    assert bias == pytest.approx(expected, abs=1e-6)


def test_weighted_sampler_statistics_follow_the_oversampling():
    x, y = kit.binary_data(2000, 0.05, 3)
    weights = torch.where(y == 1, 19.0, 1.0).double()  # positives drawn as often as negatives
    sampler = WeightedRandomSampler(
        weights, num_samples=2000, generator=torch.Generator().manual_seed(0)
    )
    loader = DataLoader(TensorDataset(x, y), batch_size=200, sampler=sampler)
    guard, snapshot = InitGuard(), kit.Snapshot()
    trainer = kit.trainer(max_steps=1, callbacks=[guard, snapshot])
    trainer.fit(binary_model(), loader)
    report = guard.report

    assert report.verdict is Verdict.PASS
    # About half the drawn rows are positive, not 5 %.
    assert abs(snapshot.at_start["head.bias"].item()) < 0.2
    assert any("WeightedRandomSampler" in n for n in report.notes)


def test_order_of_training_batches_is_unchanged():
    x, y = kit.binary_data(256, 0.3, 4)

    class First(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                self.y = batch[1].clone()

    seen = []
    for guard in ([InitGuard()], []):
        torch.manual_seed(11)  # the sampler draws its order from the global generator
        first = First()
        loader = DataLoader(Rows(x, y), batch_size=32, shuffle=True)
        trainer = kit.trainer(max_steps=1, callbacks=[*guard, first])
        torch.manual_seed(11)
        trainer.fit(binary_model(), loader)
        seen.append(first.y)
    assert torch.equal(seen[0], seen[1])


class Pairs(Dataset):
    """Rows that expose no targets: only iterating the loader gives them."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_last_resort_pass_is_bounded_and_reported():
    x, y = kit.binary_data(320, 0.25, 5)
    report, bias = run(DataLoader(Pairs(x, y), batch_size=32))
    assert bias == pytest.approx(bce_bias(y), abs=1e-6)
    assert any(
        "pass over the training DataLoader (10 batches, inputs loaded" in n for n in report.notes
    )

    report, bias = run(
        DataLoader(Pairs(x, y), batch_size=32), InitGuard(layer="head", max_target_batches=3)
    )
    assert bias == pytest.approx(bce_bias(y[:96]), abs=1e-6)
    assert any("stopped at max_target_batches=3" in n for n in report.notes)


def test_targets_from_batch_and_targets_override():
    x, y = kit.binary_data(256, 0.3, 6)
    torch.manual_seed(6)
    weights = 0.9 + 0.1 * torch.rand(256)  # sample weights near 1, stored last

    class Weighted(kit.Net):
        def training_step(self, batch, batch_idx):
            features, labels, _ = batch
            return self.loss(self(features), labels)

    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(x, y, weights), batch_size=64)
    with pytest.warns(initguard.InitLossWarning):
        report, bias = run(
            loader,
            InitGuard(layer="head"),
            model=Weighted(8, 1, nn.BCEWithLogitsLoss(), squeeze=True),
        )
    # The default reads the last tensor (the weights): wrong targets, so the check fails.
    assert report.verdict is Verdict.FAIL

    pick = InitGuard(layer="head", targets_from_batch=lambda batch: batch[1])
    report, bias = run(loader, pick, model=Weighted(8, 1, nn.BCEWithLogitsLoss(), squeeze=True))
    assert report.verdict is Verdict.PASS
    assert bias == pytest.approx(bce_bias(y), abs=1e-6)
    assert any("targets_from_batch applied" in n for n in report.notes)

    given = InitGuard(layer="head", targets=y.numpy()[:128])
    report, bias = run(kit.loader(x, y), given)
    assert bias == pytest.approx(bce_bias(y[:128]), abs=1e-6)
    assert "targets given to the callback (`targets=`)" in report.notes


def test_unreadable_batches_ask_for_targets_from_batch():
    x, _ = kit.binary_data(64, 0.3, 0)

    class Plain(Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i]

    with pytest.raises(InvalidInputError, match=r"batch of type Tensor.*`targets_from_batch=`"):
        run(DataLoader(Plain(), batch_size=16))


def test_datamodule_data_is_read():
    x, y = kit.binary_data(256, 0.15, 7)

    class Data(L.LightningDataModule):
        def setup(self, stage):
            self.train = TensorDataset(x, y)

        def train_dataloader(self):
            return DataLoader(self.train, batch_size=64, shuffle=True)

    guard, snapshot = InitGuard(), kit.Snapshot()
    trainer = kit.trainer(max_steps=1, callbacks=[guard, snapshot])
    trainer.fit(binary_model(), datamodule=Data())
    bias = snapshot.at_start["head.bias"].double().numpy()
    assert bias == pytest.approx(bce_bias(y), abs=1e-6)
    assert guard.report.verdict is Verdict.PASS
