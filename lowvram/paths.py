"""Where lowvram keeps its files. LOWVRAM_CACHE_DIR overrides the platform's user cache folder."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    override = os.environ.get("LOWVRAM_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("lowvram", appauthor=False))
