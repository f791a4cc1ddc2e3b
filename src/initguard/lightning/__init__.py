"""The PyTorch Lightning callback (``lightning.pytorch``; also works in ``pytorch_lightning``)."""

from __future__ import annotations

import importlib.util

# A missing framework should say which extra to install, not only which module is missing.
_missing = [name for name in ("torch", "lightning") if importlib.util.find_spec(name) is None]
if _missing:
    raise ImportError(
        f"initguard.lightning needs {' and '.join(_missing)}: install them beside your torch, "
        "for example `pip install 'initguard[lightning]'`."
    )

from ._callback import InitGuard  # noqa: E402

__all__ = ["InitGuard"]
