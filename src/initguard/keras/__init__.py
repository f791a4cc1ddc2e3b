"""The Keras 3 callback: ``InitGuard`` for ``model.fit``.

Importing this module imports Keras (and its backend).
"""

from __future__ import annotations

import importlib.util

# A missing framework should say which extra to install, not only which module is missing.
if importlib.util.find_spec("keras") is None:
    raise ImportError(
        "initguard.keras needs Keras 3 and a backend: for example "
        "`pip install 'initguard[keras]' tensorflow` (or torch or jax as the backend)."
    )

from ._callback import InitGuard

__all__ = ["InitGuard"]
