"""The PyTorch Lightning callback (``lightning.pytorch``; also works in ``pytorch_lightning``)."""

from __future__ import annotations

from ._callback import InitGuard

__all__ = ["InitGuard"]
