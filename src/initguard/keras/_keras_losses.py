"""Reading a Keras loss (string, function or object) into the core's terms."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import numpy as np

from .._errors import InvalidInputError
from .._loss_base import LOSSES, LossSpec

# How the model's output must relate to the loss's input.
SOFTMAX = "softmax"  # class scores over the last axis
SIGMOID = "sigmoid"  # one independent probability per output
KL = "kl"  # probability rows compared with probability targets
POISSON = "poisson"  # a positive rate
REGRESSION = "regression"  # the value itself

# Keras reductions that divide by the number of elements (or rows).
_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean")

_HOW_TO_NAME = (
    "Name the loss it computes with `loss=`: a Keras loss object such as "
    "keras.losses.BinaryCrossentropy(from_logits=True), a Keras loss string such as "
    "'sparse_categorical_crossentropy', or a core description from initguard.make_loss(...)."
)


@dataclasses.dataclass(frozen=True)
class KerasLoss:
    """A supported Keras loss with the options that change its optimum.

    Attributes:
        display: the name shown in messages ("BinaryCrossentropy", ...).
        core: the core loss name.
        options: core options read from the Keras loss (no class weights,
            no class count: those come from ``fit`` and the model).
        family: SOFTMAX, SIGMOID, KL, POISSON or REGRESSION.
        from_logits: whether the loss takes raw scores; None when the loss
            has no such option.
        reduction: the Keras reduction ("sum_over_batch_size", "sum", ...).
        sparse: True when the targets are class indices, not rows.
    """

    display: str
    core: str
    options: dict[str, Any]
    family: str
    from_logits: bool | None
    reduction: str
    sparse: bool = False

    @property
    def expects_probabilities(self) -> bool:
        """True when the loss wants activated outputs (softmax or sigmoid)."""
        return self.family == KL or self.from_logits is False


def _huber_delta(loss: Any) -> float:
    """Reads ``delta`` of a Keras ``Huber`` object by evaluating it.

    Keras does not put ``delta`` in ``Huber.get_config()``, and the public
    API offers no other way to read it. Beyond ``delta`` the loss of an
    error ``x`` is ``delta * x - delta**2 / 2``; solving that for ``delta``
    at a large error recovers it from the loss the object actually computes.
    """
    config = loss.get_config()
    if "delta" in config:
        return float(config["delta"])
    error = 2.0**20
    value = float(
        keras.ops.convert_to_numpy(
            loss(np.zeros((1, 1), dtype="float32"), np.full((1, 1), error, dtype="float32"))
        )
    )
    # One element: every reduction Keras accepts here returns its loss unchanged.
    if value >= error**2 / 2:
        raise InvalidInputError(
            f"`loss` Huber has a delta above {error:g}; this is a mean squared error "
            "in practice: pass loss='mse' (halved) instead."
        )
    delta = 2 * value / (error + math.sqrt(error**2 - 2 * value))
    # float32 evaluation: round away the last-bit noise of the solve.
    return float(np.float32(round(delta, 6)))


def _reduction(display: str, reduction: Any) -> str:
    if reduction in (None, "none"):
        raise InvalidInputError(
            f"`loss` {display} with reduction={reduction!r} is not supported: the check needs "
            "the scalar loss Keras trains on. Use 'sum_over_batch_size' (the default) or 'sum'."
        )
    return str(reduction)


def read_keras_loss(loss: Any) -> KerasLoss:
    """Translates a Keras loss into a core loss name and options.

    Args:
        loss: a Keras loss string, a Keras loss function (``keras.losses.mse``)
            or a ``keras.losses.Loss`` object of a supported class.

    Returns:
        The translation.

    Raises:
        InvalidInputError: the loss is a custom function or class, or uses
            an option initguard does not support.
    """
    if isinstance(loss, str) or (callable(loss) and not isinstance(loss, keras.losses.Loss)):
        loss = _instance_for(loss)
    if not isinstance(loss, keras.losses.Loss):
        raise InvalidInputError(
            f"`loss` must be a Keras loss (string, function or keras.losses.Loss); received "
            f"{loss!r}. {_HOW_TO_NAME}"
        )

    cls = type(loss)
    display = cls.__name__
    if cls not in _READERS:
        if getattr(keras.losses, display, None) is cls:
            raise InvalidInputError(
                f"`loss` keras.losses.{display} is built into Keras but not supported by "
                f"initguard. {_supported()} {_HOW_TO_NAME}"
            )
        raise InvalidInputError(
            f"initguard cannot read the custom loss {display} ({getattr(loss, 'name', '')!r}). "
            f"{_supported()} {_HOW_TO_NAME}"
        )
    config = loss.get_config()
    reduction = _reduction(display, config.get("reduction"))
    if config.get("axis", -1) not in (-1, None):
        raise InvalidInputError(
            f"`loss` {display} with axis={config['axis']!r} is not supported; only the last "
            "axis (-1) holds the classes or outputs."
        )
    return _READERS[cls](loss, config, display, reduction)


def _instance_for(loss: Any) -> Any:
    """The built-in Keras loss object a string or a Keras function stands for."""
    given = f"{loss!r} (keras.losses.{{}})" if isinstance(loss, str) else "keras.losses.{}"
    if isinstance(loss, str):
        try:
            resolved = keras.losses.get(loss)
        except ValueError:
            raise InvalidInputError(
                f"`loss` {loss!r} is not a Keras loss name. {_HOW_TO_NAME}"
            ) from None
        if isinstance(resolved, keras.losses.Loss):
            return resolved
        loss = resolved

    name = getattr(loss, "__name__", "")
    built_in = bool(name) and getattr(keras.losses, name, None) is loss
    cls = _FUNCTIONS.get(name)
    if built_in and cls is None:
        raise InvalidInputError(
            f"`loss` {given.format(name)} is built into Keras but not supported by "
            f"initguard. {_supported()} {_HOW_TO_NAME}"
        )
    if cls is None or not built_in:
        raise InvalidInputError(
            f"initguard cannot read the loss function {name or loss!r}: it is a custom "
            f"function, whose formula initguard cannot see. {_supported()} {_HOW_TO_NAME}"
        )
    return cls()


def _supported() -> str:
    """The Keras losses initguard reads, for messages."""
    return (
        f"Supported Keras losses: the classes {', '.join(sorted(c.__name__ for c in _READERS))} "
        f"and the functions or strings {', '.join(sorted(_FUNCTIONS))} (with Keras's short "
        "aliases such as 'mse')."
    )


def _read_sparse(loss: Any, config: dict, display: str, reduction: str) -> KerasLoss:
    ignore = config.get("ignore_class")
    return KerasLoss(
        display,
        "cross_entropy",
        {"ignore_index": None if ignore is None else int(ignore)},
        SOFTMAX,
        bool(config["from_logits"]),
        reduction,
        sparse=True,
    )


def _read_categorical(loss: Any, config: dict, display: str, reduction: str) -> KerasLoss:
    options = {"ignore_index": None, "label_smoothing": float(config["label_smoothing"])}
    return KerasLoss(
        display, "cross_entropy", options, SOFTMAX, bool(config["from_logits"]), reduction
    )


def _read_binary(loss: Any, config: dict, display: str, reduction: str) -> KerasLoss:
    options = {"label_smoothing": float(config["label_smoothing"])}
    return KerasLoss(
        display, "binary_cross_entropy", options, SIGMOID, bool(config["from_logits"]), reduction
    )


def _read_binary_focal(loss: Any, config: dict, display: str, reduction: str) -> KerasLoss:
    # Keras weights by alpha only with apply_class_balancing; the core's None means unweighted.
    alpha = float(config["alpha"]) if config["apply_class_balancing"] else None
    options = {
        "alpha": alpha,
        "gamma": float(config["gamma"]),
        "label_smoothing": float(config["label_smoothing"]),
    }
    return KerasLoss(
        display, "sigmoid_focal", options, SIGMOID, bool(config["from_logits"]), reduction
    )


def _read_categorical_focal(loss: Any, config: dict, display: str, reduction: str) -> KerasLoss:
    options = {
        "alpha": float(config["alpha"]),
        "gamma": float(config["gamma"]),
        "label_smoothing": float(config["label_smoothing"]),
    }
    return KerasLoss(
        display, "softmax_focal", options, SOFTMAX, bool(config["from_logits"]), reduction
    )


def _regression(core: str, family: str = REGRESSION) -> Any:
    def read(loss: Any, config: dict, display: str, reduction: str) -> KerasLoss:
        options: dict[str, Any] = {}
        if core == "huber":
            options["delta"] = _huber_delta(loss)
        if core == "poisson_nll":
            # Keras's Poisson is y_pred - y_true * log(y_pred + epsilon()).
            options.update(log_input=False, eps=float(keras.config.epsilon()))
        return KerasLoss(display, core, options, family, None, reduction)

    return read


_READERS = {
    keras.losses.SparseCategoricalCrossentropy: _read_sparse,
    keras.losses.CategoricalCrossentropy: _read_categorical,
    keras.losses.BinaryCrossentropy: _read_binary,
    keras.losses.BinaryFocalCrossentropy: _read_binary_focal,
    keras.losses.CategoricalFocalCrossentropy: _read_categorical_focal,
    keras.losses.MeanSquaredError: _regression("mse"),
    keras.losses.MeanAbsoluteError: _regression("l1"),
    keras.losses.Huber: _regression("huber"),
    keras.losses.Poisson: _regression("poisson_nll", POISSON),
    keras.losses.KLDivergence: _regression("kl_div", KL),
    keras.losses.MeanSquaredLogarithmicError: _regression("msle"),
    keras.losses.LogCosh: _regression("log_cosh"),
}

# Keras's loss functions (what a string resolves to) and the class computing the same.
_FUNCTIONS = {
    "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
    "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
    "binary_crossentropy": keras.losses.BinaryCrossentropy,
    "binary_focal_crossentropy": keras.losses.BinaryFocalCrossentropy,
    "categorical_focal_crossentropy": keras.losses.CategoricalFocalCrossentropy,
    "mean_squared_error": keras.losses.MeanSquaredError,
    "mean_absolute_error": keras.losses.MeanAbsoluteError,
    "huber": keras.losses.Huber,
    "poisson": keras.losses.Poisson,
    "kl_divergence": keras.losses.KLDivergence,
    "mean_squared_logarithmic_error": keras.losses.MeanSquaredLogarithmicError,
    "log_cosh": keras.losses.LogCosh,
}


def core_spec(
    loss: KerasLoss,
    *,
    width: int,
    class_weight: dict[int, float] | None,
    activation: str,
) -> LossSpec:
    """Builds the core description for a Keras loss on a head of ``width`` units.

    Args:
        loss: the translated Keras loss.
        width: the output width of the head (the number of classes for
            softmax losses).
        class_weight: ``class_weight`` as given to ``fit``, or None.
        activation: the model's output activation ("linear", "exponential",
            "softplus", ...); it selects the Poisson rate's link.

    Raises:
        InvalidInputError: a combination Keras computes differently from
            every core option.
    """
    if loss.core not in LOSSES:
        raise InvalidInputError(
            f"`loss` {loss.display} needs the core loss {loss.core!r}, which this initguard "
            f"does not provide (available: {sorted(LOSSES)})."
        )
    options = dict(loss.options)
    weighted_mean = loss.reduction == "mean_with_sample_weight"

    if loss.family == KL:
        # The core's "sum_over_batch_size" is Keras's: the per-row sum over
        # classes, averaged over the rows (and positions).
        options["reduction"] = "sum" if loss.reduction == "sum" else "sum_over_batch_size"
        options.update(epsilon=float(keras.config.epsilon()), num_classes=width)
    else:
        options["reduction"] = "sum" if loss.reduction == "sum" else "mean"
    if loss.reduction == "sum" and width > 1 and loss.family in (SIGMOID, POISSON, REGRESSION):
        # Keras averages over the outputs of a row before summing the rows.
        raise InvalidInputError(
            f"`loss` {loss.display} with reduction='sum' over {width} outputs is not supported "
            "yet (Keras sums the per-row means, not the elements): use the default "
            "'sum_over_batch_size'."
        )

    if loss.core in ("cross_entropy", "softmax_focal"):
        options.update(num_classes=width, class_axis=-1)
    if loss.family == SIGMOID:
        options["class_axis"] = -1
    if loss.core == "msle":
        options["eps"] = float(keras.config.epsilon())
    if loss.family == POISSON:
        links = {"exponential": "exp", "softplus": "softplus", "linear": "identity"}
        if activation not in links:
            raise InvalidInputError(
                f"`loss` Poisson needs a positive rate from an 'exponential', 'softplus' or "
                f"'linear' output activation; received activation {activation!r}."
            )
        options["activation"] = links[activation]

    if class_weight is not None:
        _add_class_weight(loss, options, class_weight, width, weighted_mean)
    return _make(loss, options)


def _add_class_weight(
    loss: KerasLoss,
    options: dict[str, Any],
    class_weight: dict[int, float],
    width: int,
    weighted_mean: bool,
) -> None:
    if loss.core == "cross_entropy":
        if set(class_weight) - set(range(width)):
            raise InvalidInputError(
                f"`class_weight` keys must be classes of the output (0..{width - 1}); "
                f"received {sorted(class_weight)}."
            )
        vector = [float(class_weight.get(c, 1.0)) for c in range(width)]
        # Keras divides a weighted sum by the batch size, or by the summed
        # weights under 'mean_with_sample_weight' (torch's `weight`).
        options["weight" if weighted_mean else "class_weight"] = vector
        return

    if loss.core == "binary_cross_entropy" and width == 1 and not weighted_mean:
        if options["label_smoothing"]:
            raise InvalidInputError(
                "`class_weight` with BinaryCrossentropy(label_smoothing>0) is not supported "
                "yet: Keras weights the smoothed loss by the raw label."
            )
        if set(class_weight) - {0, 1}:
            raise InvalidInputError(
                f"`class_weight` keys must be 0 and 1 for one sigmoid output; received "
                f"{sorted(class_weight)}."
            )
        negative, positive = float(class_weight.get(0, 1.0)), float(class_weight.get(1, 1.0))
        if negative <= 0:
            raise InvalidInputError(
                f"`class_weight[0]` must be > 0 for BinaryCrossentropy; received {negative}."
            )
        # w1 y sp(-b) + w0 (1 - y) sp(b) is torch's weight=w0, pos_weight=w1/w0.
        options["weight"] = [negative]
        options["pos_weight"] = [positive / negative]
        return

    raise InvalidInputError(
        f"`class_weight` is supported with cross-entropy losses (and BinaryCrossentropy on one "
        f"output); received it with {loss.display} on {width} output(s) and reduction "
        f"{loss.reduction!r}."
    )


def _make(loss: KerasLoss, options: dict[str, Any]) -> LossSpec:
    from .. import make_loss

    try:
        return make_loss(loss.core, **options)
    except InvalidInputError as error:
        raise InvalidInputError(f"`loss` {loss.display}: {error}") from None
