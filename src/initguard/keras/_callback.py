"""The Keras callback: optimal output bias at fit start, step-0 loss check after one step."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from .._check import skipped
from .._config import Tolerance
from .._errors import InvalidInputError
from .._guard import Guard, GuardViews, log
from .._loss_base import LOSSES, LossSpec
from .._targets import require_finite, to_numpy
from ._keras_losses import KL, REGRESSION, SIGMOID, SOFTMAX, KerasLoss, core_spec, read_keras_loss
from ._layers import Head, ensure_built, find_head, write_bias

_NEEDED_ACTIVATION = {SOFTMAX: "softmax", SIGMOID: "sigmoid", KL: "softmax"}


class InitGuard(GuardViews, keras.callbacks.Callback):
    """Sets the output bias to the best constant for the targets and checks the step-0 loss.

    At ``on_train_begin`` the callback reads the loss from ``model.loss`` (or
    ``loss=``), finds the layer producing the model's output, computes the
    constant output that minimises the loss over ``targets`` and writes it
    into that layer's bias (the bias *before* any softmax, sigmoid or
    exponential output activation). After the first training batch it
    compares the loss Keras measured on that batch, before any update, with
    the loss the bias implies, and logs, warns (``initguard.InitLossWarning``)
    or, when strict, raises ``initguard.InitLossError`` before the second
    optimizer step.

    The check costs nothing after the first batch and overrides no
    batch-end hook, so Keras keeps its asynchronous batch dispatch. The
    step-0 loss is read from the model's ``loss`` metric when the second
    batch begins (after one batch it holds exactly that batch's loss,
    regularisation included, and the number of rows it saw) or, for a
    one-batch epoch, when validation or the epoch ends.

    The metrics ``initguard/expected_loss``, ``initguard/step0_loss`` and
    ``initguard/deviation`` are added to the logs of the first epoch, so
    ``History`` holds them; list this callback *before* ``CSVLogger`` or
    ``TensorBoard`` for those to record them too.

    Note:
        Weight regularisation (``kernel_regularizer``, ...) is added to the
        expected loss, as Keras adds it to the measured one. Activity
        regularisers exist only during a forward pass and are not
        accounted for: a model with a large activity penalty may fail the
        check. With ``steps_per_execution > 1`` Keras never reports the
        first batch alone, so the bias is written but the check is skipped
        (the report says so). A model whose optimizer has already taken
        steps (trained before, or restored) keeps its bias and is not
        checked. Models with one output and one compiled loss are
        supported; ``loss_weights`` other than 1 are refused. The TensorFlow
        and torch backends are tested; where a backend does not update the
        loss metric batch by batch, the check reports SKIPPED and why.

        A callback sees neither the data nor the ``sample_weight`` given to
        ``fit``. Per-sample weights are not part of the expectation: pass
        ``class_weight`` to both ``fit`` and this callback instead, or expect
        a deviation as large as the weights make it. When the number of
        targets does not fit the first batch's size and the number of steps
        per epoch (``ceil(len(targets) / batch) != steps``), the report
        carries a note, and the ``initguard`` logger a warning, that the
        targets look like they are not the training data (the full targets
        under ``validation_split``, or a subset).

    Args:
        targets: the training targets as given to ``fit`` (class indices,
            one-hot or probability rows, 0/1 labels or values, dense
            ``[N, ..., classes]`` included; numpy, list or tensor), without
            any part ``validation_split`` holds out. A Keras callback cannot
            see the data given to ``fit``, so they must be passed here.
        loss: the loss to plan for when ``model.loss`` cannot be read (a
            custom function): a Keras loss object, a Keras loss string, a
            core loss name or an ``initguard.make_loss(...)`` description.
            Defaults to None (read ``model.loss``).
        layer: the layer (or its name) whose bias to set. Defaults to None
            (the layer producing the model's output).
        class_weight: the ``class_weight`` mapping given to ``fit``.
            Defaults to None.
        set_bias: write the planned bias; False only checks. Defaults to True.
        strict: raise on a failed check; None reads ``INITGUARD_STRICT``.
            Defaults to None.
        tolerance: an ``initguard.Tolerance``. Defaults to None
            (``Tolerance()``).
        input_shape: one sample's input shape, used to build a model that is
            not built when training begins (a subclassed model that Keras
            builds only in its first step). Defaults to None.

    Raises:
        InvalidInputError: an argument is invalid (here), or, at fit start,
            the loss, the output layer or the targets do not fit together.
    """

    _pending: bool
    _log_metrics: bool
    _head: Head | None
    _notes: list[str]
    _doubled_seen: bool

    def __init__(
        self,
        targets: Any,
        *,
        loss: Any = None,
        layer: str | keras.layers.Layer | None = None,
        class_weight: Mapping[int, float] | None = None,
        set_bias: bool = True,
        strict: bool | None = None,
        tolerance: Tolerance | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self._targets = _check_targets(targets)
        self._loss = _check_loss(loss)
        self._layer = _check_layer(layer)
        self._class_weight = _check_class_weight(class_weight)
        if not isinstance(set_bias, bool):
            raise InvalidInputError(f"`set_bias` must be True or False; received {set_bias!r}.")
        self._set_bias = set_bias
        self._input_shape = _check_input_shape(input_shape)
        self._guard = Guard(strict=strict, tolerance=tolerance)
        self._reset()

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._reset()
        self._prepare()

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if not self._pending or batch == 0:
            return
        self._measure()

    def on_test_begin(self, logs: dict | None = None) -> None:
        # Validation after a one-batch epoch resets the loss metric: read it first.
        if self._pending:
            self._measure()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self._pending:
            self._measure()
        if self._log_metrics and logs is not None:
            self._log_metrics = False
            logs.update(self._guard.metrics())

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._pending:
            self._pending = False
            self._guard.skip(skipped("training ended before a batch completed", **self._context()))

    # The steps, in hook order.

    def _reset(self) -> None:
        self._guard.reset()
        self._pending = False
        self._log_metrics = False
        self._head = None
        self._bias_set = False
        self._penalty = 0.0
        self._positions = 1
        self._notes = []
        # The output layer applies the sigmoid or softmax the loss applies too.
        self._doubled_seen = False

    def _prepare(self) -> None:
        model = self.model
        loss = self._read_loss(model)
        ensure_built(model, self._input_shape)

        head = find_head(model, self._layer, self._width_hint(loss))
        self._head = head
        targets = self._shape_targets(loss, head)
        spec = self._spec(loss, head)
        self._solve(loss, spec, head, targets)
        if isinstance(loss, KerasLoss):
            self._check_activation(loss, head)

        trained_steps = _optimizer_steps(model)
        if trained_steps:
            self._notes.append(
                f"the optimizer has already taken {trained_steps} step(s) (a model trained "
                "before, or restored): its bias is left alone"
            )
            self._guard.skip(skipped(self._notes[-1], **self._context()))
            return
        self._apply_bias(head)
        self._penalty = _regularisation(model)

        steps = int(getattr(model, "steps_per_execution", 1) or 1)
        if steps > 1:
            reason = (
                f"steps_per_execution={steps}: Keras reports the first {steps} batches "
                "together, never the first alone, so the step-0 loss cannot be read"
            )
            self._guard.skip(skipped(reason, **self._context()))
            return
        self._pending = True

    def _read_loss(self, model: Any) -> KerasLoss | LossSpec:
        if self._loss is not None:
            return self._loss
        config = model.get_compile_config() or {}
        weights = config.get("loss_weights")
        if weights is not None and _as_list(weights) != [1.0]:
            raise InvalidInputError(
                f"compile(loss_weights={weights!r}) is not supported yet; initguard plans for "
                "the unweighted loss of a single output."
            )
        compiled = model.loss
        if isinstance(compiled, (list, tuple)) and len(compiled) == 1:
            compiled = compiled[0]
        if isinstance(compiled, dict) and len(compiled) == 1:
            compiled = next(iter(compiled.values()))
        if compiled is None or isinstance(compiled, (list, tuple, dict)):
            raise InvalidInputError(
                f"initguard needs the single loss the model was compiled with; model.loss is "
                f"{compiled!r}. Pass `loss=` to InitGuard."
            )
        return read_keras_loss(compiled)

    def _width_hint(self, loss: KerasLoss | LossSpec) -> int | None:
        """The output width the targets imply (picks the head of a subclassed model)."""
        targets = self._targets
        if isinstance(loss, KerasLoss) and loss.sparse:
            ignore = loss.options["ignore_index"]
            kept = targets if ignore is None else targets[targets != ignore]
            return int(kept.max()) + 1 if kept.size else None
        return int(targets.shape[-1]) if targets.ndim > 1 else 1

    def _shape_targets(self, loss: KerasLoss | LossSpec, head: Head) -> np.ndarray:
        """Arranges the targets as the core reads them for this loss and head."""
        targets = self._targets
        if isinstance(loss, LossSpec):
            return targets
        if loss.sparse:
            # Keras drops a trailing axis of 1; every other element is a sample.
            if targets.ndim > 1 and targets.shape[-1] == 1:
                targets = targets[..., 0]
            return targets

        targets = targets.astype(np.float64)
        if loss.family in (SOFTMAX, KL):
            if targets.ndim < 2:
                raise InvalidInputError(
                    f"`targets` for {loss.display} must be one-hot or probability rows shaped "
                    f"[N, ..., classes]; received shape {self._targets.shape}."
                )
            if targets.shape[-1] != head.width:
                raise InvalidInputError(
                    f"initguard.keras (loss {loss.display}, targets shaped "
                    f"{self._targets.shape}): the targets imply {targets.shape[-1]} outputs but "
                    f"layer {head.name!r} has {head.width}; the output width must match the "
                    "number of classes."
                )
            return targets
        if targets.ndim == 1 or (head.width == 1 and targets.shape[-1] != 1):
            # One output: Keras compares [N, ...] targets with [N, ..., 1] outputs.
            targets = targets[..., None]
        if loss.family == SIGMOID:
            return targets
        # Regression statistics take rows; each position of a dense target is one.
        self._positions = int(np.prod(targets.shape[1:-1], dtype=np.int64))
        return targets.reshape(-1, targets.shape[-1])

    def _spec(self, loss: KerasLoss | LossSpec, head: Head) -> LossSpec:
        if isinstance(loss, LossSpec):
            if self._class_weight is None:
                return loss
            from .. import make_loss

            return make_loss(loss, class_weight=self._class_weight)
        if head.width is None:
            raise InvalidInputError(f"Cannot tell the output width of layer {head.name!r}.")
        return core_spec(
            loss, width=head.width, class_weight=self._class_weight, activation=head.activation
        )

    def _solve(
        self, loss: KerasLoss | LossSpec, spec: LossSpec, head: Head, targets: np.ndarray
    ) -> None:
        name = loss.display if isinstance(loss, KerasLoss) else spec.name
        context = (
            f"loss {name}, layer {head.name!r} ({head.width} units), "
            f"targets shaped {self._targets.shape}"
        )
        try:
            plan = self._guard.solve(spec, spec.new_stats().update(targets))
        except InvalidInputError as error:
            raise InvalidInputError(f"initguard.keras ({context}): {error}") from None
        if self._positions > 1:
            # Regression statistics hold one row per position; a batch row holds several.
            plan = dataclasses.replace(plan, units_per_row=float(self._positions))
            self._guard.plan = plan
        if head.width is not None and plan.bias.shape[0] != head.width:
            raise InvalidInputError(
                f"initguard.keras ({context}): the targets imply {plan.bias.shape[0]} outputs "
                f"but layer {head.name!r} has {head.width}; the output width must match the "
                "number of classes or target columns."
            )

    def _check_activation(self, loss: KerasLoss, head: Head) -> None:
        activation = head.activation
        seen = (
            ""
            if head.traced
            else (
                f" (model {self.model.name!r} is subclassed: only layer {head.name!r}'s own "
                "activation is visible)"
            )
        )
        needed = _NEEDED_ACTIVATION.get(loss.family) if loss.expects_probabilities else None
        if needed is not None and activation != needed:
            message = (
                f"{loss.display} expects probabilities (from_logits=False) but the output of "
                f"layer {head.name!r} has activation {activation!r}{seen}: use "
                f"activation='{needed}' on the output or from_logits=True in the loss"
            )
            if head.traced:
                raise InvalidInputError(f"initguard.keras: {message}.")
            self._notes.append(message)
        elif loss.from_logits and activation in ("softmax", "sigmoid"):
            # TensorFlow's losses take the logits kept on a sigmoid or softmax
            # output instead, so only the other backends apply it twice.
            self._doubled_seen = keras.backend.backend() != "tensorflow"
            self._notes.append(
                f"{loss.display} takes logits (from_logits=True) but layer {head.name!r} applies "
                f"{activation}: the TensorFlow backend repairs this with a warning, other "
                "backends compute a wrong loss; remove the activation or set from_logits=False"
            )
        elif loss.family == REGRESSION and activation != "linear":
            message = (
                f"{loss.display} with output activation {activation!r} on layer {head.name!r} "
                f"is not supported yet{seen}: the planned bias is the constant output itself"
            )
            if head.traced:
                raise InvalidInputError(
                    f"initguard.keras: {message}; use a linear output, or pass set_bias=False "
                    "and layer= to skip this layer."
                )
            self._notes.append(message)

    def _apply_bias(self, head: Head) -> None:
        plan = self._guard.plan
        assert plan is not None
        if not self._set_bias:
            self._notes.append("set_bias=False: the bias is left as it is")
            return
        if head.bias is None:
            raise InvalidInputError(
                f"Layer {head.name!r} has no bias (use_bias=False), so initguard cannot set it. "
                "Pass set_bias=False to check the step-0 loss without writing, or give the "
                "layer a bias."
            )
        write_bias(head, plan.bias)
        self._bias_set = True

    def _measure(self) -> None:
        """Reads the first batch's loss from the model's loss metric and concludes."""
        self._pending = False
        tracker = next((m for m in self.model.metrics if m.name == "loss"), None)
        count = getattr(tracker, "count", None)
        if tracker is None or count is None:
            reason = "the model has no 'loss' metric to read the first batch's loss from"
            self._guard.skip(skipped(reason, **self._context()))
            return
        rows = float(keras.ops.convert_to_numpy(count))
        if rows <= 0:
            reason = "the model's 'loss' metric was not updated by the first batch"
            self._guard.skip(skipped(reason, **self._context()))
            return
        step0 = float(keras.ops.convert_to_numpy(tracker.result()))
        self._log_metrics = True
        assert self._head is not None
        batch_size = max(round(rows), 1)
        mismatch = self._targets_mismatch(batch_size)
        if mismatch:
            self._notes.append(mismatch)
            if _is_chief(self.model):
                log.warning("initguard: %s", mismatch)
        self._guard.conclude(
            step0,
            batch_size,
            penalty=self._penalty,
            bias_set=self._bias_set,
            layer=self._head.name,
            notes=tuple(self._notes),
            doubled_seen=self._doubled_seen,
        )

    def _targets_mismatch(self, batch_size: int) -> str:
        """A note when the targets cannot be the rows ``fit`` trains on, else ""."""
        steps = (self.params or {}).get("steps")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
            return ""  # unknown length (a generator or dataset without cardinality)
        count = int(self._targets.shape[0])
        batches = math.ceil(count / batch_size)
        # One step per epoch puts every training row in the first batch.
        if batches == steps and (steps > 1 or count == batch_size):
            return ""
        if steps == 1:
            found = (
                f"fit trains on {batch_size} rows in one batch per epoch, but InitGuard was "
                f"given {count} targets"
            )
        else:
            found = (
                f"the {count} targets given to InitGuard fill {batches} batch(es) of "
                f"{batch_size} rows (the first batch's size), but fit runs {steps} steps "
                "per epoch"
            )
        return (
            f"{found}: the targets look like they are not the training data "
            "(the full targets under validation_split, which holds out the last part? a "
            "sample or subset of them?), or steps_per_epoch differs from one pass over the "
            "data. The bias and the expected loss come from the targets given: pass exactly "
            "the targets fit trains on (under validation_split, the leading part it keeps)."
        )

    def _context(self) -> dict[str, Any]:
        return {
            "layer": self._head.name if self._head is not None else "",
            "bias_set": self._bias_set,
            "notes": tuple(self._notes),
        }


def _is_chief(model: Any) -> bool:
    """False only on a non-chief worker of a TensorFlow multi-worker strategy."""
    strategy = getattr(model, "distribute_strategy", None)
    extended = getattr(strategy, "extended", None)
    return bool(getattr(extended, "should_checkpoint", True))


def _optimizer_steps(model: Any) -> int:
    optimizer = getattr(model, "optimizer", None)
    iterations = getattr(optimizer, "iterations", None)
    if iterations is None:
        return 0
    return int(keras.ops.convert_to_numpy(iterations))


def _regularisation(model: Any) -> float:
    """The weight-regularisation penalty Keras adds to the loss, at the current weights."""
    losses = model.losses
    return float(sum(float(keras.ops.convert_to_numpy(value)) for value in losses))


def _as_list(value: Any) -> list[float] | None:
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    if isinstance(value, dict):
        return [float(v) for v in value.values()]
    return None


# Argument checks: each names the argument, the rule and what arrived.


def _check_targets(targets: Any) -> np.ndarray:
    if isinstance(targets, (str, bytes)):
        raise InvalidInputError(f"`targets` must be array-like numbers; received {targets!r}.")
    array = to_numpy(targets)
    require_finite(array)
    if array.ndim == 0:
        raise InvalidInputError(
            f"`targets` must hold one target per sample (at least one axis); received {array!r}."
        )
    return array


def _check_loss(loss: Any) -> KerasLoss | LossSpec | None:
    if loss is None or isinstance(loss, LossSpec):
        return loss
    if isinstance(loss, str) and loss in LOSSES:
        try:
            return read_keras_loss(loss)
        except InvalidInputError:
            from .. import make_loss

            return make_loss(loss)
    return read_keras_loss(loss)


def _check_layer(layer: Any) -> Any:
    if layer is None or isinstance(layer, keras.layers.Layer):
        return layer
    if isinstance(layer, str) and layer:
        return layer
    raise InvalidInputError(
        f"`layer` must be a layer name, a keras.layers.Layer or None; received {layer!r}."
    )


def _check_class_weight(class_weight: Any) -> dict[int, float] | None:
    if class_weight is None:
        return None
    if not isinstance(class_weight, Mapping) or not class_weight:
        raise InvalidInputError(
            "`class_weight` must be a non-empty mapping {class index: weight}, as given to "
            f"fit; received {class_weight!r}."
        )
    checked: dict[int, float] = {}
    for key, value in class_weight.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or key < 0:
            raise InvalidInputError(
                f"`class_weight` keys must be class indices >= 0; received key {key!r}."
            )
        number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
        if not number or not math.isfinite(float(value)) or float(value) < 0:
            raise InvalidInputError(
                f"`class_weight` values must be finite numbers >= 0; received "
                f"{value!r} for class {key}."
            )
        checked[int(key)] = float(value)
    return checked


def _check_input_shape(input_shape: Any) -> tuple[int, ...] | None:
    if input_shape is None:
        return None
    ok = isinstance(input_shape, (tuple, list)) and all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in input_shape
    )
    if not ok or not input_shape:
        raise InvalidInputError(
            "`input_shape` must be one sample's shape without the batch axis, a tuple of "
            f"positive integers such as (20,); received {input_shape!r}."
        )
    return tuple(int(d) for d in input_shape)
