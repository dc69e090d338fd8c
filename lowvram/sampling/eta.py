"""Time left in a run, from what is known before it starts: the skip schedule (which transformer calls
will compute; the cache session counts the ones left) and the plan's predicted decode time. A skipped
call costs next to nothing, so the mean time of a *computed* call, times the computed calls still to
come, is the denoising time left."""

from __future__ import annotations

from typing import Any


class Eta:
    def __init__(self, decode_seconds: float = 0.0):
        self.decode_seconds = decode_seconds
        self.seconds = 0.0  # denoising time measured so far
        self.calls = 0  # computed transformer calls so far
        self.steps = 0

    @classmethod
    def for_plan(cls, plan: Any) -> "Eta":
        return cls(sum(s.seconds for s in getattr(plan, "predicted", ()) if s.stage == "decode"))

    def step_done(self, seconds: float, computed_calls: int) -> None:
        self.seconds += seconds
        self.calls += computed_calls
        self.steps += 1

    def seconds_left(self, remaining_computed_calls: int) -> float:
        """Denoising left (the schedule's computed calls still to come) plus decoding."""
        per_call = self.seconds / self.calls if self.calls else 0.0  # the first steps always compute
        return per_call * remaining_computed_calls + self.decode_seconds
