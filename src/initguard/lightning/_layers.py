"""Finding the layer that produces the model's output, and reading and writing its bias."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .._errors import InvalidInputError


@dataclass(frozen=True)
class Head:
    """The final layer and what initguard needs to know about it.

    Attributes:
        name: the dotted module name (as ``named_modules`` spells it).
        module: the module itself.
        width: the number of output units (bias entries, or output features).
        bias: the bias tensor, or None when the layer has none.
        in_buffer: whether that bias is a buffer rather than a parameter.
        found_by: how the layer was chosen, for the report.
        squashed_by: the probability activations ("sigmoid", "softmax") the
            traced forward applies between this layer and the model's
            output, in order from the output back; empty when none were
            seen or the layer was named rather than traced.
    """

    name: str
    module: nn.Module
    width: int
    bias: torch.Tensor | None
    in_buffer: bool
    found_by: str
    squashed_by: tuple[str, ...] = ()


def describe(module: nn.Module, name: str, found_by: str) -> Head:
    """Reads the width and the bias of a chosen layer."""
    bias = getattr(module, "bias", None)
    in_buffer = False
    if isinstance(bias, nn.Parameter):
        pass
    elif isinstance(bias, torch.Tensor):
        in_buffer = True
    else:
        bias = None

    width = _width(module, bias)
    if width is None:
        raise InvalidInputError(
            f"`layer` {name!r} ({type(module).__name__}) has neither a bias nor a weight, so "
            "its output width is unknown; name the module that computes the output "
            "(a Linear or Conv layer)."
        )
    return Head(name, module, width, bias, in_buffer, found_by)


def _width(module: nn.Module, bias: torch.Tensor | None) -> int | None:
    if bias is not None:
        return int(bias.numel())
    for attribute in ("out_features", "out_channels", "num_embeddings"):
        value = getattr(module, attribute, None)
        if isinstance(value, int):
            return value
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim >= 1:
        return int(weight.shape[0])
    return None


def by_name(model: nn.Module, name: str) -> Head:
    """The layer named by the user.

    Raises:
        InvalidInputError: no module has that name.
    """
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        with_bias = [n for n, m in modules.items() if n and _has_bias_slot(m)]
        shown = ", ".join(repr(n) for n in with_bias[-8:]) or "none"
        raise InvalidInputError(
            f"`layer` must name a submodule of {type(model).__name__}; received {name!r}. "
            f"Modules with a bias: {shown}."
        )
    return describe(modules[name], name, "named by layer=")


def _has_bias_slot(module: nn.Module) -> bool:
    """A module that declares a bias (even ``bias=False``, which stores None)."""
    return hasattr(module, "bias") and (
        module.bias is None or isinstance(module.bias, torch.Tensor)
    )


def find_output_layer(
    model: nn.Module,
    run_forward: Callable[[], Any],
) -> Head:
    """Finds the layer whose output becomes the model's output.

    Every module's output is recorded during one forward pass; then the
    autograd graph is walked back from the model's output. Modules without a
    bias slot (activations, dropout, reshapes) are walked through; the first
    module with one on every path is the head. Registration order plays no
    part, so a head registered before the body is still found.

    Args:
        model: the model.
        run_forward: runs one forward pass of ``model`` and returns its output.

    Raises:
        InvalidInputError: the forward pass failed (the model has no
            ``forward``, or it needs more than the batch inputs), the output
            is not one tensor, no module with a bias produced it, or several
            did (the message lists them).
    """
    produced: dict[int, list[str]] = {}
    by_tensor: dict[int, list[str]] = {}
    keep: list[Any] = []  # holds graph nodes alive so their ids stay unique
    modules = dict(model.named_modules())

    def record(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                return
            keep.append(output)
            by_tensor.setdefault(id(output), []).append(name)
            if output.grad_fn is not None:
                keep.append(output.grad_fn)
                produced.setdefault(id(output.grad_fn), []).append(name)

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in modules.items() if n]
    try:
        with torch.enable_grad():
            output = run_forward()
    except InvalidInputError:
        raise
    except Exception as error:
        # A model that computes everything in training_step (no forward), or
        # whose forward takes more than the batch inputs, cannot be traced;
        # the layer can still be named.
        detail = " ".join(str(error).split())
        if len(detail) > 200:
            detail = detail[:197] + "..."
        raise InvalidInputError(
            f"The output layer could not be traced because the forward pass of "
            f"{type(model).__name__} on the batch inputs failed ({type(error).__name__}: "
            f'{detail}); pass `layer="name.of.final.module"` (its name in '
            "named_modules()) to name the final layer."
        ) from error
    finally:
        for handle in handles:
            handle.remove()

    if not isinstance(output, torch.Tensor):
        raise InvalidInputError(
            f"The model's forward returned {type(output).__name__}, not one tensor, so the "
            "output layer cannot be traced; pass `layer=` with the name of the final layer."
        )

    candidates, reasons, squashed_by = _walk(output, produced, by_tensor, modules)
    keep.clear()
    if len(candidates) == 1:
        head = describe(modules[candidates[0]], candidates[0], "traced from the forward pass")
        return replace(head, squashed_by=squashed_by)
    if candidates:
        listed = ", ".join(repr(c) for c in candidates)
        raise InvalidInputError(
            f"Several layers feed the model's output ({listed}); pass `layer=` with the one "
            "whose bias initguard should set."
        )
    why = f" ({reasons[0]})" if reasons else ""
    raise InvalidInputError(
        "No layer with a bias produces the model's output" + why + "; pass `layer=` with the "
        "name of the final layer."
    )


# Autograd nodes of the activations that turn logits into probabilities
# (nn.Sigmoid, nn.Softmax, torch.sigmoid, F.softmax all record these).
_SQUASHES = {"SigmoidBackward0": "sigmoid", "SoftmaxBackward0": "softmax"}


def _walk(
    output: torch.Tensor,
    produced: dict[int, list[str]],
    by_tensor: dict[int, list[str]],
    modules: dict[str, nn.Module],
) -> tuple[list[str], list[str], tuple[str, ...]]:
    """Walks the autograd graph back from the output to the first biased modules.

    Returns:
        The heads found, why none was found, and the probability
        activations on the paths from the output back to those heads.
    """
    direct = by_tensor.get(id(output), [])
    if output.grad_fn is None:
        heads = _deepest_with_bias(direct, modules)
        reason = "the output carries no autograd graph and no module returned it as is"
        return heads, ([] if heads else [reason]), ()

    found: list[str] = []
    reasons: list[str] = []
    squashed: list[str] = []
    seen: set[int] = set()
    # Each node carries the activations met on the way to it from the output,
    # so only those on a path that ends at a head are reported.
    queue: deque[tuple[Any, tuple[str, ...]]] = deque([(output.grad_fn, ())])
    while queue:
        node, path = queue.popleft()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        names = produced.get(id(node), [])
        heads = _deepest_with_bias(names, modules)
        if heads:
            found.extend(h for h in heads if h not in found)
            squashed.extend(a for a in path if a not in squashed)
            continue
        squash = _SQUASHES.get(type(node).__name__)
        if squash is not None:
            path = (*path, squash)
        parents = [fn for fn, _ in node.next_functions if fn is not None]
        # A parameter used outside any module after the last biased layer (say
        # F.linear(x, self.w)) means the traced layer is not the output layer.
        if not names and any(type(fn).__name__ == "AccumulateGrad" for fn in parents):
            reasons.append(
                f"the output passes through {type(node).__name__} with a parameter used "
                "outside any module"
            )
            return [], reasons, ()
        queue.extend((parent, path) for parent in parents)
    return found, reasons, tuple(squashed)


def _deepest_with_bias(names: list[str], modules: dict[str, nn.Module]) -> list[str]:
    with_bias = [n for n in names if _has_bias_slot(modules[n])]
    if not with_bias:
        return []
    # A wrapper and the layer inside it may return the same tensor: the
    # innermost one owns the bias.
    deepest = max(with_bias, key=lambda n: n.count("."))
    return [deepest]


def write_bias(head: Head, values: np.ndarray) -> None:
    """Writes ``values`` into the head's bias, in place, in its dtype and on its device.

    The tensor object is kept, so ``state_dict`` keys and shapes, optimiser
    references and DDP buckets are unchanged.
    """
    assert head.bias is not None
    bias = head.bias
    new = torch.as_tensor(values, dtype=torch.float64).reshape(bias.shape)
    with torch.no_grad():
        bias.copy_(new.to(device=bias.device, dtype=bias.dtype))
