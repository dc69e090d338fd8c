"""Which block shapes were compiled on this machine before: `<cache>/compile/records.json`.

lowvram.placement.compile records the first compiled call of each shape (and how long it took); `warm_compiles`
reads them for the planner, which predicts a warm compile, from inductor's cache, for a shape recorded here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

RECORDS_FILE = "compile/records.json"


def compile_key(dim: int, ffn_dim: int, heads: int, image: bool, precision: str, tokens: int, device: Optional[str]) -> str:
    """One compiled block graph: the block's shape, the weights' precision, the tokens and the device (and the
    torch version, read from its metadata: a new torch compiles anew)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "?"
    return f"d{dim}-f{ffn_dim}-h{heads}-{'img' if image else 'txt'}|{precision}|{tokens}|{device or 'cpu'}|torch {torch_version}"


def records_path() -> Path:
    from lowvram.paths import cache_dir

    return cache_dir() / RECORDS_FILE


def load_records(path: Optional[Path] = None) -> dict:
    """{key: {"seconds": first compiled call, "date": ...}}; {} when there is none or it is unreadable."""
    try:
        data = json.loads(Path(path or records_path()).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_compile(key: str, seconds: float, path: Optional[Path] = None) -> None:
    """Remember that `key` was compiled (and how long its first call took). Best effort: a read-only cache
    folder only costs the next plan a cold-compile estimate."""
    from datetime import date

    path = Path(path or records_path())
    records = load_records(path)
    records[key] = {"seconds": round(float(seconds), 3), "date": date.today().isoformat()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(records, indent=1))
        tmp.replace(path)
    except OSError:
        pass


def warm_compiles(spec, tokens: int, gpu_name: Optional[str], path: Optional[Path] = None) -> tuple[str, ...]:
    """The precisions this spec's blocks were compiled at before on this GPU at `tokens` tokens."""
    from planner.plan import PRECISIONS

    records = load_records(path)
    if not records:
        return ()
    d = spec.dims
    return tuple(p for p in PRECISIONS
                 if compile_key(d.dim, d.ffn_dim, d.heads, d.has_image_branch, p, tokens, gpu_name) in records)
