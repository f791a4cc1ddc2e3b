"""The Lightning callback: set the output bias at fit start, check the step-0 loss."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import move_data_to_device
from torch import nn
from torch.utils.data import IterableDataset
from typing_extensions import override

from .._check import skipped
from .._config import Tolerance
from .._errors import InvalidInputError
from .._guard import Guard, GuardViews
from .._loss_base import LossSpec
from .._plan import BatchLoss, Plan
from .._stats import Stats
from .._targets import to_numpy
from . import _layers, _targets
from ._torch_losses import LossChoice, choose_loss, is_torch_loss, read_torch_loss


class InitGuard(GuardViews, Callback):
    r"""Sets the final layer's bias to the best constant output and checks the step-0 loss.

    At fit start the callback reads the training targets, computes the
    constant output that minimises the loss over them (summed across
    processes), and writes it into the bias of the layer that produces the
    model's output. After the first training batch it compares the measured
    loss with the loss that bias implies on that batch's own targets (so the
    check carries no sampling error) and with the spread the fresh layer's
    weights add around it (measured in the forward pass that finds the
    layer), logs ``initguard/expected_loss``,
    ``initguard/step0_loss`` and ``initguard/deviation`` to the trainer's
    loggers, and warns (or, when strict, raises ``initguard.InitLossError``
    before the second optimizer step) when they disagree beyond the
    tolerance.

    A stream (an ``IterableDataset``) is never read by initguard, since
    nothing tells a stream that can be replayed from one that shares a
    single source with training: pass ``targets=`` (and ``layer=``, or set
    the module's ``example_input_array``) with one.

    A fit resumed from a checkpoint (``ckpt_path``) keeps its trained bias
    and skips the check. Weights loaded by hand before ``fit`` look like a
    fresh model: pass ``set_bias=False`` to keep them.

    Note:
        Strategies that shard the model or restore weights after
        ``on_fit_start`` (FSDP, DeepSpeed, ModelParallel) are not supported
        yet: the bias is written into unsharded parameters only. Under DDP
        the statistics of all processes are summed, every process writes the
        same bias, and every process reaches the same verdict.

    Args:
        loss: a torch loss module (``nn.CrossEntropyLoss(weight=...)``, ...),
            a core loss name (``"cross_entropy"``, ``"mse"``, ...) or an
            ``initguard.LossSpec``. Defaults to None: the single torch loss
            module found among the LightningModule's submodules.
        loss_options: options for the core loss (``num_classes``, ``weight``,
            ``delta``, ...), overriding those read from a loss module.
            Defaults to None.
        layer: dotted name of the final layer (as ``named_modules`` gives it).
            Defaults to None: traced from one forward pass of the first
            batch's inputs (or ``example_input_array``; required for an
            ``IterableDataset`` when ``layer`` is not given).
        targets: the training targets, overriding the data. Defaults to
            None: read from the training DataLoader (required for an
            ``IterableDataset``: its targets, or a representative sample).
        targets_from_batch: a function returning the target part of one
            batch (or of a TensorDataset's tuple of tensors). Defaults to None:
            the last element of a tuple, or a dict's ``"target"``/``"label"``/
            ``"y"`` entry.
        set_bias: write the bias. Defaults to True; False only checks, and the
            report says why the bias was not written.
        strict: raise instead of warning on a failed check. Defaults to None:
            the environment variable ``INITGUARD_STRICT`` decides.
        tolerance: an ``initguard.Tolerance``. Defaults to None (the default
            tolerance).
        allow_buffer: write a bias held in a buffer rather than a parameter.
            Defaults to False.
        max_target_batches: the most batches read when a map-style dataset
            exposes no targets and the loader itself must be iterated.
            Defaults to 1000.

    Example::

        guard = InitGuard()
        Trainer(callbacks=[guard]).fit(model, datamodule=dm)
        summary = guard.report.message
    """

    def __init__(
        self,
        loss: nn.Module | str | LossSpec | None = None,
        *,
        loss_options: Mapping[str, Any] | None = None,
        layer: str | None = None,
        targets: Any = None,
        targets_from_batch: Callable[[Any], Any] | None = None,
        set_bias: bool = True,
        strict: bool | None = None,
        tolerance: Tolerance | None = None,
        allow_buffer: bool = False,
        max_target_batches: int = 1000,
    ) -> None:
        super().__init__()
        if loss_options is not None and (
            not isinstance(loss_options, Mapping)
            or not all(isinstance(k, str) for k in loss_options)
        ):
            raise InvalidInputError(
                "`loss_options` must be a mapping of option names to values, or None; "
                f"received {loss_options!r}."
            )
        self._loss_options = dict(loss_options or {})
        self._loss_choice = choose_loss(loss, self._loss_options)

        if layer is not None and (not isinstance(layer, str) or not layer):
            raise InvalidInputError(
                f"`layer` must be a non-empty module name such as 'head' or 'net.3', or None; "
                f"received {layer!r}."
            )
        self._layer = layer

        self._targets = None if targets is None else to_numpy(targets, "targets")
        if targets_from_batch is not None and not callable(targets_from_batch):
            raise InvalidInputError(
                "`targets_from_batch` must be a function of one batch, or None; "
                f"received {targets_from_batch!r}."
            )
        self._targets_from_batch = targets_from_batch

        for name, value in (("set_bias", set_bias), ("allow_buffer", allow_buffer)):
            if not isinstance(value, bool):
                raise InvalidInputError(f"`{name}` must be True or False; received {value!r}.")
        self._set_bias = set_bias
        self._allow_buffer = allow_buffer

        if (
            isinstance(max_target_batches, bool)
            or not isinstance(max_target_batches, int)
            or max_target_batches < 1
        ):
            raise InvalidInputError(
                f"`max_target_batches` must be an integer >= 1; received {max_target_batches!r}."
            )
        self._max_target_batches = max_target_batches

        self._guard = Guard(strict=strict, tolerance=tolerance)
        self._pending = False
        self._bias_set = False
        self._head_name = ""
        self._notes: list[str] = []
        self._width_is_classes = False
        self._doubled_seen = False
        # The fresh head's output minus its old bias, [rows, width], from the
        # tracing pass; and the loss that spread adds (rank-local).
        self._deviations: np.ndarray | None = None
        self._spread: float | None = None
        self.restored_report: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(layer=self._layer)

    # ----------------------------------------------------------------- hooks

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset()
        if trainer.ckpt_path is not None:
            self._skip(
                trainer,
                f"fit resumed from checkpoint {trainer.ckpt_path!s}: the trained bias is kept "
                "and the step-0 loss of a trained model is not checked",
            )
            return
        self._prepare(trainer, pl_module)

    @override
    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self._pending:
            return
        self._pending = False
        self._check_first_batch(trainer, pl_module, outputs, batch)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._pending:
            return
        self._pending = False
        self._skip(trainer, "no training batch ran, so there is no step-0 loss to check")

    @override
    def state_dict(self) -> dict[str, Any]:
        report = self._guard.report
        return {"report": None if report is None else _plain(report.to_dict())}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The restored report describes the fit that wrote the checkpoint; a
        # resumed fit keeps its bias and reports that instead.
        self.restored_report = state_dict.get("report")

    # ------------------------------------------------------------- fit start

    def _reset(self) -> None:
        self._guard.reset()
        self._pending = False
        self._bias_set = False
        self._head_name = ""
        self._notes = []
        self._doubled_seen = False
        self._deviations = None
        self._spread = None

    def _skip(self, trainer: Trainer, reason: str) -> None:
        report = skipped(
            reason, layer=self._head_name, bias_set=self._bias_set, notes=tuple(self._notes)
        )
        self._guard.skip(report, is_global_zero=trainer.is_global_zero)

    def _prepare(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Plans the bias from the reduced statistics and writes it."""
        choice = self._resolve_loss(pl_module)
        loader = None
        if self._needs_loader():
            loader = self._train_loader(trainer)
            if loader is None:
                self._skip(trainer, "no training batch will run, so there is nothing to plan")
                return
            self._refuse_stream(pl_module, loader)
        head = self._find_head(trainer, pl_module, loader)
        self._check_writable(head)
        spec = self._make_spec(choice, head)
        self._note_squash(choice, spec, head)
        self._head_name = head.name if head is not None else ""
        context = f"loss {choice.source}" + (f", layer {head.name!r}" if head else "")
        if head is not None and spec.name == "cross_entropy" and self._width_is_classes:
            context += f", num_classes={head.width} from the layer's outputs"

        stats = self._gather(trainer, self._local_stats(spec, loader), context)
        try:
            plan = self._guard.solve(spec, stats)
        except InvalidInputError as error:
            raise InvalidInputError(f"initguard ({context}): {error}") from error
        self._notes.extend(choice.notes)

        if head is not None and plan.bias.shape[0] != head.width:
            raise InvalidInputError(
                f"initguard ({context}): the layer has {head.width} outputs but the targets "
                f"and loss imply {plan.bias.shape[0]}; give the layer one output per "
                "class or target column (or pass `layer=`, `loss_options={'num_classes': ...}`)."
            )
        self._apply_bias(head, plan.bias)
        self._pending = True

    def _resolve_loss(self, pl_module: LightningModule) -> LossChoice:
        if self._loss_choice is not None:
            return self._loss_choice

        found = [(n, m) for n, m in pl_module.named_modules() if n and is_torch_loss(m)]
        if len(found) != 1:
            listed = ", ".join(f"{n!r} ({type(m).__name__})" for n, m in found) or "none"
            raise InvalidInputError(
                f"`loss` was not given and {type(pl_module).__name__} must hold exactly one "
                f"torch loss module to read it from; found {listed}. Pass `loss=` (the loss "
                'module, or a name such as loss="cross_entropy").'
            )
        choice = read_torch_loss(found[0][1])
        choice.spec(self._loss_options)  # options fit this loss
        return choice

    def _needs_loader(self) -> bool:
        return self._targets is None or self._layer is None

    def _train_loader(self, trainer: Trainer) -> Any:
        # The fit loop loads the training data after on_fit_start; loading it
        # here (once) gives the same loader, with any distributed sampler.
        trainer.fit_loop.setup_data()
        loader = trainer.train_dataloader
        if loader is None:
            return None
        if not isinstance(loader, torch.utils.data.DataLoader):
            raise InvalidInputError(
                "initguard reads targets from a single training DataLoader; received "
                f"{type(loader).__name__}. Pass `targets=` (and `layer=`)."
            )
        return loader

    def _refuse_stream(self, pl_module: LightningModule, loader: Any) -> None:
        """Fails before a stream is read when initguard would have to iterate it.

        Iterating a stream may take items training needs (a generator over
        one shared source hands out each item once), and nothing short of
        iterating it tells whether it would.

        Raises:
            InvalidInputError: the dataset is an IterableDataset and
                ``targets`` is not given, or tracing the head would need a
                batch of it.
        """
        dataset = loader.dataset
        if not isinstance(dataset, IterableDataset):
            return
        needs_layer = self._layer is None and pl_module.example_input_array is None
        if self._targets is not None and (not needs_layer or not self._set_bias):
            return
        wanted = []
        if self._targets is None:
            wanted.append(
                "`targets=` (the stream's training targets, or a representative sample of them)"
            )
        if needs_layer:
            wanted.append(
                "`layer=` (the final layer's name, e.g. layer=\"head\") or set the module's "
                "`example_input_array`"
            )
        given = "targets given" if self._targets is not None else "no `targets=`"
        given += ", no `layer=`" if self._layer is None else f", layer={self._layer!r}"
        raise InvalidInputError(
            f"initguard never iterates a stream: the training dataset "
            f"{type(dataset).__name__} is an IterableDataset, and reading it could take items "
            f"training needs. Pass {' and '.join(wanted)}; received {given}."
        )

    def _note_squash(self, choice: LossChoice, spec: LossSpec, head: _layers.Head | None) -> None:
        """Notes a sigmoid or softmax after the head when the loss applies it too."""
        if head is None or not choice.takes_logits:
            return
        activation = getattr(spec, "activation", "")
        if activation not in head.squashed_by:
            return
        self._doubled_seen = True
        name = {"sigmoid": "Sigmoid", "softmax": "Softmax"}[activation]
        self._notes.append(
            f"the model's output passes through a {name} after the head while the loss "
            f"({choice.source}) expects logits (seen in forward, which training_step may not use)"
        )

    def _find_head(
        self, trainer: Trainer, pl_module: LightningModule, loader: Any
    ) -> _layers.Head | None:
        if self._layer is not None:
            self._notes.append(
                "fresh-head spread not measured: `layer=` was given, so no forward pass ran"
            )
            return _layers.by_name(pl_module, self._layer)

        outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]] = {}
        try:
            head = _layers.find_output_layer(
                pl_module, lambda: self._forward_once(trainer, pl_module, loader, outputs)
            )
        except InvalidInputError as error:
            if self._set_bias:
                raise
            # Checking alone needs no layer.
            self._notes.append(f"output layer not identified ({error})")
            return None
        self._deviations = _deviations(head, outputs.get(head.name, []))
        if self._deviations is None:
            self._notes.append(
                f"fresh-head spread not measured: the output of layer {head.name!r} could not "
                f"be read as [rows, {head.width}] from at least {_MIN_SPREAD_ROWS} rows"
            )
        return head

    def _forward_once(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        loader: Any,
        outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]],
    ) -> Any:
        """One forward pass of a little real input, with no lasting effect on the model.

        Every module with a bias slot records its output and its bias as they
        were (before initguard writes one) into ``outputs``.
        """
        example = pl_module.example_input_array
        args: tuple[Any, ...]
        kwargs: dict[str, Any]
        if example is not None:
            if isinstance(example, Mapping):
                args, kwargs = (), dict(example)
            elif isinstance(example, tuple):
                args, kwargs = example, {}
            else:
                args, kwargs = (example,), {}
        else:
            batch = _targets.first_batch(loader)
            args, kwargs = _targets.inputs_of_batch(batch)

        precision = trainer.precision_plugin
        args = move_data_to_device(precision.convert_input(args), pl_module.device)
        kwargs = move_data_to_device(precision.convert_input(kwargs), pl_module.device)

        def record(name: str) -> Callable[..., None]:
            def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
                if isinstance(output, torch.Tensor):
                    bias = getattr(module, "bias", None)
                    old = bias.detach().clone() if isinstance(bias, torch.Tensor) else None
                    outputs.setdefault(name, []).append((output.detach(), old))

            return hook

        handles = [
            m.register_forward_hook(record(n))
            for n, m in pl_module.named_modules()
            if n and hasattr(m, "bias")
        ]
        # Evaluation mode, so batch-norm statistics do not move; the modes are
        # restored one by one afterwards.
        modes = {m: m.training for m in pl_module.modules()}
        pl_module.eval()
        try:
            with torch.random.fork_rng(devices=[]), precision.forward_context():
                return pl_module(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
            for module, mode in modes.items():
                module.training = mode

    def _make_spec(self, choice: LossChoice, head: _layers.Head | None) -> LossSpec:
        extra = dict(self._loss_options)
        spec = choice.spec(extra)
        self._width_is_classes = False
        # Softmax losses get one class per output unit, so never-seen classes
        # at the end of the range still get a (floored) bias.
        if (
            head is not None
            and spec.name == "cross_entropy"
            and getattr(spec, "num_classes", None) is None
        ):
            spec = choice.spec({**extra, "num_classes": head.width})
            self._width_is_classes = True
        return spec

    def _local_stats(self, spec: LossSpec, loader: Any) -> Stats | str:
        """This process's statistics, or an error message to share with the others."""
        stats = spec.new_stats()
        try:
            if self._targets is not None:
                stats.update(self._targets)
                self._notes.append("targets given to the callback (`targets=`)")
            else:
                self._notes.extend(
                    _targets.collect(
                        loader, stats, self._targets_from_batch, self._max_target_batches
                    )
                )
        except InvalidInputError as error:
            return str(error)
        return stats

    def _gather(self, trainer: Trainer, local: Stats | str, context: str) -> Stats:
        """Merges every process's statistics in rank order (the same on every rank)."""
        world = trainer.world_size
        if world > 1 and self._targets is None and dist.is_available() and dist.is_initialized():
            parts: list[Any] = [None] * world
            dist.all_gather_object(parts, local)
            self._notes.append(f"statistics summed over {world} processes")
        else:
            parts = [local]

        # Every rank raises together, so none is left waiting in a collective.
        errors = [p for p in parts if isinstance(p, str)]
        if errors:
            raise InvalidInputError(
                f"initguard ({context}) could not use the training targets: {errors[0]}"
            )
        merged = parts[0]
        for part in parts[1:]:
            merged = merged.merge(part)
        return merged

    def _check_writable(self, head: _layers.Head | None) -> None:
        """Fails before any target is read when the bias cannot be written."""
        if not self._set_bias:
            return
        assert head is not None  # tracing failures raise when the bias is to be set
        if head.bias is None:
            raise InvalidInputError(
                f"initguard: layer {head.name!r} ({type(head.module).__name__}) has no bias "
                "(bias=False, or a head whose weight is tied to an embedding), and initguard "
                "never adds parameters. Pass `set_bias=False` to only check the step-0 loss, "
                "or `layer=` to choose another layer."
            )
        if head.in_buffer and not self._allow_buffer:
            raise InvalidInputError(
                f"initguard: the bias of layer {head.name!r} is a buffer, not a parameter, so "
                "training does not learn it; pass `allow_buffer=True` to write it anyway, or "
                "`set_bias=False` to only check."
            )

    def _apply_bias(self, head: _layers.Head | None, bias: np.ndarray) -> None:
        if not self._set_bias:
            self._notes.append("bias not written: set_bias=False (check only)")
            return
        assert head is not None
        _layers.write_bias(head, bias)
        self._bias_set = True
        self._notes.append(f"output layer {head.name!r} {head.found_by}")

    # ------------------------------------------------------------ first batch

    def _check_first_batch(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any
    ) -> None:
        loss = self._first_loss(trainer, pl_module, outputs)
        if loss is None:
            self._skip(
                trainer,
                "training_step returned no loss for the first batch (manual optimisation "
                "returns what training_step returns: return the loss to have it checked)",
            )
            return

        targets, rows = self._batch_targets(trainer, batch)
        plan = self._guard.plan
        assert plan is not None
        exact = _batch_loss(plan, targets)
        spread = self._spread_excess(plan, rows)
        # One collective for everything: the loss, the rows, the exact batch
        # losses and the spread, each with a flag saying this rank had it.
        values = torch.tensor(
            [
                loss,
                float(rows),
                *(exact if exact is not None else (0.0, 0.0, 0.0)),
                float(exact is not None),
                spread if spread is not None else 0.0,
                float(spread is not None),
            ],
            dtype=torch.float64,
        )
        world = trainer.world_size
        if world > 1:
            # DDP averages the ranks' losses (and so the exact batch losses
            # and spreads, each a rank's own); their rows add up.
            values = trainer.strategy.reduce(values.to(pl_module.device), reduce_op="sum")
            values = values.cpu()
            for index in (0, 2, 3, 4, 6):
                values[index] /= world
        step0, total_rows = float(values[0]), int(values[1])
        everywhere = float(world)
        batch_loss = (
            BatchLoss(float(values[2]), float(values[3]), float(values[4]))
            if float(values[5]) == everywhere
            else None
        )
        spread_excess = float(values[6]) if float(values[7]) == everywhere else None
        notes = tuple(self._notes)
        if batch_loss is None:
            notes += (
                "expected loss taken over all the targets, with its sampling error: the first "
                "batch's own targets could not be evaluated"
                + (" on every process" if world > 1 else ""),
            )

        self._guard.conclude(
            step0,
            max(total_rows, 1),
            bias_set=self._bias_set,
            layer=self._head_name,
            notes=notes,
            is_global_zero=trainer.is_global_zero,
            batch=batch_loss,
            spread_excess=spread_excess,
            doubled_seen=self._doubled_seen,
        )
        self._log_metrics(trainer)

    def _first_loss(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any
    ) -> float | None:
        value = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            return None
        loss = float(value.detach().float().cpu())
        if pl_module.automatic_optimization:
            # Lightning divides the reported loss by the accumulation count.
            loss *= trainer.accumulate_grad_batches
        return loss

    def _batch_targets(self, trainer: Trainer, batch: Any) -> tuple[Any, int]:
        """The first batch's targets (None when unreadable) and its row count."""
        try:
            targets = _targets.targets_of_batch(batch, self._targets_from_batch)
            rows = int(targets.shape[0]) if hasattr(targets, "shape") else len(targets)
            return targets, rows
        except (InvalidInputError, TypeError, IndexError):
            # The batch layout is the user's own; the loader knows its batch size.
            size = getattr(trainer.train_dataloader, "batch_size", None)
            if isinstance(size, int):
                return None, size
            raise InvalidInputError(
                "initguard cannot count the rows of the first batch; pass "
                "`targets_from_batch=` (a function returning the batch's targets)."
            ) from None

    def _spread_excess(self, plan: Plan, rows: int) -> float | None:
        """The loss this rank's fresh-head spread adds to a batch of ``rows`` rows."""
        if self._spread is None and self._deviations is not None:
            try:
                self._spread = plan.spread_excess(self._deviations, rows)
            except InvalidInputError as error:
                self._notes.append(f"fresh-head spread not measured ({error})")
            self._deviations = None
        return self._spread

    def _log_metrics(self, trainer: Trainer) -> None:
        metrics = self._guard.metrics()
        if not metrics or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=0)
            logger.save()


_MIN_SPREAD_ROWS = 8
_SPREAD_ROWS = 64


def _deviations(
    head: _layers.Head, calls: list[tuple[torch.Tensor, torch.Tensor | None]]
) -> np.ndarray | None:
    """The head's outputs minus its bias, one row per sample (and position), or None."""
    parts = []
    for output, bias in calls:
        # Linear-like layers put the output units last; convolutions on axis 1.
        if isinstance(head.module, nn.modules.conv._ConvNd) and output.ndim >= 2:
            axis = 1
        elif output.ndim >= 1 and output.shape[-1] == head.width:
            axis = output.ndim - 1
        else:
            return None
        if output.shape[axis] != head.width:
            return None
        values = output.float().movedim(axis, -1).reshape(-1, head.width)
        if bias is not None:
            if bias.numel() != head.width:
                return None
            values = values - bias.float().reshape(1, -1)
        parts.append(values.cpu().numpy().astype(np.float64))
    if not parts:
        return None
    rows = np.concatenate(parts)
    if rows.shape[0] < _MIN_SPREAD_ROWS:
        return None
    if rows.shape[0] > _SPREAD_ROWS:
        # Dense outputs: positions from across the whole batch, not one corner.
        rows = rows[np.linspace(0, rows.shape[0] - 1, _SPREAD_ROWS).astype(np.int64)]
    return rows


def _batch_loss(plan: Plan, targets: Any) -> BatchLoss | None:
    """The constant outputs' exact losses on the first batch's targets, or None."""
    if targets is None:
        return None
    try:
        return plan.batch_loss(to_numpy(targets, "targets"))
    except InvalidInputError:
        # A batch whose targets are all ignored: its loss is NaN and fails.
        return None


def _plain(value: Any) -> Any:
    """Plain Python values only, so checkpoints load with ``weights_only=True``."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, np.integer):
        return int(value)
    return str(value)
