"""What a job asks of step skipping: which cache, and its threshold or target speed-up. Light: no torch.

A setting is intent. What it resolves to for a model (the coefficients or magnitude ratios, the
threshold a target speed-up needs, every call's decision) is a `CachePlan`, built before sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from lowvram.errors import UserError

METHODS = ("none", "teacache", "magcache")
MAX_THRESHOLD = 10.0  # the threshold search's upper end, and the largest threshold accepted
MAX_SPEEDUP = 20.0
LABELS = {"none": "no cache", "teacache": "TeaCache", "magcache": "MagCache"}


@dataclass(frozen=True)
class CacheSetting:
    """Step skipping for a job: off, TeaCache or MagCache, with a threshold or a target speed-up.

    - threshold: TeaCache's bound on the accumulated rescaled change of the timestep embedding, or
      MagCache's bound on the accumulated magnitude error; None with no speed-up = the model's
      published default (MagCache only).
    - speedup: the threshold is searched so that total calls / computed calls >= speedup.
    - retention, coefficients: TeaCache's retention steps (first 5 steps forced, e0 coefficients)
      and a coefficient set to force (t2v-1.3b, t2v-14b, i2v-14b-480p, i2v-14b-720p).
    - max_skips (K), retention_ratio: MagCache's bound on consecutive skips and the fraction of
      early steps always computed; None = the model's published values.
    - calibrate: MagCache only: compute every call and save this model's magnitude ratios.
    """

    method: str = "none"
    threshold: Optional[float] = None
    speedup: Optional[float] = None
    retention: bool = True
    coefficients: Optional[str] = None
    max_skips: Optional[int] = None
    retention_ratio: Optional[float] = None
    calibrate: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"cache method {self.method!r}: use one of {', '.join(METHODS)}.")
        check_threshold(self.threshold)
        if self.speedup is not None and not (isinstance(self.speedup, (int, float)) and 1.0 <= self.speedup <= MAX_SPEEDUP):
            raise UserError(f"cache speed-up must be a number between 1.0 and {MAX_SPEEDUP:g}, got {self.speedup}.")
        if self.threshold is not None and self.speedup is not None:
            raise UserError("cache: give either a threshold or a target speed-up, not both.")
        if self.coefficients is not None:
            from lowvram.caching.teacache.coefficients import COEFFICIENTS

            if self.coefficients.lower() not in COEFFICIENTS:
                raise UserError(f"TeaCache coefficients {self.coefficients!r}: unknown; use one of {', '.join(COEFFICIENTS)}.")
        if self.max_skips is not None and (isinstance(self.max_skips, bool) or not isinstance(self.max_skips, int) or not 1 <= self.max_skips <= 50):
            raise UserError(f"MagCache's most consecutive skips (K) must be a whole number from 1 to 50, got {self.max_skips}.")
        if self.retention_ratio is not None and not (isinstance(self.retention_ratio, (int, float)) and 0.0 <= self.retention_ratio <= 1.0):
            raise UserError(f"MagCache's retention ratio must be between 0 and 1 (the fraction of early steps always computed), got {self.retention_ratio}.")
        if self.calibrate and self.method != "magcache":
            raise UserError("calibration computes MagCache's magnitude ratios: use it with --cache magcache.")
        if self.calibrate and (self.threshold is not None or self.speedup is not None):
            raise UserError("a calibration run computes every step: drop the threshold or speed-up (use them on later runs).")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def label(self) -> str:
        return LABELS[self.method]

    def describe(self) -> str:
        """One phrase: 'MagCache threshold 0.12', 'TeaCache target 2x', 'no cache'."""
        if not self.enabled:
            return "no cache"
        if self.calibrate:
            return f"{self.label} calibration (every step computed)"
        how = f"threshold {self.threshold:g}" if self.threshold is not None else (
            f"target {self.speedup:g}x" if self.speedup is not None else "the model's default threshold")
        return f"{self.label} {how}"


def check_threshold(value) -> None:
    """A threshold is a finite number from 0 to MAX_THRESHOLD (nan and inf are refused)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value <= MAX_THRESHOLD:
        raise UserError(f"cache threshold must be a number between 0 and {MAX_THRESHOLD:g}, got {value}.")


def TeaCacheSetting(enabled: bool = False, threshold: Optional[float] = None, speedup: Optional[float] = None,
                    retention: bool = True, coefficients: Optional[str] = None) -> CacheSetting:
    """The old TeaCache-only setting (the [job.teacache] table of schema-1 profiles) as a CacheSetting."""
    return CacheSetting("teacache" if enabled else "none", threshold, speedup, retention, coefficients)
