"""Collection rules for the doctest run over src/: adapters need their framework."""

from __future__ import annotations

import importlib.util

collect_ignore_glob = [
    f"src/initguard/{adapter}/*"
    for adapter, framework in (("lightning", "lightning"), ("keras", "keras"))
    if importlib.util.find_spec(framework) is None
]
