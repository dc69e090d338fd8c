"""A calibration of this machine (what `lowvram calibrate` measured: H2D bandwidth pinned/pageable, transformer
block time, the gain of regional compile, the speed of fp8 / int8 matmuls, the CPU's matmul throughput), stored
as JSON in the user cache where the planner's time model finds it. The measuring itself runs models, so it
lives in the runtime (lowvram/calibrate.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

CALIBRATION_FILE = "calibration.json"
CALIBRATION_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 files lack the compile / fast-matmul fields: they read as "not measured"


@dataclass(frozen=True)
class Calibration:
    gpu_name: str
    created: str  # ISO date
    gpu_flops: float  # achieved bf16 FLOP/s over the calibration forward
    h2d_pinned: float  # bytes/s
    h2d_pageable: float
    cpu_flops: float
    tokens: int
    block_seconds: float  # one block at `tokens`
    version: int = CALIBRATION_VERSION
    # compiled over eager forward time (resident); 0.0: not measured
    compile_factor: float = 0.0
    # a compiled FFN's time at fp8_fast / int8_fast over bf16 (the planner's FAST_LINEAR_FACTOR); 0.0: not measured
    fp8_linear_factor: float = 0.0
    int8_linear_factor: float = 0.0

    def matches(self, probe) -> bool:
        """A calibration applies only to the GPU it was measured on."""
        return probe.gpu_name is not None and probe.gpu_name == self.gpu_name

    def to_dict(self) -> dict:
        return asdict(self)


def calibration_path() -> Path:
    from lowvram.paths import cache_dir

    return cache_dir() / CALIBRATION_FILE


def load_calibration(path: Optional[Path] = None) -> Optional[Calibration]:
    """The stored calibration, or None when there is none or it is unreadable / of another version."""
    path = path or calibration_path()
    try:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("version") not in READABLE_VERSIONS:
            return None
        cal = Calibration(**data)
    except (OSError, ValueError, TypeError):
        return None
    return cal if _well_typed(cal) else None  # a hand-edited "gpu_flops": "fast" would fail mid-plan


_TYPES = {"str": (str,), "float": (int, float), "int": (int,)}  # by annotation (a string here: __future__)


def _well_typed(cal: Calibration) -> bool:
    values = [(getattr(cal, f.name), _TYPES[f.type]) for f in fields(cal)]
    return all(isinstance(v, kinds) and not isinstance(v, bool) for v, kinds in values)


def save_calibration(cal: Calibration, path: Optional[Path] = None) -> Path:
    from lowvram.io.output import write_json_atomic  # a scratch file of its own: two calibrations never mix

    path = Path(path or calibration_path())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cal.to_dict(), path)
    return path
