"""Classification plans from the core alone: the CASES.md numbers and each option.

The same numbers are measured by the real torch and Keras losses in
tests/exactness; here they are pinned through ``initguard.plan`` itself.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

import initguard
from initguard import InvalidInputError


def _labels(counts: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


# ----------------------------------------------------------------------------
# CASES.md


def test_case1_torch_class_weights() -> None:
    plan = initguard.plan(_labels([900, 100]), "cross_entropy", weight=[1.0, 9.0])
    assert plan.bias[0] == pytest.approx(plan.bias[1], abs=1e-12)
    assert plan.expected_loss == pytest.approx(0.693147, abs=5e-7)
    assert plan.loss_at(np.log([0.9, 0.1])) == pytest.approx(1.203973, abs=5e-7)


def test_case1_keras_class_weight() -> None:
    plan = initguard.plan(_labels([900, 100]), "cross_entropy", class_weight={0: 1, 1: 9})
    assert plan.bias[0] == pytest.approx(plan.bias[1], abs=1e-12)
    assert plan.expected_loss == pytest.approx(1.247665, abs=5e-7)
    assert plan.loss_at(np.log([0.9, 0.1])) == pytest.approx(2.167151, abs=5e-7)


def test_case2_label_smoothing() -> None:
    plan = initguard.plan(_labels([800, 150, 50]), "cross_entropy", label_smoothing=0.1)
    np.testing.assert_allclose(np.exp(plan.bias), [0.753333, 0.168333, 0.078333], atol=5e-7)
    np.testing.assert_allclose(plan.bias, [-0.283247, -1.781809, -2.546782], atol=5e-7)
    assert plan.expected_loss == pytest.approx(0.712816, abs=5e-7)
    assert plan.loss_at(np.log([0.8, 0.15, 0.05])) == pytest.approx(0.722116, abs=5e-7)
    entropy = -(0.8 * math.log(0.8) + 0.15 * math.log(0.15) + 0.05 * math.log(0.05))
    assert entropy == pytest.approx(0.612869, abs=5e-7)
    assert plan.expected_loss - entropy == pytest.approx(0.099947, abs=5e-6)


def test_case3_pos_weight() -> None:
    targets = np.r_[np.ones(100), np.zeros(300)]
    plan = initguard.plan(targets, "binary_cross_entropy", pos_weight=3.0)
    assert plan.bias[0] == pytest.approx(0.0, abs=1e-12)
    assert plan.expected_loss == pytest.approx(1.039721, abs=5e-7)


def test_case4_many_binary_outputs() -> None:
    rates = np.array([0.5, 0.2, 0.1, 0.05, 0.01])
    targets = (np.arange(1000)[:, None] < rates * 1000).astype(np.float64)
    plan = initguard.plan(targets, "binary_cross_entropy")
    np.testing.assert_allclose(
        plan.bias, [0.0, -1.386294, -2.197225, -2.944439, -4.595120], atol=5e-7
    )
    assert plan.expected_loss == pytest.approx(0.354630, abs=5e-7)
    assert plan.zero_bias_loss == pytest.approx(0.693147, abs=5e-7)

    # A loss that sums over the labels of one sample.
    summed = initguard.plan(targets, "binary_cross_entropy", reduction="sum")
    expected, zero, _ = summed.batch_expectation(1)
    assert expected == pytest.approx(1.773149, abs=5e-7)
    assert zero == pytest.approx(3.465736, abs=5e-7)


def test_case5_never_seen_class() -> None:
    counts = [5, 3, 2, 0]
    plan = initguard.plan(_labels(counts), "cross_entropy", num_classes=4)
    assert plan.expected_loss == pytest.approx(1.029653, abs=5e-7)
    assert plan.zero_bias_loss == pytest.approx(math.log(4), rel=1e-12)
    assert plan.zero_bias_loss == pytest.approx(1.386294, abs=5e-7)
    assert np.all(np.isfinite(plan.bias))
    assert any("never occur" in note and "(3)" in note for note in plan.notes)

    smooth = initguard.plan(_labels(counts), "cross_entropy", num_classes=4, label_smoothing=0.1)
    np.testing.assert_allclose(smooth.bias, [-0.744440, -1.220780, -1.584745, -3.688879], atol=5e-7)
    assert smooth.expected_loss == pytest.approx(1.130834, abs=5e-7)
    assert smooth.notes == ()


def test_case5_padded_vocabulary_reference() -> None:
    # LOSSES.md: the uniform value for GPT-2's 50,257 tokens; CASES.md: a
    # padded vocabulary's uniform reference uses the 50,304 logits.
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50257, size=(8, 128))
    real = initguard.plan(tokens, "cross_entropy", num_classes=50257)
    padded = initguard.plan(tokens, "cross_entropy", num_classes=50304)
    assert real.zero_bias_loss == pytest.approx(10.8249, abs=5e-5)
    assert padded.zero_bias_loss == pytest.approx(10.825840, abs=5e-7)
    unseen = 50304 - np.unique(tokens).size
    assert padded.notes[0].startswith(f"{unseen} class(es) never occur")
    # Together the unseen logits hold at most 1e-8 of the probability.
    assert np.exp(padded.bias)[np.bincount(tokens.ravel(), minlength=50304) == 0].sum() <= 1e-8


def test_case6_everything_ignored() -> None:
    with pytest.raises(InvalidInputError, match="every target ignored"):
        initguard.plan(np.full((4, 16), -100), "cross_entropy", num_classes=10)
    with pytest.raises(InvalidInputError, match="every target ignored"):
        initguard.plan([255, 255, 255], "cross_entropy", ignore_index=255)


# ----------------------------------------------------------------------------
# Dense and sequence targets.


def test_sequences_and_maps_count_every_position() -> None:
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 7, size=(4, 50))
    tokens[:, 40:] = -100  # padding
    plan = initguard.plan(tokens, "cross_entropy", num_classes=7)
    flat = initguard.plan(tokens[tokens != -100], "cross_entropy", num_classes=7)
    np.testing.assert_array_equal(plan.bias, flat.bias)
    assert plan.samples == 160
    assert plan.units_per_row == 40

    maps = rng.dirichlet(np.ones(3), size=(2, 5, 6))  # Keras: [batch, h, w, classes]
    keras_plan = initguard.plan(maps, "cross_entropy", class_axis=-1)
    torch_plan = initguard.plan(np.moveaxis(maps, -1, 1), "cross_entropy", class_axis=1)
    np.testing.assert_allclose(keras_plan.bias, torch_plan.bias, rtol=1e-12)
    assert keras_plan.units_per_row == torch_plan.units_per_row == 30


def test_gpt2_vocabulary_is_fast_and_memory_light() -> None:
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 50257, size=(256, 1024))
    start = time.perf_counter()
    plan = initguard.plan(tokens, "cross_entropy", num_classes=50304, label_smoothing=0.1)
    assert time.perf_counter() - start < 2.0
    assert plan.bias.shape == (50304,)
    assert plan.units_per_row == 1024
    assert plan.expected_loss < plan.zero_bias_loss


# ----------------------------------------------------------------------------
# Binary cross-entropy options.


def test_prior_sets_the_bias_and_the_loss_follows() -> None:
    targets = np.r_[np.ones(10), np.zeros(990)]
    plan = initguard.plan(targets, "binary_cross_entropy", prior=0.01)
    assert plan.bias[0] == pytest.approx(-math.log(99.0), rel=1e-12)
    assert plan.expected_loss == pytest.approx(plan.loss_at(plan.bias), rel=1e-15)
    assert "prior" in plan.notes[0]

    per_output = initguard.plan(
        np.c_[targets, 1 - targets], "binary_cross_entropy", prior=[0.2, 0.7]
    )
    np.testing.assert_allclose(1 / (1 + np.exp(-per_output.bias)), [0.2, 0.7])


def test_always_zero_or_one_outputs_are_clipped_with_a_note() -> None:
    targets = np.c_[np.zeros(50), np.ones(50), np.r_[np.ones(25), np.zeros(25)]]
    plan = initguard.plan(targets, "binary_cross_entropy")
    assert np.all(np.isfinite(plan.bias))
    assert plan.bias[0] < -18 and plan.bias[1] > 18 and plan.bias[2] == 0
    assert "[0, 1]" in plan.notes[0]


def test_dense_binary_maps_take_outputs_from_class_axis() -> None:
    rng = np.random.default_rng(3)
    torch_maps = (rng.random((3, 2, 5, 5)) < [[[0.1]], [[0.6]]]).astype(float)
    plan = initguard.plan(torch_maps, "binary_cross_entropy")
    keras_plan = initguard.plan(
        np.moveaxis(torch_maps, 1, -1), "binary_cross_entropy", class_axis=-1
    )
    np.testing.assert_array_equal(plan.bias, keras_plan.bias)
    assert plan.bias.shape == (2,)
    assert plan.units_per_row == 25


# ----------------------------------------------------------------------------
# KL divergence and the focal losses.


def test_kl_div_log_targets_and_reductions() -> None:
    rng = np.random.default_rng(4)
    targets = rng.dirichlet(np.ones(6), size=(3, 10))  # [batch, positions, classes]
    targets = np.moveaxis(targets, -1, 1)
    plain = initguard.plan(targets, "kl_div", reduction="batchmean")
    logged = initguard.plan(np.log(targets), "kl_div", reduction="batchmean", log_target=True)
    np.testing.assert_allclose(plain.bias, logged.bias, rtol=1e-12)
    assert plain.expected_loss == pytest.approx(logged.expected_loss, rel=1e-12)

    mean = initguard.plan(targets, "kl_div", reduction="mean")
    per_position = initguard.plan(targets, "kl_div", reduction="sum_over_batch_size")
    assert mean.expected_loss == pytest.approx(per_position.expected_loss / 6, rel=1e-12)
    assert plain.expected_loss == pytest.approx(per_position.expected_loss * 10, rel=1e-12)
    assert mean.reduction == "mean" and plain.reduction == "batchmean"


def test_focal_losses_without_focus_are_cross_entropies() -> None:
    rng = np.random.default_rng(5)
    binary = (rng.random((300, 3)) < [0.3, 0.1, 0.6]).astype(float)
    focal = initguard.plan(binary, "sigmoid_focal", alpha=None, gamma=0.0)
    bce = initguard.plan(binary, "binary_cross_entropy")
    np.testing.assert_allclose(focal.bias, bce.bias, atol=1e-9)
    assert focal.expected_loss == pytest.approx(bce.expected_loss, rel=1e-12)

    labels = rng.integers(0, 4, size=400)
    focal = initguard.plan(labels, "softmax_focal", alpha=1.0, gamma=0.0, label_smoothing=0.1)
    ce = initguard.plan(labels, "cross_entropy", label_smoothing=0.1)
    np.testing.assert_allclose(focal.bias, ce.bias, atol=1e-12)
    assert focal.expected_loss == pytest.approx(ce.expected_loss, rel=1e-9)


def test_sigmoid_focal_optimum_is_not_the_retinanet_prior() -> None:
    targets = (np.arange(1000) < 10).astype(float)  # 1 % positives
    plan = initguard.plan(targets, "sigmoid_focal")
    assert abs(plan.bias[0] - -math.log(99)) > 0.1
    assert plan.loss_at(plan.bias) < plan.loss_at(np.array([-math.log(99)]))
    for step in (-1e-3, 1e-3):
        assert plan.loss_at(plan.bias + step) > plan.expected_loss


def test_softmax_focal_optimum_is_stationary_on_the_simplex() -> None:
    labels = _labels([700, 200, 80, 20])
    plan = initguard.plan(labels, "softmax_focal", gamma=3.0)
    rng = np.random.default_rng(6)
    for _ in range(20):
        assert plan.loss_at(plan.bias + rng.normal(0, 1e-3, 4)) >= plan.expected_loss - 1e-15
    # Focusing flattens the optimum relative to the class frequencies.
    p = np.exp(plan.bias)
    assert p[0] < 0.7 and p[3] > 0.02


def test_softmax_focal_leaves_ignored_labels_out() -> None:
    labels = np.array([[0, 1, 9, 2], [9, 9, 1, 1]])
    plan = initguard.plan(labels, "softmax_focal", num_classes=3, ignore_index=9)
    kept = initguard.plan(labels[labels != 9], "softmax_focal", num_classes=3)
    np.testing.assert_array_equal(plan.bias, kept.bias)
    assert plan.samples == 5 and plan.units_per_row == 2.5


def test_softmax_focal_large_vocabulary_is_quick() -> None:
    rng = np.random.default_rng(7)
    tokens = rng.zipf(1.3, size=20000) % 50304
    start = time.perf_counter()
    plan = initguard.plan(tokens, "softmax_focal", num_classes=50304, label_smoothing=0.1)
    assert time.perf_counter() - start < 5.0
    assert np.exp(plan.bias).sum() == pytest.approx(1.0, rel=1e-9)


# ----------------------------------------------------------------------------
# Option validation, one message per rule.


@pytest.mark.parametrize(
    ("loss", "options", "match"),
    [
        ("cross_entropy", {"num_classes": 0}, "`num_classes` must be an integer >= 1"),
        ("cross_entropy", {"num_classes": 2.5}, "`num_classes` must be an integer"),
        ("cross_entropy", {"num_classes": 1 << 30}, "`num_classes` must be an integer"),
        ("cross_entropy", {"weight": [1, -1]}, "`weight` must be >= 0"),
        ("cross_entropy", {"weight": [1, 2], "class_weight": [1, 2]}, "not both"),
        ("cross_entropy", {"class_weight": {0: 1, 2: 3}}, "`class_weight` keys must be 0..C-1"),
        ("cross_entropy", {"label_smoothing": 1.5}, "`label_smoothing` must be a number in"),
        ("cross_entropy", {"label_smoothing": "0.1"}, "`label_smoothing` must be a number in"),
        ("cross_entropy", {"ignore_index": 1.5}, "`ignore_index` must be an integer or None"),
        ("cross_entropy", {"class_axis": "last"}, "`class_axis` must be an integer"),
        ("cross_entropy", {"reduction": "batchmean"}, "`reduction` must be one of"),
        ("cross_entropy", {"gamma": 2.0}, r"Unknown option\(s\) \['gamma'\]"),
        ("binary_cross_entropy", {"pos_weight": 0.0}, "`pos_weight` must be > 0"),
        ("binary_cross_entropy", {"prior": 1.0}, r"`prior` must lie in \(0, 1\)"),
        ("binary_cross_entropy", {"prior": 0.0}, "`prior` must be > 0"),
        ("binary_cross_entropy", {"prior": 0.1, "bias": [0.0]}, "Give `prior` or `bias`"),
        ("kl_div", {"reduction": "none"}, "`reduction` must be one of"),
        ("kl_div", {"log_target": 1}, "`log_target` must be True or False"),
        ("kl_div", {"epsilon": 1.0}, r"`epsilon` must be a number in \[0, 1\)"),
        ("sigmoid_focal", {"alpha": 1.5}, "`alpha` must be a number in"),
        ("sigmoid_focal", {"gamma": -1.0}, r"`gamma` must be a number in \[0, 100\]"),
        ("sigmoid_focal", {"gamma": float("nan")}, "`gamma` must be a number"),
        ("softmax_focal", {"alpha": [0.5, -0.5]}, "`alpha` must be >= 0"),
        ("softmax_focal", {"alpha": [1, 2, 3], "num_classes": 2}, "`alpha` must have one entry"),
        ("nonsense", {}, "`loss` must be one of"),
    ],
)
def test_invalid_options_are_named(loss: str, options: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        initguard.plan([0, 1, 1], loss, **options)


def test_option_values_checked_against_the_targets() -> None:
    with pytest.raises(InvalidInputError, match=r"`weight` must have one entry per output \(3\)"):
        initguard.plan(np.eye(3), "cross_entropy", weight=[1.0, 2.0])
    with pytest.raises(InvalidInputError, match=r"`prior` must have one entry per output \(2\)"):
        initguard.plan(np.zeros((4, 2)), "binary_cross_entropy", prior=[0.1, 0.2, 0.3])
    with pytest.raises(InvalidInputError, match="every class zero mass"):
        initguard.plan([0, 0, 1], "cross_entropy", weight=[0.0, 0.0])
    # Smoothing gives the weighted third class mass, but torch's mean is 0/0.
    with pytest.raises(InvalidInputError, match="summed class `weight`"):
        initguard.plan([0, 0, 1], "cross_entropy", weight=[0, 0, 1], label_smoothing=0.1)
    with pytest.raises(InvalidInputError, match="`class_weight` with soft"):
        initguard.plan([[0.3, 0.7]], "cross_entropy", class_weight=[1.0, 2.0])


def test_make_loss_rejects_unknown_options_on_a_description() -> None:
    spec = initguard.make_loss("sigmoid_focal", gamma=1.0)
    assert initguard.make_loss(spec, alpha=None).alpha is None
    with pytest.raises(InvalidInputError, match=r"Unknown option\(s\) \['beta'\]"):
        initguard.make_loss(spec, beta=1.0)


def test_class_weight_dicts_of_many_classes() -> None:
    weights = {k: 1.0 + k for k in reversed(range(12))}
    plan = initguard.plan(np.arange(12), "cross_entropy", class_weight=weights)
    np.testing.assert_allclose(np.exp(plan.bias), np.arange(1, 13) / 78)


def test_float_class_indices_are_read_as_labels_given_num_classes() -> None:
    sequences = np.array([[0.0, 2.0, 3.0], [1.0, 1.0, 4.0]])
    plan = initguard.plan(sequences, "cross_entropy", num_classes=5)
    assert plan.samples == 6 and plan.units_per_row == 3
    with pytest.raises(InvalidInputError, match="need `num_classes` or an integer dtype"):
        initguard.plan(sequences, "cross_entropy")


def test_weight_length_sets_the_width_of_class_indices() -> None:
    plan = initguard.plan([0, 1, 1], "cross_entropy", weight=[1.0, 1.0, 2.0, 2.0])
    assert plan.bias.shape == (4,)


def test_a_zero_weight_class_is_named_as_such():
    plan = initguard.plan([0, 1, 1, 2], "cross_entropy", weight=[1.0, 1.0, 0.0])

    assert plan.notes[0].startswith("1 class(es) never occur in the targets, or have weight 0")
    assert np.isfinite(plan.bias).all()
