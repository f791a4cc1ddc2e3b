"""Classification plans against the real torch losses.

Every plan is evaluated by the torch loss object itself, in float64, on
logits equal to ``plan.bias`` at every sample (every position for dense
targets): that value must be ``plan.expected_loss``, a zero logit must give
``plan.zero_bias_loss``, no small perturbation of the bias may do better,
and the spread of torch's per-sample losses must be ``plan.loss_std``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from exactness_kit import RTOL, assert_close, check_optimal, draw_labels

import initguard

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

SEEDS = (0, 1)


def _tensor(array: Any) -> Any:
    return torch.as_tensor(np.asarray(array), dtype=torch.float64)


def _constant_logits(bias: np.ndarray, shape: tuple[int, ...], axis: int = 1) -> Any:
    """Logits of ``shape`` (classes along ``axis``) equal to ``bias`` everywhere."""
    view = [1] * len(shape)
    view[axis] = -1
    return _tensor(bias).reshape(view).expand(shape).clone()


def _soft(classes: int, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Probability rows (classes along axis 1) drawn from a Dirichlet."""
    rows = rng.dirichlet(np.linspace(0.3, 3.0, classes), size=shape)
    return np.moveaxis(rows, -1, 1)


def _ratio_std(losses: np.ndarray, weights: np.ndarray) -> float:
    """Per-sample spread of sum(losses) / sum(weights), as ``Moments`` defines it."""
    mean = losses.sum() / weights.sum()
    return float(np.sqrt(np.mean((losses - mean * weights) ** 2)) / weights.mean())


# ----------------------------------------------------------------------------
# Softmax cross-entropy over class indices (CrossEntropyLoss and NLLLoss).

INDEX_SHAPES = {"flat": (600,), "sequence": (12, 40), "map": (6, 9, 11)}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["balanced", "imbalanced", "unseen"])
@pytest.mark.parametrize("shape_name", list(INDEX_SHAPES))
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"weight": "random"},
        {"label_smoothing": 0.15},
        {"weight": "random", "label_smoothing": 0.2},
        {"ignore_index": 1},
        {"weight": "random", "ignore_index": -100, "label_smoothing": 0.05},
        {"reduction": "sum", "weight": "random"},
    ],
    ids=["plain", "weight", "smooth", "weight_smooth", "ignore_1", "all", "sum"],
)
def test_cross_entropy_indices(
    seed: int, kind: str, shape_name: str, options: dict[str, Any]
) -> None:
    rng = np.random.default_rng(seed)
    classes = 5
    shape = INDEX_SHAPES[shape_name]
    targets = draw_labels(kind, classes, shape, rng)
    options = dict(options)
    if options.get("weight") == "random":
        options["weight"] = rng.uniform(0.2, 3.0, classes)
    if options.get("ignore_index") == -100:
        targets = np.where(rng.random(shape) < 0.2, -100, targets)
    plan = initguard.plan(targets, "cross_entropy", num_classes=classes, **options)

    torch_options = {k: v for k, v in options.items() if k != "weight"}
    weight = options.get("weight")
    if weight is not None:
        torch_options["weight"] = _tensor(weight)
    criterion = nn.CrossEntropyLoss(**torch_options)
    target = torch.as_tensor(targets)
    logits_shape = (shape[0], classes, *shape[1:])

    def loss_at(bias: np.ndarray) -> float:
        return float(criterion(_constant_logits(bias, logits_shape), target))

    expected = plan.batch_expectation(shape[0])[0]
    assert_close(loss_at(plan.bias), expected)
    assert_close(loss_at(np.zeros(classes)), plan.batch_expectation(shape[0])[1])
    check_optimal(loss_at, plan.bias, rng)
    assert plan.units_per_row == pytest.approx(plan.samples / shape[0])

    # The spread of torch's own per-sample losses (ignored positions left out).
    per_sample = nn.CrossEntropyLoss(**{**torch_options, "reduction": "none"})(
        _constant_logits(plan.bias, logits_shape), target
    ).numpy()
    kept = targets != options.get("ignore_index", -100)
    losses = per_sample[kept]
    if options.get("reduction") == "sum":
        assert_close(float(losses.std()), plan.sum_std)
    elif weight is not None:
        assert_close(_ratio_std(losses, np.asarray(weight)[targets[kept]]), plan.loss_std)
    else:
        assert_close(float(losses.std()), plan.loss_std)


@pytest.mark.parametrize("kind", ["balanced", "imbalanced", "unseen"])
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_after_log_softmax(kind: str, weighted: bool) -> None:
    rng = np.random.default_rng(7)
    classes = 6
    targets = draw_labels(kind, classes, (500,), rng)
    targets[::9] = 3  # a fixed ignore value among real labels
    weight = rng.uniform(0.5, 2.0, classes) if weighted else None
    plan = initguard.plan(
        targets, "cross_entropy", num_classes=classes, weight=weight, ignore_index=3
    )
    criterion = nn.NLLLoss(weight=None if weight is None else _tensor(weight), ignore_index=3)

    def loss_at(bias: np.ndarray) -> float:
        logits = _constant_logits(bias, (500, classes))
        return float(criterion(F.log_softmax(logits, dim=1), torch.as_tensor(targets)))

    assert_close(loss_at(plan.bias), plan.expected_loss)
    assert_close(loss_at(np.zeros(classes)), plan.zero_bias_loss)
    check_optimal(loss_at, plan.bias, rng)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize(
    "options",
    [{}, {"weight": "random"}, {"label_smoothing": 0.1}, {"reduction": "sum"}],
    ids=["plain", "weight", "smooth", "sum"],
)
def test_cross_entropy_probabilities(seed: int, dense: bool, options: dict[str, Any]) -> None:
    rng = np.random.default_rng(seed)
    classes = 4
    targets = _soft(classes, (8, 30) if dense else (300,), rng)
    options = dict(options)
    if options.get("weight") == "random":
        options["weight"] = rng.uniform(0.2, 3.0, classes)
    plan = initguard.plan(targets, "cross_entropy", **options)

    torch_options = dict(options)
    if "weight" in options:
        torch_options["weight"] = _tensor(options["weight"])
    criterion = nn.CrossEntropyLoss(**torch_options)

    def loss_at(bias: np.ndarray) -> float:
        return float(criterion(_constant_logits(bias, targets.shape), _tensor(targets)))

    rows = targets.shape[0]
    assert_close(loss_at(plan.bias), plan.batch_expectation(rows)[0])
    assert_close(loss_at(np.zeros(classes)), plan.batch_expectation(rows)[1])
    check_optimal(loss_at, plan.bias, rng)

    per_sample = nn.CrossEntropyLoss(**{**torch_options, "reduction": "none"})(
        _constant_logits(plan.bias, targets.shape), _tensor(targets)
    )
    spread = plan.sum_std if options.get("reduction") == "sum" else plan.loss_std
    assert_close(float(per_sample.numpy().std()), spread)


def test_gpt2_vocabulary_is_exact_and_fast() -> None:
    # A padded GPT-2 vocabulary: 50,257 tokens, 50,304 logits; 16 x 128 tokens,
    # measured one sequence at a time ([1, 50304, 128] logits, 51 MB).
    rng = np.random.default_rng(3)
    zipf = 1.0 / np.arange(1, 50258) ** 1.1
    tokens = rng.choice(50257, size=(16, 128), p=zipf / zipf.sum())
    plan = initguard.plan(tokens, "cross_entropy", num_classes=50304)
    assert plan.zero_bias_loss == pytest.approx(math.log(50304), rel=1e-12)

    logits = _constant_logits(plan.bias, (1, 50304, 128))
    criterion = nn.CrossEntropyLoss(reduction="sum")
    total = sum(float(criterion(logits, torch.as_tensor(row[None]))) for row in tokens)
    assert_close(total / tokens.size, plan.expected_loss)


# ----------------------------------------------------------------------------
# Sigmoid losses.


def _binary_targets(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    outputs = shape[1] if len(shape) > 1 else 1
    rates = {
        "balanced": np.full(outputs, 0.5),
        "imbalanced": np.geomspace(0.4, 0.01, outputs),
        "unseen": np.r_[np.linspace(0.1, 0.6, outputs - 1), 0.0],
    }[kind]
    axis_rates = rates.reshape([-1] + [1] * (len(shape) - 2)) if len(shape) > 1 else rates
    return (rng.random(shape) < axis_rates).astype(np.float64)


def _binary_logits(bias: np.ndarray, shape: tuple[int, ...]) -> Any:
    if len(shape) == 1:
        return _tensor(np.full(shape, bias[0]))
    return _constant_logits(bias, shape)


BINARY_SHAPES = {"one": (400,), "multi": (400, 4), "map": (5, 4, 6, 7)}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["balanced", "imbalanced", "unseen", "soft"])
@pytest.mark.parametrize("shape_name", list(BINARY_SHAPES))
@pytest.mark.parametrize(
    "options",
    [{}, {"pos_weight": "random"}, {"weight": "random"}, {"pos_weight": 3.0, "reduction": "sum"}],
    ids=["plain", "pos_weight", "weight", "sum"],
)
def test_bce_with_logits(seed: int, kind: str, shape_name: str, options: dict[str, Any]) -> None:
    rng = np.random.default_rng(seed)
    shape = BINARY_SHAPES[shape_name]
    if kind == "soft":
        targets = rng.beta(0.5, 2.0, size=shape)
    elif len(shape) == 1:
        rate = {"balanced": 0.5, "imbalanced": 0.05, "unseen": 0.0}[kind]
        targets = (rng.random(shape) < rate).astype(np.float64)
    else:
        targets = _binary_targets(kind, shape, rng)
    outputs = shape[1] if len(shape) > 1 else 1
    options = dict(options)
    for name in ("pos_weight", "weight"):
        if options.get(name) == "random":
            options[name] = rng.uniform(0.3, 4.0, outputs)
    plan = initguard.plan(targets, "binary_cross_entropy", **options)

    # torch broadcasts per-output factors along the last axis: give them the
    # output axis's place for dense maps.
    view = (-1, 1, 1) if len(shape) == 4 else (-1,)
    torch_options = {
        k: (_tensor(v).reshape(view) if k != "reduction" else v) for k, v in options.items()
    }
    criterion = nn.BCEWithLogitsLoss(**torch_options)

    def loss_at(bias: np.ndarray) -> float:
        return float(criterion(_binary_logits(bias, shape), _tensor(targets)))

    assert_close(loss_at(plan.bias), plan.batch_expectation(shape[0])[0])
    assert_close(loss_at(np.zeros(outputs)), plan.batch_expectation(shape[0])[1])
    if kind != "unseen":  # an always-0 output is clipped, not optimal
        check_optimal(loss_at, plan.bias, rng)

    per_element = nn.BCEWithLogitsLoss(**{**torch_options, "reduction": "none"})(
        _binary_logits(plan.bias, shape), _tensor(targets)
    ).numpy()
    per_unit = np.moveaxis(per_element, 1, -1).mean(axis=-1) if len(shape) > 1 else per_element
    spread = plan.sum_std if options.get("reduction") == "sum" else plan.loss_std
    scale = outputs if options.get("reduction") == "sum" else 1
    assert_close(float(per_unit.std()) * scale, spread)


@pytest.mark.parametrize("kind", ["balanced", "imbalanced", "soft"])
def test_bce_after_sigmoid_and_multilabel_soft_margin(kind: str) -> None:
    rng = np.random.default_rng(11)
    shape = (300, 5)
    targets = rng.random(shape) if kind == "soft" else _binary_targets(kind, shape, rng)
    weight = rng.uniform(0.5, 2.0, 5)
    plan = initguard.plan(targets, "binary_cross_entropy", weight=weight)
    logits = _constant_logits(plan.bias, shape)
    zero = torch.zeros(shape, dtype=torch.float64)

    bce = nn.BCELoss(weight=_tensor(weight))
    assert_close(float(bce(torch.sigmoid(logits), _tensor(targets))), plan.expected_loss)
    assert_close(float(bce(torch.sigmoid(zero), _tensor(targets))), plan.zero_bias_loss)
    margin = nn.MultiLabelSoftMarginLoss(weight=_tensor(weight))
    assert_close(float(margin(logits, _tensor(targets))), plan.expected_loss)
    assert_close(float(margin(zero, _tensor(targets))), plan.zero_bias_loss)


@pytest.mark.parametrize("prior", [0.01, [0.3, 0.05, 0.5]])
def test_bce_prior_is_written_and_evaluated(prior: Any) -> None:
    rng = np.random.default_rng(5)
    targets = _binary_targets("imbalanced", (300, 3), rng)
    plan = initguard.plan(targets, "binary_cross_entropy", prior=prior, pos_weight=2.0)
    expected_bias = np.log(np.broadcast_to(prior, (3,))) - np.log1p(-np.asarray(prior))
    np.testing.assert_allclose(plan.bias, expected_bias, rtol=1e-12)
    np.testing.assert_allclose(1 / (1 + np.exp(-plan.bias)), np.broadcast_to(prior, (3,)))
    criterion = nn.BCEWithLogitsLoss(pos_weight=_tensor([2.0] * 3))
    logits = _constant_logits(plan.bias, (300, 3))
    assert_close(float(criterion(logits, _tensor(targets))), plan.expected_loss)
    assert "prior" in plan.notes[0]


# ----------------------------------------------------------------------------
# KL divergence.


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum"])
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("zeros", [False, True])
def test_kl_div(seed: int, reduction: str, log_target: bool, dense: bool, zeros: bool) -> None:
    rng = np.random.default_rng(seed)
    classes = 5
    targets = _soft(classes, (6, 25) if dense else (200,), rng)
    if zeros and not log_target:
        # Targets with exact zeros, and a class that never has any mass.
        targets[:, -1] = 0.0
        targets = targets / targets.sum(axis=1, keepdims=True)
    given = np.log(targets) if log_target else targets
    plan = initguard.plan(given, "kl_div", reduction=reduction, log_target=log_target)
    criterion = nn.KLDivLoss(reduction=reduction, log_target=log_target)

    def loss_at(bias: np.ndarray) -> float:
        logits = _constant_logits(bias, targets.shape)
        if reduction != "mean":
            return float(criterion(F.log_softmax(logits, dim=1), _tensor(given)))
        with pytest.warns(UserWarning, match="batchmean"):
            return float(criterion(F.log_softmax(logits, dim=1), _tensor(given)))

    rows = targets.shape[0]
    assert_close(loss_at(plan.bias), plan.batch_expectation(rows)[0])
    assert_close(loss_at(np.zeros(classes)), plan.batch_expectation(rows)[1])
    if not (zeros and not log_target):
        check_optimal(loss_at, plan.bias, rng)

    per_element = nn.KLDivLoss(reduction="none", log_target=log_target)(
        F.log_softmax(_constant_logits(plan.bias, targets.shape), dim=1), _tensor(given)
    ).numpy()
    per_sample = per_element.sum(axis=1)
    scale = {"mean": 1 / classes, "batchmean": plan.units_per_row, "sum": 1.0}[reduction]
    spread = plan.sum_std if reduction == "sum" else plan.loss_std
    assert_close(float(per_sample.std()) * scale, spread)


# ----------------------------------------------------------------------------
# Sigmoid focal loss: torchvision's published definition written in torch ops
# (torchvision itself is not a dependency).


def _torchvision_focal(
    logits: Any, targets: Any, alpha: float | None, gamma: float, reduction: str = "mean"
) -> Any:
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha is not None:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return {"mean": loss.mean, "sum": loss.sum, "none": lambda: loss}[reduction]()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["balanced", "imbalanced", "unseen"])
@pytest.mark.parametrize("alpha", [None, 0.25, 0.9])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_sigmoid_focal(seed: int, kind: str, alpha: float | None, gamma: float) -> None:
    rng = np.random.default_rng(seed)
    shape = (500, 4)
    targets = _binary_targets(kind, shape, rng)
    plan = initguard.plan(targets, "sigmoid_focal", alpha=alpha, gamma=gamma)

    def loss_at(bias: np.ndarray) -> float:
        logits = _constant_logits(bias, shape)
        return float(_torchvision_focal(logits, _tensor(targets), alpha, gamma))

    assert_close(loss_at(plan.bias), plan.expected_loss)
    assert_close(loss_at(np.zeros(4)), plan.zero_bias_loss)
    live = slice(0, 3) if kind == "unseen" else slice(0, 4)
    for _ in range(4):
        nudged = plan.bias.copy()
        nudged[live] += rng.normal(0.0, 0.05, size=nudged[live].shape)
        assert loss_at(nudged) >= loss_at(plan.bias) - 1e-12
    # The optimum, not the paper's hand-picked prior of 0.01.
    assert not np.allclose(plan.bias[live], -math.log(99.0), atol=1e-3)

    per_element = _torchvision_focal(
        _constant_logits(plan.bias, shape), _tensor(targets), alpha, gamma, "none"
    )
    assert_close(float(per_element.numpy().mean(axis=1).std()), plan.loss_std)


def test_sigmoid_focal_dense_map() -> None:
    rng = np.random.default_rng(2)
    targets = _binary_targets("imbalanced", (4, 3, 8, 8), rng)
    plan = initguard.plan(targets, "sigmoid_focal", alpha=0.25, gamma=2.0, reduction="sum")
    logits = _constant_logits(plan.bias, targets.shape)
    measured = float(_torchvision_focal(logits, _tensor(targets), 0.25, 2.0, "sum"))
    assert_close(measured, plan.batch_expectation(4)[0])
    assert plan.units_per_row == 64


# ----------------------------------------------------------------------------
# CASES.md, measured by torch.


def test_cases_torch_values() -> None:
    labels = np.array([0] * 900 + [1] * 100)
    weighted = nn.CrossEntropyLoss(weight=_tensor([1.0, 9.0]))
    plan = initguard.plan(labels, "cross_entropy", weight=[1.0, 9.0])
    log_freq = np.log([0.9, 0.1])
    at = lambda b: float(weighted(_constant_logits(b, (1000, 2)), torch.as_tensor(labels)))  # noqa: E731
    assert at(plan.bias) == pytest.approx(0.693147, abs=5e-7)
    assert at(log_freq) == pytest.approx(1.203973, abs=5e-7)

    labels = np.array([0] * 800 + [1] * 150 + [2] * 50)
    smooth = nn.CrossEntropyLoss(label_smoothing=0.1)
    plan = initguard.plan(labels, "cross_entropy", label_smoothing=0.1)
    at = lambda b: float(smooth(_constant_logits(b, (1000, 3)), torch.as_tensor(labels)))  # noqa: E731
    assert at(plan.bias) == pytest.approx(0.712816, abs=5e-7)
    assert at(np.log([0.8, 0.15, 0.05])) == pytest.approx(0.722116, abs=5e-7)

    labels = np.array([1.0] * 100 + [0.0] * 300)
    plan = initguard.plan(labels, "binary_cross_entropy", pos_weight=3.0)
    bce = nn.BCEWithLogitsLoss(pos_weight=_tensor([3.0]))
    assert float(bce(_tensor(np.full(400, plan.bias[0])), _tensor(labels))) == pytest.approx(
        1.039721, abs=5e-7
    )

    rates = np.array([0.5, 0.2, 0.1, 0.05, 0.01])
    targets = (np.arange(1000)[:, None] < rates * 1000).astype(np.float64)
    plan = initguard.plan(targets, "binary_cross_entropy", reduction="sum")
    logits = _constant_logits(plan.bias, (1000, 5))
    zero = torch.zeros(1000, 5, dtype=torch.float64)
    mean_bce, sum_bce = nn.BCEWithLogitsLoss(), nn.BCEWithLogitsLoss(reduction="sum")
    assert float(mean_bce(logits, _tensor(targets))) == pytest.approx(0.354630, abs=5e-7)
    assert float(mean_bce(zero, _tensor(targets))) == pytest.approx(0.693147, abs=5e-7)
    # Summed over the labels of a sample (here over all 1000 samples, then / 1000).
    per_sample_sum = float(sum_bce(logits, _tensor(targets))) / 1000
    assert per_sample_sum == pytest.approx(1.773149, abs=5e-7)
    assert per_sample_sum == pytest.approx(plan.batch_expectation(1)[0], rel=RTOL)
    assert float(sum_bce(zero, _tensor(targets))) / 1000 == pytest.approx(3.465736, abs=5e-7)
    wide = initguard.plan(
        np.zeros((4, 92)) + (np.arange(4) % 2)[:, None],
        "binary_cross_entropy",
        reduction="sum",
        bias=np.zeros(92),
    )
    summed = float(sum_bce(torch.zeros(1, 92, dtype=torch.float64), torch.ones(1, 92)))
    assert summed == pytest.approx(63.77, abs=5e-3)
    assert summed == pytest.approx(wide.batch_expectation(1)[0], rel=RTOL)

    vocab = np.array([0] * 5 + [1] * 3 + [2] * 2)
    for smoothing, value in ((0.0, 1.029653), (0.1, 1.130834)):
        plan = initguard.plan(vocab, "cross_entropy", num_classes=4, label_smoothing=smoothing)
        criterion = nn.CrossEntropyLoss(label_smoothing=smoothing)
        logits = _constant_logits(plan.bias, (10, 4))
        assert float(criterion(logits, torch.as_tensor(vocab))) == pytest.approx(value, abs=5e-7)

    padded = initguard.plan(np.arange(8), "cross_entropy", num_classes=50304)
    uniform = float(
        nn.CrossEntropyLoss()(torch.zeros(8, 50304, dtype=torch.float64), torch.arange(8))
    )
    assert uniform == pytest.approx(10.825840, abs=5e-7)
    assert uniform == pytest.approx(padded.zero_bias_loss, rel=1e-12)

    # Case 6: torch's mean over an all-ignored batch is 0/0.
    everything_ignored = torch.full((8,), -100)
    assert math.isnan(float(nn.CrossEntropyLoss()(torch.zeros(8, 3), everything_ignored)))
