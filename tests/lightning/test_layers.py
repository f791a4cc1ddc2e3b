"""Finding the output layer from the computation, and reading and writing its bias."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")

import ig_lightning_kit as kit  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

import initguard  # noqa: E402
from initguard import InvalidInputError, Verdict  # noqa: E402
from initguard.lightning import InitGuard  # noqa: E402
from initguard.lightning._layers import find_output_layer  # noqa: E402


class Module(L.LightningModule):
    """A LightningModule around any network; the loss is a submodule."""

    def __init__(self, net, loss, forward=None):
        super().__init__()
        self.net = net
        self.loss = loss
        self._forward = forward

    def forward(self, x):
        return self._forward(self, x) if self._forward else self.net(x)

    def training_step(self, batch, batch_idx):
        return self.loss(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def data(n=256, rate=0.3, seed=0, dim=8):
    return kit.loader(*kit.binary_data(n, rate, seed, dim), batch_size=64)


def run(model, guard, loader=None, **trainer_args):
    trainer = kit.trainer(**{"max_steps": 1, "callbacks": [guard], **trainer_args})
    trainer.fit(model, loader if loader is not None else data())
    return guard.report


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_head_found_from_computation_not_registration_order():
    torch.manual_seed(0)
    net = nn.ModuleDict(
        {"head": nn.Linear(16, 1), "body": nn.Linear(8, 16), "aux": nn.Linear(16, 3)}
    )

    def forward(self, x):
        h = torch.relu(self.net["body"](x))
        self.net["aux"](h)  # computed but not part of the output
        return self.net["head"](h).squeeze(-1)

    model = Module(net, nn.BCEWithLogitsLoss(), forward)
    report = run(model, InitGuard())
    assert report.layer == "net.head" and report.bias_set
    assert any("traced from the forward pass" in n for n in report.notes)


def test_head_found_through_a_final_sigmoid_module():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1), nn.Flatten(0), nn.Sigmoid())
    model = Module(net, nn.BCELoss())
    guard, snapshot = InitGuard(), kit.Snapshot()

    class FirstTargets(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                self.y = batch[1].double().clone()

    first = FirstTargets()
    report = run(model, guard, callbacks=[guard, snapshot, first])
    assert report.layer == "net.2" and report.verdict is Verdict.PASS
    rate = float(data().dataset.tensors[1].double().mean())
    # The bias lives before the sigmoid: the logit of the positive rate.
    bias = snapshot.at_start["net.2.bias"].double()
    assert bias.item() == pytest.approx(np.log(rate / (1 - rate)), rel=1e-6)
    # The expectation is torch's BCELoss at the planned bias (written in float32) on the
    # first batch's targets.
    measured = float(nn.BCELoss()(torch.sigmoid(bias).expand_as(first.y), first.y))
    assert report.expected_loss == pytest.approx(measured, rel=1e-6)


class Squash(nn.Module):
    """A body, a head, and what ``after`` does to the head's output."""

    def __init__(self, after, before=None):
        super().__init__()
        self.body, self.head = nn.Linear(8, 16), nn.Linear(16, 3)
        self.after, self.before = after, before or (lambda h: h)

    def forward(self, x):
        return self.after(self.head(self.before(self.body(x))))


@pytest.mark.parametrize(
    ("model", "squashed_by"),
    [
        (Squash(nn.Sigmoid()), ("sigmoid",)),
        (Squash(nn.Softmax(dim=1)), ("softmax",)),
        (Squash(lambda z: torch.softmax(z, dim=1) * 1.0), ("softmax",)),
        (Squash(lambda z: torch.sigmoid(torch.sigmoid(z))), ("sigmoid",)),
        (Squash(lambda z: torch.log_softmax(z, dim=1)), ()),
        (Squash(nn.Identity(), before=torch.sigmoid), ()),
    ],
    ids=["Sigmoid", "Softmax", "F.softmax", "sigmoid_twice", "log_softmax", "sigmoid_before"],
)
def test_tracing_records_a_sigmoid_or_softmax_after_the_head(model, squashed_by):
    torch.manual_seed(0)
    x = torch.randn(4, 8)
    head = find_output_layer(model, lambda: model(x))
    assert head.name == "head"
    assert head.squashed_by == squashed_by


def test_several_heads_feeding_the_output_are_listed():
    net = nn.ModuleDict({"a": nn.Linear(8, 1), "b": nn.Linear(8, 1)})
    model = Module(net, nn.BCEWithLogitsLoss(), lambda s, x: (s.net["a"](x) + s.net["b"](x))[:, 0])
    with pytest.raises(InvalidInputError, match=r"Several layers.*'net\.a', 'net\.b'.*`layer=`"):
        run(model, InitGuard())
    report = run(Module(net, nn.BCEWithLogitsLoss(), model._forward), InitGuard(layer="net.b"))
    assert report.layer == "net.b" and report.bias_set


def test_parameter_applied_outside_a_module_is_not_mistaken_for_the_head():
    net = nn.ModuleDict({"body": nn.Linear(8, 4)})
    model = Module(net, nn.BCEWithLogitsLoss(), lambda s, x: (s.net["body"](x) @ s.w)[:, 0])
    model.w = nn.Parameter(torch.ones(4, 1))
    with pytest.raises(InvalidInputError, match=r"parameter used outside any module.*`layer=`"):
        run(model, InitGuard())


def test_unknown_layer_name_lists_the_candidates():
    model = kit.Net(8, 1, nn.BCEWithLogitsLoss(), squeeze=True)
    with pytest.raises(InvalidInputError, match=r"received 'heads'.*'head', 'body\.0'"):
        run(model, InitGuard(layer="heads"))


def test_forward_returning_a_tuple_asks_for_layer():
    net = nn.Linear(8, 1)
    model = Module(net, nn.BCEWithLogitsLoss(), lambda s, x: (s.net(x)[:, 0], x))
    with pytest.raises(InvalidInputError, match=r"returned tuple.*pass `layer=`"):
        run(model, InitGuard())


@pytest.mark.parametrize("set_bias", [True, False])
def test_head_without_bias(set_bias):
    torch.manual_seed(0)
    model = kit.Net(8, 1, nn.BCEWithLogitsLoss(), squeeze=True, head_bias=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    guard = InitGuard(set_bias=set_bias)
    if set_bias:
        with pytest.raises(InvalidInputError, match=r"'head' .*has no bias.*set_bias=False"):
            run(model, guard)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    else:
        with pytest.warns(initguard.InitLossWarning, match="bias was not set"):
            run(model, guard, loader=data(rate=0.05, n=1024))
        assert guard.report.verdict is Verdict.FAIL and not guard.report.bias_set
        assert "bias not written: set_bias=False (check only)" in guard.report.notes
    assert shapes(model) == {k: tuple(v.shape) for k, v in before.items()}


class TiedLM(L.LightningModule):
    """A bigram language model whose output layer shares the embedding's weight."""

    def __init__(self, vocab=12, dim=8, tied=True):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab, bias=not tied)
        if tied:
            self.out.weight = self.embed.weight
        else:
            nn.init.zeros_(self.out.weight)
        self.loss = nn.CrossEntropyLoss()

    def forward(self, tokens):
        return self.out(self.embed(tokens))

    def training_step(self, batch, batch_idx):
        tokens, following = batch
        return self.loss(self(tokens).transpose(1, 2), following)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def token_data(vocab=12, seed=0):
    rng = np.random.default_rng(seed)
    probabilities = np.arange(vocab, 0, -1) ** 2.0
    text = rng.choice(vocab, size=(64, 17), p=probabilities / probabilities.sum())
    text[:, 0] = 0
    return kit.loader(torch.tensor(text[:, :-1]), torch.tensor(text[:, 1:]), batch_size=64)


def test_weight_tied_head_errors_or_checks_only():
    torch.manual_seed(0)
    model = TiedLM()
    keys = shapes(model)
    with pytest.raises(InvalidInputError, match=r"'out' \(Linear\) has no bias.*tied"):
        run(model, InitGuard(), loader=token_data())

    guard = InitGuard(set_bias=False)
    # Tied random embeddings start far from the unigram loss: the check says so.
    with pytest.warns(initguard.InitLossWarning):
        run(model, guard, loader=token_data())
    assert guard.report.layer == "out" and not guard.report.bias_set
    assert shapes(model) == keys


def test_sequence_head_gets_unigram_log_frequencies():
    torch.manual_seed(0)
    model = TiedLM(tied=False)
    loader = token_data()
    snapshot = kit.Snapshot()
    guard = InitGuard()
    run(model, guard, loader, callbacks=[guard, snapshot])

    following = loader.dataset.tensors[1].reshape(-1).numpy()
    frequencies = np.bincount(following, minlength=12) / following.size
    assert guard.report.verdict is Verdict.PASS
    bias = snapshot.at_start["out.bias"].double().numpy()
    shifted = bias - np.log(np.exp(bias).sum())
    assert np.allclose(shifted, np.log(frequencies), atol=1e-6)
    # Zero output weights: the measured loss is exactly the unigram entropy.
    assert guard.report.step0_loss == pytest.approx(guard.report.expected_loss, rel=1e-5)


class Segmenter(L.LightningModule):
    def __init__(self, classes=3):
        super().__init__()
        self.body = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Conv2d(4, classes, 1)
        nn.init.zeros_(self.head.weight)
        self.loss = nn.CrossEntropyLoss(ignore_index=255)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))

    def training_step(self, batch, batch_idx):
        return self.loss(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_segmentation_map_pixels_are_samples_and_ignored_pixels_left_out():
    rng = np.random.default_rng(0)
    masks = rng.choice(3, size=(16, 6, 6), p=[0.7, 0.2, 0.1])
    masks[:, 0, :] = 255
    images = rng.normal(size=(16, 1, 6, 6)).astype(np.float32)
    guard = InitGuard()
    torch.manual_seed(0)
    model = Segmenter()
    run(model, guard, kit.loader(images, torch.tensor(masks), batch_size=16))

    kept = masks[masks != 255]
    plan = initguard.plan(kept, "cross_entropy", num_classes=3)
    assert guard.report.expected_loss == pytest.approx(plan.expected_loss, rel=1e-12)
    assert guard.report.step0_loss == pytest.approx(plan.expected_loss, rel=1e-5)


class BufferBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 8))
        self.register_buffer("bias", torch.zeros(1))

    def forward(self, x):
        return x @ self.weight.T + self.bias


@pytest.mark.parametrize("allow_buffer", [False, True])
def test_bias_in_a_buffer_is_written_only_when_allowed(allow_buffer):
    model = Module(BufferBias(), nn.BCEWithLogitsLoss(), lambda s, x: s.net(x)[:, 0])
    guard = InitGuard(allow_buffer=allow_buffer)
    if not allow_buffer:
        with pytest.raises(InvalidInputError, match=r"is a buffer.*allow_buffer=True"):
            run(model, guard)
        assert model.net.bias.item() == 0.0
        return
    run(model, guard)
    rate = float(data().dataset.tensors[1].mean())
    assert model.net.bias.item() == pytest.approx(np.log(rate / (1 - rate)), rel=1e-6)
    assert guard.report.verdict is Verdict.PASS


def test_more_classes_in_the_data_than_outputs_fails_before_any_write():
    x, y = kit.digits()
    torch.manual_seed(0)
    model = kit.Net(64, 4, nn.CrossEntropyLoss())
    before = model.head.bias.detach().clone()
    with pytest.raises(
        InvalidInputError,
        match=r"layer 'head', num_classes=4 from the layer's outputs.*< num_classes=4; received",
    ):
        run(model, InitGuard(), kit.loader(x, y))
    assert torch.equal(model.head.bias, before)


def test_binary_outputs_must_match_the_target_columns():
    rng = np.random.default_rng(0)
    y = torch.tensor((rng.random((128, 3)) < 0.3).astype(np.float32))
    x = torch.tensor(rng.normal(size=(128, 8)).astype(np.float32))
    model = kit.Net(8, 2, nn.BCEWithLogitsLoss())
    before = model.head.bias.detach().clone()
    with pytest.raises(InvalidInputError, match=r"layer has 2 outputs but the targets.*imply 3"):
        run(model, InitGuard(), kit.loader(x, y))
    assert torch.equal(model.head.bias, before)


# Lightning points out the module left in evaluation mode on purpose.
@pytest.mark.filterwarnings("ignore:Found 1 module.s. in eval mode")
def test_tracing_forward_leaves_batch_norm_and_module_modes_alone():
    class WithNorm(kit.Net):
        def __init__(self):
            super().__init__(8, 1, nn.BCEWithLogitsLoss(), squeeze=True)
            self.body = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU())
            self.body[1].eval()  # frozen statistics, as when fine-tuning

    class Look(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            self.mean = pl_module.body[1].running_mean.clone()
            self.frozen_mode = pl_module.body[1].training

    model, look = WithNorm(), Look()
    guard = InitGuard()
    run(model, guard, callbacks=[guard, look])
    assert torch.equal(look.mean, torch.zeros(32))
    assert look.frozen_mode is False and guard.report.layer == "head"


class DictRows(Dataset):
    """Rows as dicts with no exposed targets: only a pass over the loader reads them."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"features": self.x[i], "label": self.y[i]}


def test_example_input_array_traces_a_model_fed_dict_batches():
    x, y = kit.binary_data(256, 0.3, 0)

    class DictNet(kit.Net):
        def training_step(self, batch, batch_idx):
            return self.loss(self(batch["features"]), batch["label"])

    torch.manual_seed(0)
    model = DictNet(8, 1, nn.BCEWithLogitsLoss(), squeeze=True)
    with pytest.raises(
        InvalidInputError, match=r"inputs in a batch of type dict.*example_input_array"
    ):
        run(model, InitGuard(), DataLoader(DictRows(x, y), batch_size=64))

    model.example_input_array = torch.zeros(2, 8)
    guard = InitGuard()
    run(model, guard, DataLoader(DictRows(x, y), batch_size=64))
    assert guard.report.layer == "head" and guard.report.verdict is Verdict.PASS
    assert any("pass over the training DataLoader (4 batches" in n for n in guard.report.notes)
