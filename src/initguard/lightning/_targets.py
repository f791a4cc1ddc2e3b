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
    default_collate,
    default_convert,
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


# Rows taken straight from a TensorDataset for tracing: enough to measure the
# spread of a fresh head's outputs, few enough to cost nothing.
TRACE_ROWS = 64


def first_batch(loader: DataLoader[Any]) -> Any:
    """A small batch of what training sees, to trace the model's output layer with.

    A TensorDataset served with torch's default collation gives its first
    ``TRACE_ROWS`` rows without iterating the loader; any other loader gives
    its first batch, drawn with the loader's randomness restored afterwards.

    Raises:
        InvalidInputError: the loader yields nothing, or its dataset is an
            IterableDataset (see ``refuse_stream``).
    """
    dataset = loader.dataset
    if _serves_as_stored(loader) is None and _plain_getitem(dataset, TensorDataset):
        assert isinstance(dataset, TensorDataset)
        return tuple(t[:TRACE_ROWS] for t in dataset.tensors)
    refuse_stream(loader)
    with untouched_randomness(loader):
        batch = next(iter(loader), _NOTHING)
    if batch is _NOTHING:
        raise InvalidInputError(
            "The training DataLoader yields no batch, so initguard has nothing to trace the "
            "model with and no targets to read."
        )
    return batch


_NOTHING = object()


def refuse_stream(loader: DataLoader[Any]) -> None:
    """Fails before an IterableDataset is touched: initguard never iterates a stream.

    A stream may hand out each item once (a generator over one shared
    source), and nothing short of iterating it tells; the items initguard
    read would then never reach training.

    Raises:
        InvalidInputError: the dataset is an IterableDataset.
    """
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset):
        raise InvalidInputError(
            f"initguard never iterates a stream: the training dataset "
            f"{type(dataset).__name__} is an IterableDataset, and reading it could take items "
            "training needs. Pass `targets=` (the stream's training targets, or a "
            "representative sample of them) and `layer=` (or set the module's "
            "`example_input_array`)."
        )


def _serves_as_stored(loader: DataLoader[Any]) -> str | None:
    """Why the loader's batches may differ from its dataset's rows, or None when they cannot.

    Torch's default collation only stacks what ``__getitem__`` returns; any
    other ``collate_fn`` may change the targets (remap labels, pad, drop rows).
    """
    collate = loader.collate_fn
    if collate is default_collate or collate is default_convert:
        return None
    name = getattr(collate, "__qualname__", None) or type(collate).__name__
    return f"the DataLoader has its own collate_fn ({name}), which may change the targets"


def _plain_getitem(dataset: Any, cls: type) -> bool:
    """``dataset`` is a ``cls`` whose ``__getitem__`` is torch's own."""
    own = getattr(cls, "__getitem__", None)
    return isinstance(dataset, cls) and getattr(type(dataset), "__getitem__", None) is own


# Attributes under which datasets keep a transform applied to the targets.
_TARGET_TRANSFORMS = (
    "target_transform",
    "target_transforms",
    "label_transform",
    "labels_transform",
    "transform_target",
)


def _target_transform(dataset: Any) -> str | None:
    """The attribute holding a transform of the targets, or None when there is none."""
    for attribute in _TARGET_TRANSFORMS:
        if getattr(dataset, attribute, None) is not None:
            return attribute
    # torchvision's joint `transforms` (image and target together); its own
    # StandardTransform wrapper states the target part separately.
    joint = getattr(dataset, "transforms", None)
    if joint is not None and getattr(joint, "target_transform", joint) is not None:
        return "transforms"
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


Taker = Callable[[np.ndarray], Any]


def dataset_targets(
    dataset: Dataset[Any], targets_from_batch: TargetsOf | None
) -> tuple[Taker | None, str]:
    """A function from indices to targets, read from what the dataset stores.

    Only when those stored targets are provably what ``__getitem__`` returns:
    torch's own TensorDataset, Subset and ConcatDataset, or a dataset with
    ``.targets``/``.labels`` and no transform of the targets.

    Returns:
        (take, description of the source), or (None, why the dataset's
        stored targets cannot stand in for what training sees).
    """
    if isinstance(dataset, TensorDataset):
        if not _plain_getitem(dataset, TensorDataset):
            return None, f"{type(dataset).__name__} overrides TensorDataset.__getitem__"
        whole = (
            targets_from_batch(dataset.tensors)
            if targets_from_batch is not None
            else dataset.tensors[-1]
        )
        what = (
            "the TensorDataset's last tensor"
            if targets_from_batch is None
            else "targets_from_batch applied to the TensorDataset's tensors"
        )
        return _taker(whole), what

    if isinstance(dataset, Subset):
        if not _plain_getitem(dataset, Subset):
            return None, f"{type(dataset).__name__} overrides Subset.__getitem__"
        take_inner, what = dataset_targets(dataset.dataset, targets_from_batch)
        if take_inner is None:
            return None, what
        inner = take_inner
        mapping = np.asarray(dataset.indices, dtype=np.int64)
        return (lambda idx: inner(mapping[idx])), f"{what} (through a Subset)"

    if isinstance(dataset, ConcatDataset):
        if not _plain_getitem(dataset, ConcatDataset):
            return None, f"{type(dataset).__name__} overrides ConcatDataset.__getitem__"
        takers: list[Taker] = []
        for part in dataset.datasets:
            take, what = dataset_targets(part, targets_from_batch)
            if take is None:
                return None, what
            takers.append(take)
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
            transform = _target_transform(dataset)
            if transform is not None:
                return None, (
                    f"the dataset's `.{attribute}` are not what training sees: its "
                    f"`{transform}` transforms them in __getitem__"
                )
            return _taker(values), f"the dataset's `.{attribute}`"
    return None, "the dataset exposes no targets (TensorDataset, `.targets`, `.labels`)"


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

    Reads the targets from the dataset where they are provably what the
    training batches hold; otherwise iterates the loader (inputs included)
    for at most ``max_batches`` batches.

    Returns:
        Notes for the report saying which source was used, and why.

    Raises:
        InvalidInputError: the loader yields nothing, or its dataset is an
            IterableDataset (see ``refuse_stream``).
    """
    refuse_stream(loader)
    take: Taker | None = None
    why = _serves_as_stored(loader)
    if why is None:
        take, why = dataset_targets(loader.dataset, targets_from_batch)
    if take is not None:
        indices = epoch_indices(loader)
        if indices is not None:
            if not indices:
                raise InvalidInputError("The training DataLoader's sampler yields no index.")
            stats.update(take(np.asarray(indices, dtype=np.int64)))
            sampler = type(loader.sampler).__name__
            return [
                f"targets read from {why}, {len(indices)} rows in the order and with the "
                f"repeats of one epoch of the loader's {sampler} (inputs not read)"
            ]

    return _pass_over_loader(loader, stats, targets_from_batch, max_batches, why)


def _pass_over_loader(
    loader: DataLoader[Any],
    stats: Stats,
    targets_from_batch: TargetsOf | None,
    max_batches: int,
    why: str,
) -> list[str]:
    """Iterates the loader (never a stream's) and keeps only the target part of each batch."""
    batches = 0
    truncated = False
    with untouched_randomness(loader):
        for batch in itertools.islice(iter(loader), max_batches + 1):
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
        f"loaded too), as training sees them: {why}"
    )
    if truncated:
        note += (
            f"; stopped at max_target_batches={max_batches}, so the statistics cover only "
            "the first batches of an epoch"
        )
    return [note]
