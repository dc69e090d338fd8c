"""MagCache calibration: a run that computes every call and measures the model's magnitude ratios, saved per model.

The ratio of a call is diffusers' calibration formula (`MagCacheBlockHook._perform_calibration_step`:
the mean over tokens of |residual| / |previous residual of the same branch|), kept in diffusers'
`MagCacheState` per branch. lowvram feeds it from its own hooks rather than applying diffusers'
`apply_mag_cache(calibrate=True)`, because those are `new_forward` hooks on every block, which
streamed group offloading silently unhooks after its first forward (diffusers' remove_hook re-links
an outer `new_forward` wrongly), and whose state resets itself, ratios included, at the run's end.
The residual chain runs across both experts of a two-expert model, as the reference's does.

Saved as JSON in the user cache, `magcache/<model identity key>.json`, in the published layout: per
call from the second step on, cond/uncond interleaved, rounded to 5 decimals as MagCache prints them.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Optional, Sequence

from lowvram.io.output import write_json_atomic
from lowvram.paths import cache_dir

FORMAT_VERSION = 1


def calibration_dir() -> Path:
    return cache_dir() / "magcache"


def calibration_path(key: str) -> Path:
    return calibration_dir() / f"{key}.json"


def load_calibrated(key: str) -> Optional[dict]:
    """The ratios calibrated on this machine for a model identity, or None (a damaged file counts as none)."""
    path = calibration_path(key)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    ratios = data.get("ratios") if isinstance(data, dict) else None
    if data.get("version") != FORMAT_VERSION or not isinstance(ratios, list) or not all(isinstance(r, (int, float)) for r in ratios):
        return None
    data["path"] = str(path)
    return data


def list_calibrated() -> list[dict]:
    """Every calibration saved on this machine (for the message that says what exists)."""
    folder = calibration_dir()
    if not folder.is_dir():
        return []
    found = (load_calibrated(p.stem) for p in sorted(folder.glob("*.json")))
    return [d for d in found if d is not None]


def save_calibrated(key: str, label: str, model: str, ratios: Sequence[float], steps: int, branches: int,
                    split_step: Optional[int], resolution: str) -> Path:
    """Write atomically (temp file + rename): a reader never sees half a calibration."""
    folder = calibration_dir()
    folder.mkdir(parents=True, exist_ok=True)
    data = dict(
        version=FORMAT_VERSION,
        key=key,
        label=label,
        model=model,
        steps=steps,
        branches=branches,
        split_step=split_step,
        resolution=resolution,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        ratios=[round(float(r), 5) for r in ratios],
    )
    path = calibration_path(key)
    write_json_atomic(data, path)
    return path


class Calibrator:
    """Collects every computed call's residual ratio through diffusers' calibration step, per branch."""

    def __init__(self, branches: Sequence[str]) -> None:
        from diffusers.hooks.hooks import StateManager
        from diffusers.hooks.mag_cache import (
            MagCacheBlockHook,
            MagCacheConfig,
            MagCacheState,
        )

        self.branches = tuple(branches)
        self.states = {b: MagCacheState() for b in self.branches}
        self._step = MagCacheBlockHook(StateManager(MagCacheState), is_tail=True, config=MagCacheConfig(calibrate=True))
        self.steps: dict[str, list[int]] = {b: [] for b in self.branches}

    def __call__(self, branch: str, step: int, residual) -> None:
        """A computed call's residual (the hooks' on_residual)."""
        state = self.states[branch]
        self._step._perform_calibration_step(state, residual)  # appends mean(|r| / |previous r|), 1.0 first
        state.previous_residual = residual
        self.steps[branch].append(step)

    def complete(self, steps: int) -> bool:
        """Every step seen once per branch (a run resumed part-way, after an out-of-memory switch, is not)."""
        return all(self.steps[b] == list(range(steps)) for b in self.branches)

    def ratios(self) -> list[float]:
        """The published layout: per call from step 1 on, cond/uncond interleaved (one branch: cond twice)."""
        per_branch = [self.states[b].calibration_ratios[1:] for b in self.branches]
        if len(per_branch) == 1:
            per_branch *= 2
        return [r for pair in zip(*per_branch) for r in pair]

    def close(self) -> None:
        for state in self.states.values():
            state.reset()
