"""Lightning on scikit-learn's digits (10 classes): the bias starts at log-frequencies.

Run: .venv/bin/python examples/lightning_digits.py
"""

from __future__ import annotations

import logging
import math

import lightning.pytorch as pl
import torch
from _report import print_report
from sklearn.datasets import load_digits
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from initguard.lightning import InitGuard


class DigitsClassifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        self.loss = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def main() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    pl.seed_everything(0, verbose=False)
    features, labels = load_digits(return_X_y=True)
    features = StandardScaler().fit_transform(features)
    data = TensorDataset(
        torch.tensor(features, dtype=torch.float32), torch.tensor(labels, dtype=torch.long)
    )
    loader = DataLoader(data, batch_size=64, shuffle=True)

    guard = InitGuard()
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[guard],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(DigitsClassifier(), loader)

    print_report("Lightning, digits (10 classes)", guard)
    print(f"{'uniform log(10)':>22}: {math.log(10):.6f}")


if __name__ == "__main__":
    main()
