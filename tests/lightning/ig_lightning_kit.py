"""Models, data and recorders shared by the Lightning tests.

A plain module (not a conftest) so that DDP workers started with "spawn" can
unpickle these classes by importing it by name.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as lp
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

QUIET = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "accelerator": "cpu",
    "devices": 1,
}


def trainer(**kwargs: Any) -> lp.Trainer:
    """A quiet CPU trainer; keyword arguments override the defaults."""
    return lp.Trainer(**{**QUIET, **kwargs})


class Net(lp.LightningModule):
    """A small MLP whose head is registered before its body.

    Args:
        in_dim: input features.
        out_dim: output units.
        loss: the torch loss module (held as a submodule).
        hidden: hidden units; 0 makes the head the only layer.
        final: "sigmoid", "log_softmax" or "" applied in ``forward``.
        squeeze: drop the last axis of the output (one binary or regression output).
        head_scale: factor applied to the head's initial weights.
        zero_head: zero the head's weights, so the output equals the bias.
        lr: SGD learning rate.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        loss: nn.Module,
        hidden: int = 32,
        final: str = "",
        squeeze: bool = False,
        head_scale: float = 1.0,
        zero_head: bool = False,
        lr: float = 0.05,
        head_bias: bool = True,
    ) -> None:
        super().__init__()
        # Registered first on purpose: tracing must not rely on order.
        self.head = nn.Linear(hidden or in_dim, out_dim, bias=head_bias)
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU()) if hidden else nn.Identity()
        self.loss = loss
        self.final = final
        self.squeeze = squeeze
        self.lr = lr
        with torch.no_grad():
            self.head.weight.mul_(0.0 if zero_head else head_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.body(x))
        if self.final == "sigmoid":
            out = torch.sigmoid(out)
        elif self.final == "log_softmax":
            out = torch.log_softmax(out, dim=1)
        return out.squeeze(-1) if self.squeeze else out

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loader(x: Any, y: Any, batch_size: int = 32, shuffle: bool = True, seed: int = 0) -> DataLoader:
    """A DataLoader over a TensorDataset with its own seeded shuffling."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    data = TensorDataset(torch.as_tensor(x), torch.as_tensor(y))
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)


def binary_data(n: int, rate: float, seed: int, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised features and 0/1 float labels with a given positive rate."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(np.float32)
    x = rng.normal(size=(n, dim)).astype(np.float32) + 0.5 * y[:, None]
    return torch.tensor(x), torch.tensor(y)


def digits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits, scaled to [0, 1], in a seeded order."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    return (
        torch.tensor(x[order] / 16.0, dtype=torch.float32),
        torch.tensor(y[order], dtype=torch.long),
    )


class Snapshot(lp.Callback):
    """Records the head's parameters at fit start (after InitGuard ran)."""

    def __init__(self) -> None:
        self.at_start: dict[str, torch.Tensor] = {}

    def on_fit_start(self, trainer: lp.Trainer, pl_module: lp.LightningModule) -> None:
        self.at_start = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


class RankRecorder(lp.Callback):
    """Saves, per rank, the bias at fit start, the final weights, warnings and log lines.

    Placed after InitGuard in the callback list. Used in DDP workers, whose
    attributes the launching process cannot see.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def setup(self, trainer: lp.Trainer, pl_module: lp.LightningModule, stage: str) -> None:
        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        self._records: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: self._records.append(record.getMessage())  # type: ignore[method-assign]
        self._handler = handler
        logger = logging.getLogger("initguard")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)

    def on_fit_start(self, trainer: lp.Trainer, pl_module: lp.LightningModule) -> None:
        self._start_bias = pl_module.head.bias.detach().clone()

    def on_train_start(self, trainer: lp.Trainer, pl_module: lp.LightningModule) -> None:
        # The rows this rank trains on in the first epoch (a distributed
        # sampler's order depends only on its seed and epoch).
        batches = trainer.train_dataloader.batch_sampler
        self._indices = [int(i) for batch in batches for i in batch]

    def on_train_batch_start(
        self, trainer: lp.Trainer, pl_module: lp.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Written at once: a rank that went on past a failed check would
        # leave its next batch here before blocking in a collective.
        with (Path(self.folder) / f"rank{trainer.global_rank}.batches").open("a") as handle:
            handle.write(f"{batch_idx}\n")

    def on_train_batch_end(
        self,
        trainer: lp.Trainer,
        pl_module: lp.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if batch_idx == 0:
            self._first_loss = float(outputs["loss"])

    def teardown(self, trainer: lp.Trainer, pl_module: lp.LightningModule, stage: str) -> None:
        logging.getLogger("initguard").removeHandler(self._handler)
        self._catcher.__exit__(None, None, None)
        rank = trainer.global_rank
        guard = next(c for c in trainer.callbacks if type(c).__name__ == "InitGuard")
        torch.save(
            {
                "start_bias": self._start_bias,
                "final": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
            },
            Path(self.folder) / f"rank{rank}.pt",
        )
        record = {
            "report": guard.report.to_dict() if guard.report is not None else None,
            "warnings": [str(w.message) for w in self._caught if "initguard" in str(w.message)],
            "logs": self._records,
            "indices": self._indices,
            "first_loss": self._first_loss,
        }
        (Path(self.folder) / f"rank{rank}.json").write_text(json.dumps(record))
