"""Lightning regression on scikit-learn's diabetes data: targets with a mean of 152.

A zero bias starts the mean squared error near mean(y)**2 + var(y) (about 29,000);
the planned bias starts it at var(y) (about 5,900).

Run: .venv/bin/python examples/regression_diabetes.py
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import torch
from _report import print_report
from sklearn.datasets import load_diabetes
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from initguard.lightning import InitGuard


class Regressor(pl.LightningModule):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, 64), nn.ReLU())
        self.head = nn.Linear(64, 1)
        self.loss = nn.MSELoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).squeeze(-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def main() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    pl.seed_everything(0, verbose=False)
    features, targets = load_diabetes(return_X_y=True)
    features = StandardScaler().fit_transform(features)
    data = TensorDataset(
        torch.tensor(features, dtype=torch.float32), torch.tensor(targets, dtype=torch.float32)
    )
    loader = DataLoader(data, batch_size=32, shuffle=True)

    guard = InitGuard()
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[guard],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Regressor(features.shape[1]), loader)

    print_report("Lightning, diabetes regression (MSE)", guard)
    print(f"{'target mean':>22}: {targets.mean():.3f}")


if __name__ == "__main__":
    main()
