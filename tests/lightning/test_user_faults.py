"""Set-ups a new user tried: transformed targets, streams, rate activations, no forward."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")

import ig_lightning_kit as kit  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset  # noqa: E402

from initguard import InitLossWarning, InvalidInputError, Verdict  # noqa: E402
from initguard.lightning import InitGuard  # noqa: E402

N = 1000


def skewed_classes(seed=0):
    """Inputs and labels 0/1/2 in 85/10/5 %, shuffled."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1, 2], [850, 100, 50])[rng.permutation(N)]
    x = rng.normal(size=(N, 4)).astype(np.float32)
    return torch.tensor(x), torch.tensor(labels, dtype=torch.long)


class VisionLike(Dataset):
    """A torchvision-style dataset: ``.targets`` stored raw, transformed in ``__getitem__``."""

    def __init__(self, x, targets, target_transform=None, transforms=None):
        self.data, self.targets = x, targets
        self.target_transform = target_transform
        self.transforms = transforms

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        image, target = self.data[i], int(self.targets[i])
        if self.target_transform is not None:
            target = self.target_transform(target)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def fit(model, loader, guard):
    snapshot = kit.Snapshot()
    kit.trainer(max_steps=1, callbacks=[guard, snapshot]).fit(model, loader)
    return guard.report, snapshot.at_start["head.bias"].double()


def classifier(loss, width):
    torch.manual_seed(0)
    return kit.Net(4, width, loss, zero_head=True)


# ------------------------------------------------- targets as training sees them


@pytest.mark.parametrize(
    "dataset_args",
    [
        {"target_transform": lambda t: 2 - t},
        {"transforms": lambda image, t: (image, 2 - t)},
    ],
    ids=["target_transform", "joint_transforms"],
)
def test_a_remapping_target_transform_is_honoured(dataset_args):
    x, y = skewed_classes()
    data = VisionLike(x, y, **dataset_args)
    model = classifier(nn.CrossEntropyLoss(), 3)
    report, bias = fit(model, DataLoader(data, batch_size=N), InitGuard())

    # Training sees label 2 - t: classes 0/1/2 in 5/10/85 %.
    assert torch.log_softmax(bias, 0).numpy() == pytest.approx(np.log([0.05, 0.10, 0.85]))
    assert report.verdict is Verdict.PASS
    measured = float(nn.CrossEntropyLoss()(bias.expand(N, 3), 2 - y))
    assert report.expected_loss == pytest.approx(measured, rel=1e-9)
    assert report.step0_loss == pytest.approx(measured, rel=1e-5)
    transform = next(iter(dataset_args))
    assert any(
        "pass over the training DataLoader" in n and f"its `{transform}` transforms them" in n
        for n in report.notes
    )


def test_a_binary_target_transform_gives_no_false_range_error():
    x, y = skewed_classes(1)
    data = VisionLike(x, y, target_transform=lambda t: torch.tensor([float(t == 2)]))
    model = classifier(nn.BCEWithLogitsLoss(), 1)
    report, bias = fit(model, DataLoader(data, batch_size=N), InitGuard())

    positives = (y == 2).double()[:, None]
    assert torch.sigmoid(bias).item() == pytest.approx(0.05)
    measured = float(nn.BCEWithLogitsLoss()(bias.expand(N, 1), positives))
    assert report.expected_loss == pytest.approx(measured, rel=1e-9)
    assert report.step0_loss == pytest.approx(measured, rel=1e-5)
    assert report.verdict is Verdict.PASS


def remap_collate(rows):
    """Stacks the rows and turns label t into 2 - t."""
    x = torch.stack([row[0] for row in rows])
    y = torch.stack([row[1] for row in rows])
    return x, 2 - y


def test_a_collate_fn_that_remaps_labels_is_honoured():
    x, y = skewed_classes(2)
    loader = DataLoader(TensorDataset(x, y), batch_size=250, collate_fn=remap_collate)
    report, bias = fit(classifier(nn.CrossEntropyLoss(), 3), loader, InitGuard())

    assert torch.log_softmax(bias, 0).numpy() == pytest.approx(np.log([0.05, 0.10, 0.85]))
    # The check's expectation is the loss at that bias on the first (unshuffled) batch.
    measured = float(nn.CrossEntropyLoss()(bias.expand(250, 3), 2 - y[:250]))
    assert report.expected_loss == pytest.approx(measured, rel=1e-6)
    assert report.verdict is Verdict.PASS
    assert any("4 batches" in n and "own collate_fn (remap_collate)" in n for n in report.notes)


def test_untransformed_targets_still_take_the_shortcut():
    x, y = skewed_classes(3)
    report, bias = fit(
        classifier(nn.CrossEntropyLoss(), 3),
        DataLoader(VisionLike(x, y), batch_size=N),
        InitGuard(),
    )
    assert torch.log_softmax(bias, 0).numpy() == pytest.approx(np.log([0.85, 0.10, 0.05]))
    assert any("the dataset's `.targets`" in n and "inputs not read" in n for n in report.notes)


# ------------------------------------------------------------------- streams


def rows(n=64, seed=0):
    x, y = kit.binary_data(n, 0.3, seed)
    return x, y, list(zip(x, y, strict=True))


class Counted:
    """Counts the items a stream's source has handed out."""

    def __init__(self, items):
        self.taken = 0
        self.source = self._serve(items)

    def _serve(self, items):
        for item in items:
            self.taken += 1
            yield item


class Shared(Counted, IterableDataset):
    """Hands out the same generator on every ``__iter__``: one pass only."""

    def __iter__(self):
        return self.source


class SharedSource(Counted, IterableDataset):
    """A fresh generator on every ``__iter__``, over one shared source: one pass only."""

    def __iter__(self):
        yield from self.source


class Replayable(IterableDataset):
    """A fresh pass over the items on every ``__iter__``; counts the items handed out."""

    def __init__(self, items):
        self.items, self.taken = items, 0

    def __iter__(self):
        for item in self.items:
            self.taken += 1
            yield item


class SelfIterating(IterableDataset):
    """The dataset is its own iterator."""

    def __init__(self, items):
        self.items, self.taken = items, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.taken == len(self.items):
            raise StopIteration
        self.taken += 1
        return self.items[self.taken - 1]


STREAMS = [Shared, SharedSource, Replayable, SelfIterating]


def binary_model():
    torch.manual_seed(0)
    return kit.Net(8, 1, nn.BCEWithLogitsLoss(), squeeze=True)


class Rows(L.Callback):
    """Counts the rows of every training batch."""

    def __init__(self):
        self.seen = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen += len(batch[1])


def prefetched(stream, items, batch_size=16):
    """How many items Lightning itself draws from a fresh stream before fit start."""

    class Stop(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            trainer.fit_loop.setup_data()
            raise RuntimeError("stop")

    data = stream(items)
    with pytest.raises(RuntimeError, match="stop"):
        kit.trainer(max_steps=1, callbacks=[Stop()]).fit(
            binary_model(), DataLoader(data, batch_size=batch_size)
        )
    return data.taken


def test_a_shared_source_stream_reaches_training_whole():
    x, y = kit.binary_data(3000, 0.3, 4)
    data = SharedSource(list(zip(x, y, strict=True)))
    guard, counter, snapshot = InitGuard(layer="head", targets=y), Rows(), kit.Snapshot()
    kit.trainer(max_epochs=1, callbacks=[guard, snapshot, counter]).fit(
        binary_model(), DataLoader(data, batch_size=32)
    )
    assert counter.seen == 3000
    assert data.taken == 3000
    rate = float(y.double().mean())
    assert snapshot.at_start["head.bias"].item() == pytest.approx(np.log(rate / (1 - rate)))
    assert guard.report.verdict is Verdict.PASS
    assert "targets given to the callback (`targets=`)" in guard.report.notes


@pytest.mark.parametrize("stream", STREAMS)
def test_a_stream_without_targets_is_refused_untouched(stream):
    _, _, items = rows()
    baseline = prefetched(stream, items)
    for layer, pattern in [
        (None, r"never iterates a stream: .*Pass `targets=` .* and `layer=` .*received no "),
        ("head", r"never iterates a stream: .*Pass `targets=` \(the stream's [^;]*\); received"),
    ]:
        data = stream(items)
        with pytest.raises(InvalidInputError, match=pattern) as raised:
            kit.trainer(max_steps=1, callbacks=[InitGuard(layer=layer)]).fit(
                binary_model(), DataLoader(data, batch_size=16)
            )
        assert stream.__name__ in str(raised.value)
        assert ("`layer=`" in str(raised.value).split(";")[0]) is (layer is None)
        # Only the batch Lightning's own fetcher holds for training was drawn.
        assert data.taken == baseline <= 16


class Empty(IterableDataset):
    def __iter__(self):
        return iter([])


def test_an_empty_stream_asks_for_targets_rather_than_reading_it():
    with pytest.raises(InvalidInputError, match=r"Empty is an IterableDataset.*`targets=`"):
        kit.trainer(max_steps=1, callbacks=[InitGuard(layer="head")]).fit(
            binary_model(), DataLoader(Empty(), batch_size=16)
        )


@pytest.mark.parametrize("stream", STREAMS)
def test_a_stream_with_targets_but_no_layer_needs_one_to_trace(stream):
    _, y, items = rows()
    baseline = prefetched(stream, items)
    data = stream(items)
    pattern = r"never iterates a stream: .*Pass `layer=` .*received targets given, no `layer=`"
    with pytest.raises(InvalidInputError, match=pattern):
        kit.trainer(max_steps=1, callbacks=[InitGuard(targets=y)]).fit(
            binary_model(), DataLoader(data, batch_size=16)
        )
    assert data.taken == baseline

    # Checking alone needs no layer: the check runs on the whole stream.
    data, counter = stream(items), Rows()
    guard = InitGuard(targets=y, set_bias=False)
    kit.trainer(max_epochs=1, callbacks=[guard, counter]).fit(
        binary_model(), DataLoader(data, batch_size=16)
    )
    assert counter.seen == 64
    assert guard.report.verdict is not Verdict.SKIPPED
    assert any(
        "output layer not identified" in n and "never iterates a stream" in n
        for n in guard.report.notes
    )


@pytest.mark.parametrize("stream", STREAMS)
def test_a_stream_traces_with_the_example_input_array(stream):
    _, y, items = rows()
    model = binary_model()
    model.example_input_array = torch.zeros(4, 8)
    data, counter, guard = stream(items), Rows(), InitGuard(targets=y)
    kit.trainer(max_epochs=1, callbacks=[guard, counter]).fit(
        model, DataLoader(data, batch_size=16)
    )
    assert counter.seen == 64
    assert guard.report.layer == "head"
    assert guard.report.bias_set


# --------------------------------------------------------- rate activations


class SoftplusRate(kit.Net):
    def forward(self, x):
        return nn.functional.softplus(self.head(self.body(x)))


def test_softplus_poisson_rate_gets_its_own_bias():
    rng = np.random.default_rng(5)
    y = torch.tensor(rng.poisson(4.0, size=(512, 1)), dtype=torch.float32)
    x = torch.tensor(rng.normal(size=(512, 8)), dtype=torch.float32)
    torch.manual_seed(0)
    loss = nn.PoissonNLLLoss(log_input=False)
    # In float64, so the bias resolves torch's eps of 1e-8.
    model = SoftplusRate(8, 1, loss, hidden=16, zero_head=True).double()
    assert model.head.in_features == 16
    guard = InitGuard(loss_options={"activation": "softplus"})
    report, bias = fit(model, kit.loader(x.double(), y.double(), batch_size=512), guard)

    rate = nn.functional.softplus(bias)
    assert rate.item() == pytest.approx(y.double().mean().item() - loss.eps, rel=1e-12)
    measured = float(loss(rate.expand(512, 1), y.double()))
    assert report.expected_loss == pytest.approx(measured, rel=1e-9)
    assert report.step0_loss == pytest.approx(measured, rel=1e-5)
    assert report.verdict is Verdict.PASS


@pytest.mark.parametrize(
    ("loss", "pattern"),
    [
        (
            nn.PoissonNLLLoss(log_input=False),
            r"PoissonNLLLoss\(log_input=False\).*loss_options=\{'activation': \.\.\.\}: 'exp'"
            r".*'softplus'.*'identity'",
        ),
        (
            nn.GaussianNLLLoss(),
            r"GaussianNLLLoss .*loss_options=\{'variance_activation': \.\.\.\}: 'exp'"
            r".*'softplus'.*'identity'",
        ),
    ],
    ids=["poisson_rate", "gaussian"],
)
def test_an_unrecorded_activation_must_be_given(loss, pattern):
    with pytest.raises(InvalidInputError, match=pattern):
        InitGuard(loss)
    # Found on the module at fit start: the same error, before any bias is written.
    x, y = kit.binary_data(64, 0.5, 0)
    model = kit.Net(8, 2, loss)
    before = model.head.bias.detach().clone()
    with pytest.raises(InvalidInputError, match=pattern):
        kit.trainer(max_steps=1, callbacks=[InitGuard()]).fit(
            model, kit.loader(x, y[:, None].repeat(1, 2))
        )
    assert torch.equal(model.head.bias, before)


# ------------------------------------------------------ models that cannot trace


class NoForward(L.LightningModule):
    """Everything in training_step; no forward."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.head = nn.Linear(16, 1)
        nn.init.zeros_(self.head.weight)
        self.loss = nn.BCEWithLogitsLoss()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss(self.head(self.body(x)).squeeze(-1), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class MaskedForward(NoForward):
    def forward(self, x, mask):
        return self.head(self.body(x * mask))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss(self(x, torch.ones_like(x)).squeeze(-1), y)


@pytest.mark.parametrize(
    ("model", "error"),
    [(NoForward, "NotImplementedError"), (MaskedForward, "TypeError")],
)
def test_an_untraceable_forward_asks_for_layer(model, error):
    x, y = kit.binary_data(256, 0.1, 0)
    pattern = (
        r"output layer could not be traced because the forward pass of "
        + model.__name__
        + r" .*failed \("
        + error
        + r": .*pass `layer=\"name\.of\.final\.module\"`"
    )
    with pytest.raises(InvalidInputError, match=pattern):
        kit.trainer(max_steps=1, callbacks=[InitGuard()]).fit(model(), kit.loader(x, y))

    guard = InitGuard(layer="head")
    report, bias = fit(model(), kit.loader(x, y, batch_size=256), guard)
    rate = float(y.double().mean())
    assert bias.item() == pytest.approx(np.log(rate / (1 - rate)))
    assert report.verdict is Verdict.PASS
    assert report.step0_loss == pytest.approx(report.expected_loss, rel=1e-5)


# ------------------------------------------- probabilities fed to a logits loss


class SoftmaxOut(kit.Net):
    def forward(self, x):
        return nn.functional.softmax(self.head(self.body(x)), dim=1)


def imbalanced_classes(n, seed):
    """Five classes, 80 % of them class 0, with a little signal in the inputs."""
    rng = np.random.default_rng(seed)
    y = rng.choice(5, size=n, p=[0.8, 0.05, 0.05, 0.05, 0.05])
    x = rng.normal(size=(n, 8)) + 0.3 * np.eye(5, 8)[y]
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)


def first_check(model, x, y, batch_size=256):
    guard = InitGuard()
    kit.trainer(max_steps=1, callbacks=[guard]).fit(
        model, kit.loader(x, y, batch_size=batch_size, seed=1)
    )
    return guard.report


SIGMOID_NOTE = "passes through a Sigmoid after the head while the loss (BCEWithLogitsLoss)"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_sigmoid_before_bce_with_logits_fails_naming_it(seed):
    x, y = kit.binary_data(1024, 0.1, seed)
    torch.manual_seed(seed)
    model = kit.Net(8, 1, nn.BCEWithLogitsLoss(), final="sigmoid", squeeze=True)
    with pytest.warns(InitLossWarning, match=r"passed through sigmoid twice"):
        report = first_check(model, x, y)
    assert report.verdict is Verdict.FAIL
    assert any(SIGMOID_NOTE in n for n in report.notes)
    assert report.step0_loss > report.expected_loss

    torch.manual_seed(seed)
    plain = kit.Net(8, 1, nn.BCEWithLogitsLoss(), squeeze=True)
    report = first_check(plain, x, y)
    assert report.verdict is Verdict.PASS
    assert not any("after the head" in n for n in report.notes)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_softmax_before_cross_entropy_fails_on_a_majority_class(seed):
    x, y = imbalanced_classes(1024, seed)
    torch.manual_seed(seed)
    with pytest.warns(InitLossWarning, match=r"passed through softmax twice"):
        report = first_check(SoftmaxOut(8, 5, nn.CrossEntropyLoss()), x, y)
    assert report.verdict is Verdict.FAIL
    assert any(
        "passes through a Softmax after the head while the loss (CrossEntropyLoss)" in n
        for n in report.notes
    )

    torch.manual_seed(seed)
    report = first_check(kit.Net(8, 5, nn.CrossEntropyLoss()), x, y)
    assert report.verdict is Verdict.PASS


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bce_after_a_sigmoid_is_what_it_expects(seed):
    x, y = kit.binary_data(1024, 0.1, seed)
    torch.manual_seed(seed)
    report = first_check(kit.Net(8, 1, nn.BCELoss(), final="sigmoid", squeeze=True), x, y)
    assert report.verdict is Verdict.PASS
    assert not any("after the head" in n for n in report.notes)


def test_a_core_loss_name_counts_as_taking_logits():
    x, y = kit.binary_data(1024, 0.1, 0)
    torch.manual_seed(0)
    model = kit.Net(8, 1, nn.BCEWithLogitsLoss(), final="sigmoid", squeeze=True)
    guard = InitGuard("binary_cross_entropy")
    with pytest.warns(InitLossWarning, match=r"twice"):
        kit.trainer(max_steps=1, callbacks=[guard]).fit(model, kit.loader(x, y, batch_size=256))
    assert any("passes through a Sigmoid after the head" in n for n in guard.report.notes)
