"""Reading a torch loss module into a core loss name and options."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from .._errors import InvalidInputError
from .._loss_base import LossSpec, make_loss

_NAMING_HINT = (
    'name the loss instead, e.g. loss="cross_entropy", loss="binary_cross_entropy" or '
    'loss="mse", with its options in loss_options={...}'
)


@dataclass(frozen=True)
class LossChoice:
    """A core loss name (or description) with options, and where it came from.

    Attributes:
        loss: a core loss name or a ``LossSpec``.
        options: options for ``initguard.make_loss``.
        source: a short description for the report ("CrossEntropyLoss", ...).
        notes: remarks about how the framework's loss was read.
        required: options the loss object cannot tell and the user must
            give in ``loss_options``, each with the message to show when
            it is missing.
        takes_logits: whether the loss applies the sigmoid or softmax
            itself, so a model that applies it too squashes its output twice.
    """

    loss: str | LossSpec
    options: dict[str, Any]
    source: str
    notes: tuple[str, ...] = ()
    required: tuple[tuple[str, str], ...] = ()
    takes_logits: bool = False

    def spec(self, extra: Mapping[str, Any] | None = None) -> LossSpec:
        """Builds the core description, with ``extra`` options overriding.

        Raises:
            InvalidInputError: a required option is missing from ``extra``,
                or the options do not fit the loss.
        """
        given = dict(extra or {})
        for name, message in self.required:
            if name not in given:
                raise InvalidInputError(message)
        return make_loss(self.loss, **{**self.options, **given})


def _vector(value: torch.Tensor | None) -> list[float] | None:
    if value is None:
        return None
    return [float(v) for v in value.detach().cpu().double().reshape(-1).tolist()]


def _reduction(loss: nn.Module, allowed: tuple[str, ...] = ("mean", "sum")) -> str:
    reduction = getattr(loss, "reduction", "mean")
    if reduction not in allowed:
        raise InvalidInputError(
            f"`loss` {type(loss).__name__} must use a reduction in {allowed} (initguard "
            f"compares one number per batch); received reduction={reduction!r}. Reduce the "
            "loss to one value, or " + _NAMING_HINT + "."
        )
    return str(reduction)


def _cross_entropy(loss: Any) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    options = {
        "weight": _vector(loss.weight),
        "ignore_index": int(loss.ignore_index),
        "label_smoothing": float(loss.label_smoothing),
        "reduction": _reduction(loss),
    }
    return "cross_entropy", options, ()


def _nll(loss: Any) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    options = {
        "weight": _vector(loss.weight),
        "ignore_index": int(loss.ignore_index),
        "reduction": _reduction(loss),
    }
    note = "NLLLoss read as cross-entropy: the bias is the logit before the log-softmax"
    return "cross_entropy", options, (note,)


def _bce_logits(loss: Any) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    options = {
        "weight": _vector(loss.weight),
        "pos_weight": _vector(loss.pos_weight),
        "reduction": _reduction(loss),
    }
    return "binary_cross_entropy", options, ()


def _bce(loss: Any) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    options = {"weight": _vector(loss.weight), "reduction": _reduction(loss)}
    note = "BCELoss read as binary cross-entropy: the bias is the logit before the sigmoid"
    return "binary_cross_entropy", options, (note,)


def _multilabel_soft_margin(loss: Any) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    # The mean over labels of sigmoid cross-entropy, then the batch reduction:
    # the same as binary cross-entropy under a mean over every element.
    options = {"weight": _vector(loss.weight), "reduction": _reduction(loss, ("mean",))}
    return "binary_cross_entropy", options, ()


def _plain(name: str) -> Callable[[nn.Module], tuple[str, dict[str, Any], tuple[str, ...]]]:
    def read(loss: Any) -> tuple[str, dict[str, Any], tuple[str, ...]]:
        return name, {"reduction": _reduction(loss)}, ()

    return read


def _huber(loss: Any) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    return "huber", {"delta": float(loss.delta), "reduction": _reduction(loss)}, ()


def _smooth_l1(loss: Any) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    return "smooth_l1", {"beta": float(loss.beta), "reduction": _reduction(loss)}, ()


def _poisson(loss: Any) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    options = {
        "log_input": bool(loss.log_input),
        "full": bool(loss.full),
        "eps": float(loss.eps),
        "reduction": _reduction(loss),
    }
    return "poisson_nll", options, ()


def _gaussian(loss: Any) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    options = {"full": bool(loss.full), "eps": float(loss.eps), "reduction": _reduction(loss)}
    return "gaussian_nll", options, ()


# The loss sees the output after the model's own activation, which the loss
# object does not record, and the best bias differs with it (a rate of 4 is
# a bias of log 4 under exp, 4 under identity, 3.98 under softplus); guessing
# would write a wrong bias without a word.
_POISSON_ACTIVATION = (
    "`loss` PoissonNLLLoss(log_input=False) takes the model's output as the rate itself, "
    "and the bias that gives the best rate depends on the activation between the final layer "
    "and that output, which the loss does not record. Pass "
    "loss_options={'activation': ...}: 'exp' (rate = exp(layer output)), 'softplus' "
    "(rate = softplus(layer output)) or 'identity' (the layer's output is the rate)."
)
_GAUSSIAN_ACTIVATION = (
    "`loss` GaussianNLLLoss takes a variance, and the bias of the variance outputs depends "
    "on the activation that turns them into that variance, which the loss does not record. "
    "Pass loss_options={'variance_activation': ...}: 'exp' (the layer predicts a "
    "log-variance: var = exp(layer output)), 'softplus' (var = softplus(layer output)) or "
    "'identity' (the layer's output is the variance)."
)


def _required(loss: nn.Module) -> tuple[tuple[str, str], ...]:
    """Options of ``loss`` that only the user can give (see ``LossChoice.required``)."""
    if isinstance(loss, nn.PoissonNLLLoss) and not loss.log_input:
        return (("activation", _POISSON_ACTIVATION),)
    if isinstance(loss, nn.GaussianNLLLoss):
        return (("variance_activation", _GAUSSIAN_ACTIVATION),)
    return ()


def _kl_div(loss: Any) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    options = {
        "reduction": _reduction(loss, ("mean", "batchmean", "sum")),
        "log_target": bool(loss.log_target),
    }
    note = "KLDivLoss: the bias is the logit before the log-softmax that feeds the loss"
    return "kl_div", options, (note,)


# Order matters: subclasses before their bases (none of these subclass another).
_READERS: tuple[tuple[type[nn.Module], Callable[..., Any]], ...] = (
    (nn.CrossEntropyLoss, _cross_entropy),
    (nn.NLLLoss, _nll),
    (nn.BCEWithLogitsLoss, _bce_logits),
    (nn.BCELoss, _bce),
    (nn.MultiLabelSoftMarginLoss, _multilabel_soft_margin),
    (nn.MSELoss, _plain("mse")),
    (nn.L1Loss, _plain("l1")),
    (nn.HuberLoss, _huber),
    (nn.SmoothL1Loss, _smooth_l1),
    (nn.PoissonNLLLoss, _poisson),
    (nn.GaussianNLLLoss, _gaussian),
    (nn.KLDivLoss, _kl_div),
)

SUPPORTED = tuple(cls for cls, _ in _READERS)

# Torch losses that apply the sigmoid or softmax to the model's output
# themselves (BCELoss and NLLLoss expect it applied already).
_FROM_LOGITS = (nn.CrossEntropyLoss, nn.BCEWithLogitsLoss, nn.MultiLabelSoftMarginLoss)
# Core losses that plan a bias before their own sigmoid or softmax.
_CORE_FROM_LOGITS = frozenset(
    {"cross_entropy", "binary_cross_entropy", "softmax_focal", "sigmoid_focal"}
)


def is_torch_loss(module: object) -> bool:
    """True for torch's own loss modules and subclasses of the supported ones."""
    if isinstance(module, SUPPORTED):
        return True
    return isinstance(module, nn.Module) and type(module).__module__.startswith(
        "torch.nn.modules.loss"
    )


def read_torch_loss(loss: nn.Module) -> LossChoice:
    """Translates a torch loss module into a core loss name and options.

    Args:
        loss: one of torch's loss modules (see ``SUPPORTED``).

    Raises:
        InvalidInputError: the loss is not supported, or uses a reduction
            other than a single number per batch. Options the loss does not
            record (``LossChoice.required``) are checked by ``LossChoice.spec``.
    """
    for cls, reader in _READERS:
        if isinstance(loss, cls):
            name, options, notes = reader(loss)
            options = {k: v for k, v in options.items() if v is not None}
            return LossChoice(
                name,
                options,
                type(loss).__name__,
                notes,
                _required(loss),
                takes_logits=isinstance(loss, _FROM_LOGITS),
            )

    supported = ", ".join(cls.__name__ for cls in SUPPORTED)
    raise InvalidInputError(
        f"`loss` {type(loss).__name__} is not supported (supported torch losses: "
        f"{supported}); " + _NAMING_HINT + "."
    )


def choose_loss(loss: Any, options: Mapping[str, Any] | None) -> LossChoice | None:
    """Validates the callback's ``loss`` argument and reads it.

    Args:
        loss: None (find the loss module at fit start), a core loss name, a
            ``LossSpec`` or a torch loss module.
        options: extra options for the core loss, or None.

    Returns:
        The choice, or None when the loss is to be found at fit start.

    Raises:
        InvalidInputError: a plain function, an unsupported object, an
            unknown name, or options the loss does not take.
    """
    extra = dict(options or {})
    if loss is None:
        return None
    if isinstance(loss, (str, LossSpec)):
        choice = LossChoice(loss, {}, loss if isinstance(loss, str) else loss.name)
    elif isinstance(loss, nn.Module):
        choice = read_torch_loss(loss)
    elif callable(loss):
        name = getattr(loss, "__name__", type(loss).__name__)
        raise InvalidInputError(
            f"`loss` must be a torch loss module, a loss name or an initguard.LossSpec; "
            f"received the function {name!r}, whose options initguard cannot read: "
            + _NAMING_HINT
            + "."
        )
    else:
        raise InvalidInputError(
            "`loss` must be None, a torch loss module, a loss name or an initguard.LossSpec; "
            f"received {loss!r}."
        )

    spec = choice.spec(extra)  # validates the name and every option now
    if isinstance(loss, (str, LossSpec)) and spec.name in _CORE_FROM_LOGITS:
        choice = replace(choice, takes_logits=True)
    return choice
