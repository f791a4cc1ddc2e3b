"""The Keras 3 callback: ``InitGuard`` for ``model.fit``.

Importing this module imports Keras (and its backend).
"""

from __future__ import annotations

from ._callback import InitGuard

__all__ = ["InitGuard"]
