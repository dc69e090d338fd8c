"""The sidecar's record of step skipping: the setting, each component's schedule, and what the run did."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Iterable

from lowvram.telemetry import CacheScheduled, Event, TransformerCall


def cache_record(job: Any, events: Iterable[Event]) -> dict[str, Any]:
    """From the run's events: the schedules announced before sampling and the calls as they happened
    (every call's numbers are in the telemetry's TransformerCall events)."""
    events = list(events)
    scheduled = [e for e in events if isinstance(e, CacheScheduled)]
    calls = [e for e in events if isinstance(e, TransformerCall)]
    planned = {(c, s, b): computed for e in scheduled for (s, b, computed) in e.decisions() for c in [e.component]}
    differing = [c for c in calls if planned.get((c.component, c.step, c.branch), c.computed) != c.computed]
    return {
        "setting": asdict(job.cache),
        "summary": scheduled[0].summary if scheduled else "step skipping off",
        "components": [
            {k: v for k, v in e.to_dict().items() if k not in ("event", "t", "computed", "summary")} for e in scheduled
        ],
        "measured": {
            "computed_calls": sum(c.computed for c in calls),
            "skipped_calls": sum(not c.computed for c in calls),
            # a run resumed part-way computes its first call of each branch (no residual yet)
            "calls_differing_from_schedule": [(c.component, c.step, c.branch) for c in differing],
        },
    }
