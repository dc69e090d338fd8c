"""What the planner's time estimate needs of the cache: the transformer calls that run the blocks. Pure.

The calls a cache skips still run the embedders and the head, which are small; the planner counts a
skipped call as free and a computed one as a full forward (docs/caching.md: the GPU benchmark checks
that the measured speed-up is at least 0.95 of total / computed calls).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class CallCounts:
    """Computed and total transformer calls per denoiser component (CachePlan.counts())."""

    computed: dict = field(default_factory=dict)  # component -> computed calls
    total: dict = field(default_factory=dict)  # component -> calls


def denoise_calls(steps: int, passes: int, counts: Optional[CallCounts] = None, component: str = "transformer") -> int:
    """Calls of `component` that compute: the cache plan's count when one is known, else every call
    (steps x guidance passes; for a two-expert model the caller gives that expert's steps)."""
    if counts is None or component not in counts.computed:
        return steps * passes
    return counts.computed[component]
