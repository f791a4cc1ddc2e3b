"""Exactness tests share their target generators and checks through exactness_kit."""

from __future__ import annotations

import sys
from pathlib import Path

# The tests import exactness_kit by name, so its folder must be importable.
_folder = str(Path(__file__).parent)
if _folder not in sys.path:
    sys.path.insert(0, _folder)
