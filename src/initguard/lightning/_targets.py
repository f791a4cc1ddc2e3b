"""Reading training targets from a DataLoader, without touching the inputs where possible."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    ConcatDataset,
    DataLoader,
    Dataset,
    IterableDataset,
    Subset,
    TensorDataset,
)

from .._errors import InvalidInputError
from .._stats import Stats

TargetsOf = Callable[[Any], Any]

# Keys a dict batch commonly holds its targets and inputs under.
_TARGET_KEYS = ("target", "targets", "label", "labels", "y")
_INPUT_KEYS = ("input", "inputs", "x")


def targets_of_batch(batch: Any, targets_from_batch: TargetsOf | None = None) -> Any:
    """The target part of one batch: the user's selector, or the last element.

    Raises:
        InvalidInputError: the batch layout is not one initguard can read.
    """
    if targets_from_batch is not None:
        return targets_from_batch(batch)
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[-1]
    if isinstance(batch, Mapping):
        for key in _TARGET_KEYS:
            if key in batch:
                return batch[key]
    raise InvalidInputError(
        f"Cannot tell the targets in a batch of type {type(batch).__name__}: initguard reads "
        "the last element of a tuple or list, or a dict's 'target'/'label'/'y' entry. Pass "
        "`targets_from_batch=` (a function of the batch) or `targets=`."
    )


def inputs_of_batch(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword arguments for the model's forward, from one batch.

    Raises:
        InvalidInputError: the batch layout is not one initguard can read.
    """
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return tuple(batch[:-1]), {}
    if isinstance(batch, Mapping):
        for key in _INPUT_KEYS:
            if key in batch:
                return (batch[key],), {}
    raise InvalidInputError(
        f"Cannot tell the inputs in a batch of type {type(batch).__name__} to trace the "
        "model's output layer; pass `layer=` or set the module's `example_input_array`."
    )


def _generators(root: Any, depth: int = 4) -> list[torch.Generator]:
    """The torch generators a loader, its samplers and their wrappers hold."""
    found: list[torch.Generator] = []
    seen: set[int] = set()
    stack = [(root, 0)]
    while stack:
        obj, level = stack.pop()
        if id(obj) in seen or level > depth:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Generator):
            found.append(obj)
            continue
        module = type(obj).__module__
        if not (module.startswith(("torch.utils.data", "lightning", "pytorch_lightning"))):
            continue
        stack.extend((value, level + 1) for value in vars(obj).values())
    return found


@contextlib.contextmanager
def untouched_randomness(loader: Any) -> Iterator[None]:
    """Restores torch's global generator and the loader's own generators on exit.

    Drawing one epoch of indices (or one batch) advances the generators the
    loader shuffles with; restoring them means training sees exactly the
    order it would have seen without initguard.
    """
    generators = _generators(loader)
    states = [g.get_state() for g in generators]
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            for generator, state in zip(generators, states, strict=True):
                generator.set_state(state)


def first_rows(loader: DataLoader[Any]) -> Any | None:
    """The first two rows of a TensorDataset as a batch, without iterating the loader."""
    dataset = loader.dataset
    if isinstance(dataset, TensorDataset):
        return tuple(t[:2] for t in dataset.tensors)
    return None


def epoch_indices(loader: DataLoader[Any]) -> list[int] | None:
    """The dataset indices one epoch of the loader visits, in its sampler's order.

    The generators a random sampler draws from are restored afterwards, so
    training sees exactly the draws it would have seen.
    Weighted and distributed samplers are honoured (oversampling, the rank's
    shard and its padding), so the statistics describe what the model trains on.
    """
    if isinstance(loader.dataset, IterableDataset):
        return None
    source: Iterable[Any] = (
        loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
    )
    with untouched_randomness(loader):
        indices: list[int] = []
        for item in source:
            if isinstance(item, (list, tuple)):
                indices.extend(int(i) for i in item)
            elif isinstance(item, torch.Tensor):
                indices.extend(int(i) for i in item.reshape(-1).tolist())
            else:
                indices.append(int(item))
    return indices


def dataset_targets(
    dataset: Dataset[Any], targets_from_batch: TargetsOf | None
) -> tuple[Callable[[np.ndarray], Any], str] | None:
    """A function from indices to targets, read from what the dataset exposes.

    Returns:
        (take, description), or None when the dataset exposes no targets.
    """
    if isinstance(dataset, TensorDataset):
        whole = (
            targets_from_batch(dataset.tensors)
            if targets_from_batch is not None
            else dataset.tensors[-1]
        )
        return _taker(whole), "the TensorDataset's last tensor" if targets_from_batch is None else (
            "targets_from_batch applied to the TensorDataset's tensors"
        )

    if isinstance(dataset, Subset):
        inner = dataset_targets(dataset.dataset, targets_from_batch)
        if inner is None:
            return None
        take_inner, what = inner
        mapping = np.asarray(dataset.indices, dtype=np.int64)
        return (lambda idx: take_inner(mapping[idx])), f"{what} (through a Subset)"

    if isinstance(dataset, ConcatDataset):
        parts = [dataset_targets(d, targets_from_batch) for d in dataset.datasets]
        if any(p is None for p in parts):
            return None
        takers = [p[0] for p in parts if p is not None]
        bounds = np.asarray(dataset.cumulative_sizes, dtype=np.int64)

        def take_concat(idx: np.ndarray) -> Any:
            which = np.searchsorted(bounds, idx, side="right")
            pieces = []
            for part in np.unique(which):
                local = idx[which == part] - (bounds[part - 1] if part else 0)
                pieces.append(_to_array(takers[part](local)))
            return np.concatenate(pieces)

        return take_concat, "the targets of each dataset in a ConcatDataset"

    for attribute in ("targets", "labels"):
        values = getattr(dataset, attribute, None)
        if values is not None and _is_sequence(values):
            if len(values) != len(dataset):  # type: ignore[arg-type]
                continue
            return _taker(values), f"the dataset's `.{attribute}`"
    return None


def _is_sequence(values: Any) -> bool:
    return isinstance(values, (torch.Tensor, np.ndarray, Sequence)) and not isinstance(values, str)


def _to_array(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.dtype == torch.bfloat16:
            values = values.float()
        return values.numpy()
    return np.asarray(values)


def _taker(values: Any) -> Callable[[np.ndarray], Any]:
    if isinstance(values, torch.Tensor):
        return lambda idx: values[torch.as_tensor(idx, dtype=torch.long)]
    array = np.asarray(values)
    return lambda idx: array[idx]


def collect(
    loader: DataLoader[Any],
    stats: Stats,
    targets_from_batch: TargetsOf | None,
    max_batches: int,
) -> list[str]:
    """Adds one epoch's targets, as the loader would serve them, to ``stats``.

    Reads the targets from the dataset where it exposes them; otherwise
    iterates the loader (inputs included) for at most ``max_batches``
    batches, as a last resort.

    Returns:
        Notes for the report saying which source was used.
    """
    found = dataset_targets(loader.dataset, targets_from_batch)
    if found is not None:
        indices = epoch_indices(loader)
        if indices is not None:
            take, what = found
            if not indices:
                raise InvalidInputError("The training DataLoader's sampler yields no index.")
            stats.update(take(np.asarray(indices, dtype=np.int64)))
            sampler = type(loader.sampler).__name__
            return [
                f"targets read from {what}, {len(indices)} rows in the order and with the "
                f"repeats of one epoch of the loader's {sampler} (inputs not read)"
            ]

    return _pass_over_loader(loader, stats, targets_from_batch, max_batches)


def _pass_over_loader(
    loader: DataLoader[Any],
    stats: Stats,
    targets_from_batch: TargetsOf | None,
    max_batches: int,
) -> list[str]:
    """The last resort: iterate the loader and keep only the target part of each batch."""
    batches = 0
    truncated = False
    with untouched_randomness(loader):
        iterator = iter(loader)
        for batch in itertools.islice(iterator, max_batches + 1):
            if batches == max_batches:
                truncated = True
                break
            stats.update(targets_of_batch(batch, targets_from_batch))
            batches += 1
    if batches == 0:
        raise InvalidInputError(
            "The training DataLoader yields no batch; initguard has no targets."
        )

    note = (
        f"targets read by a pass over the training DataLoader ({batches} batches, inputs "
        "loaded too): the dataset exposes no targets (TensorDataset, `.targets`, `.labels`)"
    )
    if truncated:
        note += (
            f"; stopped at max_target_batches={max_batches}, so the statistics cover only "
            "the first batches of an epoch"
        )
    return [note]
