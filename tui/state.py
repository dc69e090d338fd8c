"""Run state derived from telemetry events: the step-skip grid and the final summary. No Textual."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, NamedTuple, Optional

from lowvram.telemetry import Event, StepFinished, TransformerCall

PENDING, COMPUTED, SKIPPED, UNKNOWN = "pending", "computed", "skipped", "unknown"
BRANCHES = ("cond", "uncond")


class Decision(NamedTuple):
    step: int
    branch: str
    computed: bool


class StepGrid:
    """One cell per (branch, step). TransformerCall events say exactly which branch ran or skipped;
    a StepFinished without them (TeaCache off) marks its calls computed, or 'unknown' if mixed."""

    def __init__(self, total: int, branches: tuple[str, ...] = BRANCHES):
        self.total = total
        self.branches = branches
        self.cells: dict[str, list[str]] = {b: [PENDING] * total for b in branches}
        self.predicted: dict[str, list[Optional[bool]]] = {b: [None] * total for b in branches}
        self.expert_starts: dict[int, str] = {}  # step -> the denoiser component that takes over there (two experts)
        self._seen_calls: set[int] = set()

    def set_prediction(self, decisions: Iterable) -> None:
        for d in decisions:
            if d.branch in self.predicted and 0 <= d.step < self.total:
                self.predicted[d.branch][d.step] = d.computed

    def set_schedule(self, event) -> None:
        """One denoiser component's schedule from the runtime (a CacheScheduled event)."""
        self.set_prediction(Decision(step, branch, computed) for step, branch, computed in event.decisions())
        if event.first_step > 0:
            self.expert_starts[event.first_step] = event.component

    def set_step_prediction(self, step_computed: Iterable[bool]) -> None:
        """A per-step schedule (both branches decide alike: they share the timestep)."""
        for step, computed in enumerate(step_computed):
            for branch in self.branches:
                if step < self.total:
                    self.predicted[branch][step] = bool(computed)

    def apply(self, event: Event) -> bool:
        """Update from one event; True when a cell changed."""
        if isinstance(event, TransformerCall):
            if event.branch not in self.cells or not 0 <= event.step < self.total:
                return False
            self._seen_calls.add(event.step)
            self.cells[event.branch][event.step] = COMPUTED if event.computed else SKIPPED
            return True
        if isinstance(event, StepFinished) and event.step not in self._seen_calls and 0 <= event.step < self.total:
            calls = event.computed_calls + event.skipped_calls
            state = COMPUTED if event.skipped_calls == 0 else SKIPPED if event.computed_calls == 0 else UNKNOWN
            for branch in self.branches[: max(1, calls)]:
                self.cells[branch][event.step] = state
            return True
        return False

    def counts(self) -> tuple[int, int]:
        """(computed calls, skipped calls) so far."""
        flat = [c for row in self.cells.values() for c in row]
        return flat.count(COMPUTED), flat.count(SKIPPED)


@dataclass(frozen=True)
class RunSummary:
    video_path: str
    sidecar_path: str
    seconds: float
    steps: int
    computed_calls: int
    skipped_calls: int
    peak_vram_bytes: int
    peak_ram_bytes: int
    reused_model: bool = False
    seed: Optional[int] = None
    stages: tuple = ()  # lowvram.cli.console.StageComparison rows: predicted vs measured

    @classmethod
    def from_result(cls, result, reused_model: bool = False, plan=None, seed: Optional[int] = None,
                    load_seconds: Optional[float] = None) -> "RunSummary":
        """`load_seconds`: the model was loaded before the run (the TUI keeps it between runs): its time
        counts in the load row and the total."""
        from lowvram.cli.console import compare_stages
        from lowvram.telemetry import StageFinished

        steps = [e for e in result.events if isinstance(e, StepFinished)]
        peaks = result.stage_peaks.values()
        finished = [e for e in result.events if isinstance(e, StageFinished)]
        if load_seconds is not None and not any(e.stage == "load" for e in finished):
            finished.insert(0, StageFinished(stage="load", seconds=load_seconds))
        total = float(result.seconds) + (load_seconds or 0.0)
        stages = compare_stages(plan if plan is not None else result.plan, finished, total)
        if load_seconds is not None:  # timed by the UI, not sampled: its peaks are unknown, not zero
            stages = [replace(r, measured_vram=None, measured_ram=None) if r.stage == "load" and r.measured_seconds == load_seconds else r for r in stages]
        stages = tuple(stages)
        return cls(
            video_path=str(Path(result.video_path).resolve()),
            sidecar_path=str(Path(result.sidecar_path).resolve()),
            seconds=float(result.seconds),
            steps=len(steps),
            computed_calls=sum(e.computed_calls for e in steps),
            skipped_calls=sum(e.skipped_calls for e in steps),
            peak_vram_bytes=max((p.get("vram_bytes", 0) for p in peaks), default=0),
            peak_ram_bytes=max((p.get("ram_bytes", 0) for p in peaks), default=0),
            reused_model=reused_model,
            seed=seed,
            stages=stages,
        )
