"""Lightning tests: skipped as a whole when torch or lightning is missing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("lightning") is None:
    collect_ignore_glob = ["*.py"]
else:
    # DDP workers started with "spawn" unpickle the test models by module
    # name, so the folder holding ig_lightning_kit must be importable.
    folder = str(Path(__file__).parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
