"""Where rmcore keeps its caches (converted base models, trunk features)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """RMCORE_CACHE, else $XDG_CACHE_HOME/rmcore, else ~/.cache/rmcore."""
    if os.environ.get("RMCORE_CACHE"):
        root = Path(os.environ["RMCORE_CACHE"])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rmcore"
    root.mkdir(parents=True, exist_ok=True)
    return root
