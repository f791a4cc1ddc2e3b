"""Every bad input the classification core can receive: a named, explained error."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import initguard
from initguard import InvalidInputError

NAN = float("nan")
INF = float("inf")


@pytest.mark.parametrize(
    ("targets", "loss", "options", "match"),
    [
        (None, "cross_entropy", {}, r"`targets` must be array-like; received None"),
        ([], "cross_entropy", {}, r"`targets` must not be empty; received shape \(0,\)"),
        (np.zeros((3, 0)), "binary_cross_entropy", {}, "`targets` must not be empty"),
        (["a", "b"], "cross_entropy", {}, "`targets` must hold numbers .* dtype <U1"),
        ([object()], "cross_entropy", {}, "`targets` must hold numbers .* dtype object"),
        ([1 + 2j], "binary_cross_entropy", {}, "`targets` must hold numbers .* complex128"),
        ([[0, 1], [2]], "cross_entropy", {}, "`targets` could not be read as an array"),
        ({"a": 1}, "cross_entropy", {}, "`targets` must hold numbers"),
        (
            [0.0, NAN],
            "cross_entropy",
            {},
            r"`targets` must be finite; received nan at index \(1,\)",
        ),
        ([[0.0, INF]], "binary_cross_entropy", {}, r"`targets` must be finite; received inf"),
        ([0, -3], "cross_entropy", {}, r"must be >= 0 \(or equal ignore_index=-100\); received -3"),
        ([0, -100], "cross_entropy", {"ignore_index": None}, "must be >= 0"),
        ([0, 3], "cross_entropy", {"num_classes": 3}, r"must be < num_classes=3; received 3"),
        ([0, 10**9], "cross_entropy", {}, "unless `num_classes` is given; received 1000000000"),
        (np.array([0, 2**63 + 5], dtype=np.uint64), "cross_entropy", {}, "unless `num_classes`"),
        ([0.0, 1e300], "cross_entropy", {}, "unless `num_classes` is given"),
        ([0.0, 1.5], "cross_entropy", {}, "Class-index `targets` must be whole numbers"),
        ([[0.2, 0.8]], "cross_entropy", {"num_classes": 3}, "must be whole numbers"),
        ([[0.2, 1.8]], "cross_entropy", {}, r"Probability `targets` must lie in \[0, 1\]"),
        ([[0.5, 0.5]], "cross_entropy", {"class_axis": 3}, r"`class_axis`=3 is outside `targets`"),
        ([0, 1, 1], "kl_div", {}, "`targets` must be probability rows"),
        ([[0.5, 0.5]], "kl_div", {"num_classes": 3}, "must have num_classes=3 entries"),
        ([[0.1, -0.2]], "kl_div", {"log_target": True}, "Log-probability `targets` must be <= 0"),
        ([0, 2], "binary_cross_entropy", {}, r"Binary `targets` must lie in \[0, 1\]; received 2"),
        ([-0.1], "sigmoid_focal", {}, r"Binary `targets` must lie in \[0, 1\]"),
        ([0.0, 0.3], "sigmoid_focal", {}, "`targets` of loss 'sigmoid_focal' must be 0 or 1"),
        ([-100, -100], "cross_entropy", {}, "no usable sample .* every target ignored"),
        ([7, 7], "softmax_focal", {"ignore_index": 7}, "every target ignored"),
        ([0, 1], "cross_entropy", {"weight": [0, 0]}, "`targets` give every class zero mass"),
        ([[0.0, 0.0]], "kl_div", {}, "`targets` give every class zero mass"),
        ([0, 1], "softmax_focal", {"alpha": 0.0}, "zero mass after `alpha`"),
        ([0, 1, 2], "cross_entropy", {"bias": [0.0, 1.0]}, r"`bias` must have one entry .* \(3\)"),
        ([0, 1], "cross_entropy", {"bias": [0.0, NAN]}, "`bias` must be finite"),
        ([0, 1], "cross_entropy", {"bias": [1e308, -1e308]}, "is not finite .* `targets` or"),
        ([0, 1], "cross_entropy", {"weight": ["a", "b"]}, "`weight` must hold numbers"),
        ([0, 1], "cross_entropy", {"weight": [[1], [2, 3]]}, "`weight` could not be read"),
        ([0, 1], "cross_entropy", {"label_smoothing": -0.1}, r"`label_smoothing` must be .*-0.1"),
        ([0, 1], "cross_entropy", {"label_smoothing": NAN}, "`label_smoothing` must be a number"),
        ([0, 1], "binary_cross_entropy", {"pos_weight": [1, 2, 3]}, "`pos_weight` must have one"),
        ([0, 1], "binary_cross_entropy", {"weight": -1.0}, "`weight` must be >= 0"),
        ([0, 1], "binary_cross_entropy", {"prior": [0.5, 1.0]}, r"`prior` must lie in \(0, 1\)"),
        ([0, 1], "cross_entropy", {"reduction": "none"}, "`reduction` must be one of"),
        ([0, 1], "cross_entropy", {"smoothing": 0.1}, r"Unknown option\(s\) \['smoothing'\]"),
        ([0, 1], "binary", {}, "`loss` must be one of"),
        ([0, 1], 42, {}, "`loss` must be one of"),
    ],
)
def test_bad_input_is_named(targets: Any, loss: Any, options: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        initguard.plan(targets, loss, **options)


def test_absurd_widths_and_weights_are_refused_before_any_allocation() -> None:
    wide = np.broadcast_to(0.0, (1, (1 << 24) + 1))  # a view: no 134 MB copy
    with pytest.raises(InvalidInputError, match=r"at most 16777216 classes along `class_axis`"):
        initguard.plan(wide, "kl_div")
    with pytest.raises(InvalidInputError, match=r"focal-loss class weights .* must be positive"):
        initguard.plan([0, 1], "softmax_focal", alpha=1e308)


def test_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="`targets`"):
        initguard.plan([0.5], "cross_entropy")


def test_long_option_vectors_are_shortened_in_messages() -> None:
    weight = [1.0] * 1000 + [-1.0]
    with pytest.raises(InvalidInputError, match=r"\[1.0, 1.0, .*, \.\.\.\]") as info:
        initguard.plan([0, 1], "cross_entropy", weight=weight)
    assert len(str(info.value)) < 200


def test_bool_and_integer_like_targets_are_accepted() -> None:
    assert initguard.plan([True, False, True], "binary_cross_entropy").bias.shape == (1,)
    assert initguard.plan(np.array([0, 1], np.uint8), "cross_entropy").bias.shape == (2,)
    assert initguard.plan(np.array([0.0, 2.0]), "cross_entropy").bias.shape == (3,)
    assert initguard.plan(np.float32([[0.25, 0.75]]), "cross_entropy").bias.shape == (2,)
