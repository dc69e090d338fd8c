"""The threshold a target speed-up needs: the smallest one whose decisions compute few enough calls.

Both caches skip more as the threshold rises in practice, but neither is guaranteed monotone (a
TeaCache polynomial can dip below zero; MagCache's K cap interacts with the resets), so the search
bisects and the answer is always checked against the target: a non-monotone stretch can cost
optimality, never correctness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

from lowvram.caching.setting import MAX_THRESHOLD

_ITERATIONS = 60


def reachable(speedup: float) -> str:
    """A reachable speed-up for a message, rounded down (asking for it must succeed): 2.777 -> '2.77x'."""
    return f"{math.floor(speedup * 100 + 1e-9) / 100:.2f}x"


@dataclass(frozen=True)
class Found:
    threshold: Optional[float]  # None: the target cannot be reached
    computed: int  # computed count at the threshold found (or at MAX_THRESHOLD when unreachable)
    best_speedup: float  # total / computed at MAX_THRESHOLD: the largest reachable


def search_threshold(computed: Callable[[float], int], total: int, target: float) -> Found:
    """`computed(threshold)` counts computed calls (or steps) of `total`; the target is total / computed."""
    allowed = math.floor(total / target + 1e-9)
    fewest = computed(MAX_THRESHOLD)
    best = total / max(1, fewest)
    if fewest > allowed:
        return Found(None, fewest, best)
    if computed(0.0) <= allowed:
        return Found(0.0, computed(0.0), best)
    lo, hi = 0.0, MAX_THRESHOLD
    for _ in range(_ITERATIONS):
        mid = (lo + hi) / 2
        if computed(mid) <= allowed:
            hi = mid
        else:
            lo = mid
    return Found(hi, computed(hi), best)
