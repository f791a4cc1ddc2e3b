"""A character-level language model on the Python standard library's own source.

The text is already on every machine that runs Python. Every next character is
a sample of a softmax over the vocabulary; initguard starts the output bias at
the unigram log-frequencies, so the first loss is the unigram entropy rather
than log(vocabulary). The vocabulary is padded to a multiple of 16 logits, as
language models often do; the padded slots never occur and get a floor.

Run: .venv/bin/python examples/lightning_char_lm.py
"""

from __future__ import annotations

import logging
import math
import pathlib
import sysconfig

import lightning.pytorch as pl
import torch
from _report import print_report
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from initguard.lightning import InitGuard

MODULES = ("textwrap.py", "argparse.py", "dataclasses.py", "fractions.py")
CONTEXT = 64


def load_corpus() -> str:
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    return "\n".join((stdlib / name).read_text(encoding="utf-8") for name in MODULES)


class CharModel(pl.LightningModule):
    def __init__(self, logits: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(logits, 48)
        self.rnn = nn.GRU(48, 96, batch_first=True)
        self.head = nn.Linear(96, logits)
        self.loss = nn.CrossEntropyLoss()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.rnn(self.embed(tokens))
        return self.head(hidden)  # [batch, time, logits]

    def training_step(self, batch, batch_idx):
        tokens, following = batch
        # torch's cross-entropy wants the classes on axis 1: [batch, logits, time].
        return self.loss(self(tokens).transpose(1, 2), following)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def main() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    pl.seed_everything(0, verbose=False)
    text = load_corpus()
    alphabet = sorted(set(text))
    logits = math.ceil(len(alphabet) / 16) * 16
    ids = torch.tensor([alphabet.index(c) for c in text], dtype=torch.long)

    windows = ids.unfold(0, CONTEXT + 1, CONTEXT)
    data = TensorDataset(windows[:, :-1].contiguous(), windows[:, 1:].contiguous())
    loader = DataLoader(data, batch_size=32, shuffle=True)

    guard = InitGuard()
    trainer = pl.Trainer(
        max_steps=40,
        callbacks=[guard],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(CharModel(logits), loader)

    print(f"corpus: {len(text):,} characters from {', '.join(MODULES)}")
    print(f"vocabulary: {len(alphabet)} characters in {logits} logits")
    print_report("Lightning, character-level language model", guard)
    print(f"{'uniform log(logits)':>22}: {math.log(logits):.6f}")


if __name__ == "__main__":
    main()
