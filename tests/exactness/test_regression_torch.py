"""Regression plans against the real torch losses, in float64.

A model whose output is the plan's bias (after its activation) for every
sample must show ``plan.expected_loss`` under the real torch loss module,
and no nearby constant may do better. The quantile (pinball) loss has no
torch module: it is checked against a torch computation of its definition.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import initguard

torch = pytest.importorskip("torch")

REL = 1e-6


def _activate(name: str, z: Any) -> Any:
    if name == "exp":
        return torch.exp(z)
    if name == "softplus":
        return torch.nn.functional.softplus(z)
    return z


def _module(loss: str, options: dict[str, Any], reduction: str) -> Any:
    if loss == "mse":
        return torch.nn.MSELoss(reduction=reduction)
    if loss == "l1":
        return torch.nn.L1Loss(reduction=reduction)
    if loss == "huber":
        return torch.nn.HuberLoss(reduction=reduction, delta=options.get("delta", 1.0))
    if loss == "smooth_l1":
        return torch.nn.SmoothL1Loss(reduction=reduction, beta=options.get("beta", 1.0))
    if loss == "poisson_nll":
        return torch.nn.PoissonNLLLoss(
            log_input=options.get("log_input", True),
            full=options.get("full", False),
            eps=options.get("eps", 1e-8),
            reduction=reduction,
        )
    if loss == "gaussian_nll":
        return torch.nn.GaussianNLLLoss(
            full=options.get("full", False), eps=options.get("eps", 1e-6), reduction=reduction
        )
    raise AssertionError(loss)


def _pinball(q: float, reduction: str) -> Any:
    # Neither torch nor Keras ships a quantile loss: this is its definition,
    # max(q r, (q - 1) r) with r = y - prediction, in torch.
    def loss(prediction: Any, target: Any) -> Any:
        residual = target - prediction
        values = torch.maximum(q * residual, (q - 1) * residual)
        if reduction == "none":
            return values
        return values.mean() if reduction == "mean" else values.sum()

    return loss


def torch_loss(
    loss: str, options: dict[str, Any], bias: np.ndarray, targets: np.ndarray, reduction: str
) -> Any:
    """The real torch loss of a constant output (``bias`` after its activation)."""
    y = torch.as_tensor(targets, dtype=torch.float64)
    k = 1 if y.ndim == 1 else y.shape[1]
    b = torch.as_tensor(np.asarray(bias, dtype=np.float64))

    def constant(z: Any) -> Any:
        return z.reshape(1, k).expand(y.shape[0], k).reshape(y.shape)

    if loss == "gaussian_nll":
        assert b.numel() == 2 * k
        variance = _activate(options.get("variance_activation", "exp"), b[k:])
        return _module(loss, options, reduction)(constant(b[:k]), y, constant(variance))
    if loss == "poisson_nll" and not options.get("log_input", True):
        prediction = constant(_activate(options.get("activation", "exp"), b))
        return _module(loss, options, reduction)(prediction, y)
    if loss == "quantile":
        return _pinball(options.get("quantile", 0.5), reduction)(constant(b), y)
    return _module(loss, options, reduction)(constant(b), y)


def _close(actual: float, expected: float, rel: float = REL, scale: float = 1.0) -> bool:
    return abs(actual - expected) <= rel * abs(expected) + 1e-12 * scale


def _positive_head(loss: str, options: dict[str, Any], k: int) -> np.ndarray:
    """Which bias entries feed an identity output that must stay positive."""
    mask = np.zeros(2 * k if loss == "gaussian_nll" else k, dtype=bool)
    if loss == "gaussian_nll" and options.get("variance_activation") == "identity":
        mask[k:] = True
    if loss == "poisson_nll" and not options.get("log_input", True):
        mask[:] = options.get("activation") == "identity"
    return mask


def assert_matches_torch(loss: str, options: dict[str, Any], targets: np.ndarray) -> None:
    """Every number of the plan against the real torch loss."""
    targets = np.asarray(targets, dtype=np.float64)
    plan = initguard.plan(targets, loss, **options)
    n = targets.shape[0]
    k = 1 if targets.ndim == 1 else targets.shape[1]
    scale = 1.0 + float(np.max(np.abs(targets))) ** 2

    assert np.all(np.isfinite(plan.bias))
    expected = float(torch_loss(loss, options, plan.bias, targets, "mean"))
    zero = float(torch_loss(loss, options, np.zeros_like(plan.bias), targets, "mean"))
    assert _close(plan.expected_loss, expected, scale=scale), (plan.expected_loss, expected)
    assert _close(plan.zero_bias_loss, zero, scale=scale), (plan.zero_bias_loss, zero)

    # Summed: the batch expectation scales the mean by the elements in the batch.
    sum_plan = initguard.plan(targets, loss, reduction="sum", **options)
    total = float(torch_loss(loss, options, plan.bias, targets, "sum"))
    total_zero = float(torch_loss(loss, options, np.zeros_like(plan.bias), targets, "sum"))
    batch_expected, batch_zero, _ = sum_plan.batch_expectation(n)
    np.testing.assert_array_equal(sum_plan.bias, plan.bias)
    assert _close(batch_expected, total, scale=scale * n * k), (batch_expected, total)
    assert _close(batch_zero, total_zero, scale=scale * n * k), (batch_zero, total_zero)

    # Spread: per-sample losses are the row means of torch's unreduced loss.
    per_element = torch_loss(loss, options, plan.bias, targets, "none")
    per_row = per_element.reshape(n, -1).mean(dim=1)
    std = float(per_row.std(correction=0))
    assert abs(plan.loss_std - std) <= REL * std + 1e-9 * scale, (plan.loss_std, std)

    # Optimality: no nearby constant has a lower torch loss (a floored
    # output is not an optimum: the loss keeps falling towards -inf).
    if any("floored" in note for note in plan.notes):
        return
    positive = _positive_head(loss, options, k)
    spread = float(np.std(targets)) + 1e-12
    for fraction in (1e-2, 1e-5):
        steps = np.where(
            positive, fraction * np.abs(plan.bias), fraction * (np.abs(plan.bias) + spread)
        )
        for j in range(plan.bias.size):
            for sign in (-1.0, 1.0):
                moved = plan.bias.copy()
                moved[j] += sign * steps[j]
                nearby = float(torch_loss(loss, options, moved, targets, "mean"))
                assert nearby >= expected - 1e-12 * (abs(expected) + 1.0), (j, sign, nearby)


# Targets: large means, heavy tails, ties, skew and tiny samples.
def _real_targets(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if kind == "large_mean":
        return rng.normal(2.0e5, 5.0e4, shape)
    if kind == "heavy_tail":
        return rng.standard_cauchy(shape) * 10.0
    if kind == "ties":
        return rng.integers(0, 4, shape).astype(np.float64)
    if kind == "skewed":
        return rng.lognormal(0.0, 1.5, shape)
    if kind == "constant":
        return np.full(shape, -3.5)
    raise AssertionError(kind)


def _count_targets(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if kind == "counts":
        return rng.poisson(3.5, shape).astype(np.float64)
    if kind == "large_counts":
        return rng.poisson(2.0e4, shape).astype(np.float64)
    if kind == "sparse":
        return rng.poisson(0.3, shape).astype(np.float64)
    if kind == "heavy_tail":
        return rng.zipf(1.8, shape).astype(np.float64)
    if kind == "rates":
        return rng.lognormal(0.0, 1.0, shape)
    if kind == "all_zero":
        return np.zeros(shape)
    raise AssertionError(kind)


def _seed(*parts: object) -> int:
    # Python's own hash of a string changes from run to run.
    return zlib.crc32(repr(parts).encode())


REAL_KINDS = ("large_mean", "heavy_tail", "ties", "skewed", "constant")
COUNT_KINDS = ("counts", "large_counts", "sparse", "heavy_tail", "rates", "all_zero")
SHAPES = ((64,), (64, 3), (1,), (2,), (2, 2), (7, 1))

LOCATION_CASES = [
    ("mse", {}),
    ("l1", {}),
    ("huber", {"delta": 1.0}),
    ("huber", {"delta": 0.05}),
    ("huber", {"delta": 2.0e4}),
    ("smooth_l1", {"beta": 1.0}),
    ("smooth_l1", {"beta": 0.0}),
    ("smooth_l1", {"beta": 3.0e3}),
    ("quantile", {"quantile": 0.5}),
    ("quantile", {"quantile": 0.1}),
    ("quantile", {"quantile": 0.9}),
    ("quantile", {"quantile": 0.25}),
    ("gaussian_nll", {}),
    ("gaussian_nll", {"full": True}),
    ("gaussian_nll", {"variance_activation": "softplus"}),
    ("gaussian_nll", {"variance_activation": "identity", "full": True}),
    ("gaussian_nll", {"eps": 1e-3, "variance_activation": "identity"}),
]

POISSON_CASES = [
    ("poisson_nll", {}),
    ("poisson_nll", {"full": True}),
    ("poisson_nll", {"log_input": False}),
    ("poisson_nll", {"log_input": False, "full": True, "activation": "softplus"}),
    ("poisson_nll", {"log_input": False, "activation": "identity"}),
    ("poisson_nll", {"log_input": False, "eps": 1e-3, "activation": "softplus"}),
    ("poisson_nll", {"log_input": False, "eps": 0.5, "activation": "exp", "full": True}),
]


def _label(case: tuple[str, dict[str, Any]]) -> str:
    loss, options = case
    return loss + "".join(f"-{key}={value}" for key, value in options.items())


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", REAL_KINDS)
@pytest.mark.parametrize("case", LOCATION_CASES, ids=_label)
def test_location_losses_match_torch(
    case: tuple[str, dict[str, Any]], kind: str, shape: tuple[int, ...]
) -> None:
    loss, options = case
    rng = np.random.default_rng(_seed(kind, shape))
    assert_matches_torch(loss, options, _real_targets(kind, shape, rng))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", COUNT_KINDS)
@pytest.mark.parametrize("case", POISSON_CASES, ids=_label)
def test_poisson_matches_torch(
    case: tuple[str, dict[str, Any]], kind: str, shape: tuple[int, ...]
) -> None:
    loss, options = case
    rng = np.random.default_rng(_seed(kind, shape))
    assert_matches_torch(loss, options, _count_targets(kind, shape, rng))


@pytest.mark.parametrize(
    ("loss", "options", "targets"),
    [
        ("mse", {}, [100000.0, 150000.0, 200000.0, 250000.0, 300000.0]),
        ("l1", {}, [100000.0, 150000.0, 200000.0, 250000.0, 300000.0]),
        ("huber", {"delta": 1.0}, [0.0, 0.0, 0.0, 0.0, 10.0]),
    ],
)
def test_field_cases_match_torch(loss: str, options: dict[str, Any], targets: list[float]) -> None:
    assert_matches_torch(loss, options, np.array(targets))


def test_torch_clamps_gaussian_variance_where_the_plan_floors_it() -> None:
    # Constant targets: the best variance is 0, which torch clamps to eps.
    targets = np.full((5, 2), 4.0)
    plan = initguard.plan(targets, "gaussian_nll", eps=1e-4, variance_activation="identity")

    np.testing.assert_allclose(plan.bias, [4.0, 4.0, 1e-4, 1e-4])
    assert any("clamps" in note for note in plan.notes)
    below = plan.bias.copy()
    below[2:] = 1e-9
    assert float(
        torch_loss(
            "gaussian_nll", {"variance_activation": "identity", "eps": 1e-4}, below, targets, "mean"
        )
    ) == pytest.approx(plan.expected_loss, rel=1e-12)
    assert_matches_torch("gaussian_nll", {"eps": 1e-4, "variance_activation": "identity"}, targets)


def test_huber_root_on_an_interval_is_its_middle_under_torch() -> None:
    # Every constant in [1, 9] has the same torch Huber loss on [0, 10].
    targets = np.array([0.0, 10.0])
    plan = initguard.plan(targets, "huber", delta=1.0)

    assert plan.bias.tolist() == [5.0]
    flat = [
        float(torch_loss("huber", {"delta": 1.0}, np.array([b]), targets, "mean"))
        for b in (1.0, 5.0, 9.0)
    ]
    assert flat == pytest.approx([plan.expected_loss] * 3, rel=1e-12)


# Property-based: random targets and options, every plan finite and exact.
_values = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, 1.0, -2.5, 1e5]),
)


@st.composite
def _location_problem(draw: st.DrawFn) -> tuple[str, dict[str, Any], np.ndarray]:
    loss = draw(st.sampled_from(["mse", "l1", "huber", "smooth_l1", "quantile"]))
    options: dict[str, Any] = {}
    if loss == "huber":
        options["delta"] = draw(st.floats(1e-3, 1e4))
    elif loss == "smooth_l1":
        options["beta"] = draw(st.one_of(st.just(0.0), st.floats(1e-3, 1e4)))
    elif loss == "quantile":
        options["quantile"] = draw(st.floats(0.01, 0.99))
    rows = draw(st.integers(1, 25))
    k = draw(st.sampled_from([None, 1, 2]))
    size = rows * (k or 1)
    values = np.array(draw(st.lists(_values, min_size=size, max_size=size)))
    return loss, options, values.reshape((rows,) if k is None else (rows, k))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_location_problem())
def test_random_location_problems_match_torch(
    problem: tuple[str, dict[str, Any], np.ndarray],
) -> None:
    loss, options, targets = problem
    assert_matches_torch(loss, options, targets)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    counts=st.lists(st.integers(0, 10_000), min_size=1, max_size=20),
    log_input=st.booleans(),
    full=st.booleans(),
    activation=st.sampled_from(["exp", "softplus", "identity"]),
)
def test_random_poisson_problems_match_torch(
    counts: list[int], log_input: bool, full: bool, activation: str
) -> None:
    options = {"log_input": log_input, "full": full, "activation": activation}
    assert_matches_torch("poisson_nll", options, np.array(counts, dtype=np.float64))
