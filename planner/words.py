"""Numbers in words for plan explanations: sizes in GiB, durations as 1m05s."""

from __future__ import annotations

import math

from planner.probe import GIB


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def gib_at_least(n: float) -> str:
    """A need in GiB rounded up, so that giving the printed amount is enough (32.521 -> 32.53 GiB)."""
    return f"{math.ceil(n / GIB * 100) / 100:.2f} GiB"


def fmt_seconds(s: float) -> str:
    s = max(0.0, s)
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"
