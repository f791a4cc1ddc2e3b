"""Finding a Keras model's output layer, its activation and its bias."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from .._errors import InvalidInputError

# Layers that may sit between the biased head and the model's output
# without changing which constant the bias produces.
_PASS_THROUGH = (keras.layers.Activation, keras.layers.Softmax, keras.layers.Dropout)
_KNOWN_ACTIVATIONS = (
    "linear",
    "softmax",
    "sigmoid",
    "exponential",
    "softplus",
    "relu",
    "tanh",
    "log_softmax",
)


@dataclasses.dataclass(frozen=True)
class Head:
    """The layer whose bias sets the model's constant output.

    Attributes:
        layer: the Keras layer.
        name: its name, for reports.
        width: its number of output units.
        activation: the activation between its bias and the model output
            ("linear", "softmax", ...); for a subclassed model only the
            layer's own activation is visible.
        traced: True when the head was found from the model's graph, False
            when it was matched by width in a subclassed model.
    """

    layer: Any
    name: str
    width: int | None
    activation: str
    traced: bool

    @property
    def bias(self) -> Any:
        """The bias variable, or None."""
        return getattr(self.layer, "bias", None)


def walk(model: Any) -> Iterator[Any]:
    """Every layer inside ``model``, depth first, in Keras's listing order."""
    for layer in getattr(model, "layers", ()):
        yield layer
        if getattr(layer, "layers", None):
            yield from walk(layer)


def ensure_built(model: Any, input_shape: tuple[int, ...] | None) -> None:
    """Builds a model whose variables do not exist yet, or says how to.

    Raises:
        InvalidInputError: the model is not built and no ``input_shape`` was given.
    """
    if model.built and all(layer.built for layer in walk(model)):
        return
    if input_shape is None:
        raise InvalidInputError(
            f"Model {model.name!r} is not built when training begins (on the "
            f"{keras.backend.backend()} backend Keras builds it only in its first training "
            "step, too late to set the bias). "
            "Pass `input_shape=` (one sample's shape, without the batch axis) to InitGuard, "
            "or build the model before fit by calling it on a batch: model(x[:1])."
        )
    # A call on one sample builds every layer; Model.build does not for subclassed models.
    model(np.zeros((1, *input_shape), dtype=keras.config.floatx()), training=False)


def activation_name(function: Any) -> str:
    """The name of a Keras activation function, or 'custom:<name>'."""
    if function is None:
        return "linear"
    for name in _KNOWN_ACTIVATIONS:
        if function is getattr(keras.activations, name, None):
            return name
    return f"custom:{getattr(function, '__name__', type(function).__name__)}"


def layer_width(layer: Any) -> int | None:
    """Output units of a dense or convolutional layer, or None."""
    bias = getattr(layer, "bias", None)
    if bias is not None:
        return int(bias.shape[-1])
    for attribute in ("units", "filters"):
        value = getattr(layer, attribute, None)
        if isinstance(value, int):
            return value
    return None


def _has_bias_slot(layer: Any) -> bool:
    """A dense or convolutional layer (with or without its bias)."""
    return hasattr(layer, "use_bias") and layer_width(layer) is not None


def _producer(model: Any, tensor: Any) -> Any:
    for layer in model.layers:
        try:
            if layer.output is tensor:
                return layer
        except (AttributeError, ValueError):
            # A layer called more than once has no single output.
            continue
    return None


def _trace(model: Any) -> tuple[Any, list[str]] | None:
    """Follows the output tensor of a functional or Sequential model back to its head."""
    try:
        outputs = model.outputs
    except AttributeError:
        return None
    if not outputs:
        return None
    if len(outputs) != 1:
        raise InvalidInputError(
            f"Model {model.name!r} has {len(outputs)} outputs; initguard supports models with "
            "one output."
        )

    activations: list[str] = []
    tensor = outputs[0]
    owner = model
    while True:
        layer = _producer(owner, tensor)
        if layer is None:
            return None
        if isinstance(layer, keras.Model):
            # A nested model: continue inside it from its own output.
            found = _trace(layer)
            if found is None:
                return None
            return found[0], found[1] + activations
        if isinstance(layer, keras.layers.Softmax):
            activations.insert(0, "softmax")
        elif isinstance(layer, keras.layers.Activation):
            activations.insert(0, activation_name(layer.activation))
        elif not isinstance(layer, _PASS_THROUGH):
            activations.insert(0, activation_name(getattr(layer, "activation", None)))
            return layer, activations
        tensor = layer.input


def _compose(activations: list[str]) -> str:
    active = [name for name in activations if name != "linear"]
    if not active:
        return "linear"
    return "+".join(active)


def find_head(model: Any, layer: Any, width: int | None) -> Head:
    """Finds the layer whose bias sets the model's output.

    Args:
        model: a built Keras model.
        layer: the layer or its name as given by the user, or None.
        width: the output width the targets imply, used to pick the head of
            a subclassed model; None when the targets do not fix it.

    Raises:
        InvalidInputError: the named layer does not exist, the output is not
            produced by a dense or convolutional layer, or several layers of a
            subclassed model could be the head.
    """
    if layer is not None:
        return _named_head(model, layer)

    traced = _trace(model)
    if traced is not None:
        head, activations = traced
        if not _has_bias_slot(head):
            raise InvalidInputError(
                f"The output of model {model.name!r} comes from layer {head.name!r} "
                f"({type(head).__name__}), which has no bias to set. Pass `layer=` with the "
                "name of the dense or convolutional layer that produces the output."
            )
        return Head(head, head.name, layer_width(head), _compose(activations), True)

    # Subclassed model: the layer order is attribute order, not call order.
    dense = [ly for ly in walk(model) if _has_bias_slot(ly)]
    candidates = [ly for ly in dense if width is None or layer_width(ly) == width]
    if len(candidates) != 1:
        listed = ", ".join(f"{ly.name!r} ({layer_width(ly)} units)" for ly in dense) or "none"
        problem = "several layers" if candidates else "no layer"
        raise InvalidInputError(
            f"Model {model.name!r} is subclassed, so initguard cannot see which layer produces "
            f"its output, and {problem} match the {width} output(s) the targets imply. "
            f"Pass `layer=` with one of: {listed}."
        )
    head = candidates[0]
    return Head(
        head,
        head.name,
        layer_width(head),
        activation_name(getattr(head, "activation", None)),
        False,
    )


def _named_head(model: Any, layer: Any) -> Head:
    layers = list(walk(model))
    if isinstance(layer, str):
        matches = [ly for ly in layers if ly.name == layer]
        if not matches:
            names = ", ".join(repr(ly.name) for ly in layers if _has_bias_slot(ly))
            raise InvalidInputError(
                f"`layer` {layer!r} is not a layer of model {model.name!r}; layers with a "
                f"bias slot: {names or 'none'}."
            )
        found = matches[0]
    elif any(ly is layer for ly in layers):
        found = layer
    else:
        raise InvalidInputError(
            f"`layer` must be a layer of model {model.name!r} or its name; received {layer!r}."
        )
    if not _has_bias_slot(found):
        raise InvalidInputError(
            f"`layer` {found.name!r} ({type(found).__name__}) is not a dense or convolutional "
            "layer, so it has no bias to set."
        )

    traced = _trace(model)
    if traced is not None and traced[0] is found:
        activation = _compose(traced[1])
    else:
        activation = activation_name(getattr(found, "activation", None))
    return Head(found, found.name, layer_width(found), activation, traced is not None)


def write_bias(head: Head, bias: np.ndarray) -> None:
    """Assigns the planned bias in the variable's own dtype (every replica under a strategy).

    Raises:
        InvalidInputError: the bias variable's shape does not fit the plan.
    """
    variable = head.bias
    if tuple(variable.shape) != (bias.shape[0],):
        raise InvalidInputError(
            f"The bias of layer {head.name!r} has shape {tuple(variable.shape)}; the plan has "
            f"{bias.shape[0]} values."
        )
    dtype = str(variable.dtype)
    if dtype == "bfloat16":
        # numpy has no bfloat16: round through float32, as Keras would.
        variable.assign(keras.ops.cast(np.asarray(bias, dtype="float32"), dtype))
    else:
        variable.assign(np.asarray(bias, dtype=dtype))
