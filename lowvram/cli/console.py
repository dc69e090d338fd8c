"""Render telemetry events for a terminal: a line per stage, a progress bar per denoising step."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Optional, TextIO

from lowvram.telemetry import (
    DecodeProgress,
    Event,
    LogMessage,
    PhaseStarted,
    PlanSwitched,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunStarted,
    StageFinished,
    StageStarted,
    StepFinished,
)
from planner.choose import fmt_seconds
from planner.plan import PHASE_LABEL
from planner.choose import (
    gib as fmt_bytes,  # the planner's formatters: predictions and measurements read alike
)


def progress_bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "-" * (width - filled) + "]"


# The time model is worth recalibrating when a run is off by more than this factor either way.
CALIBRATE_RATIO = 2.0
CALIBRATE_MIN_SECONDS = 10.0  # shorter runs are mostly start-up costs the time model leaves out


@dataclass(frozen=True)
class StageComparison:
    """One stage's predicted and measured time and peaks (None: not predicted, or not run)."""

    stage: str
    predicted_seconds: Optional[float] = None
    measured_seconds: Optional[float] = None
    predicted_vram: Optional[int] = None
    measured_vram: Optional[int] = None
    predicted_ram: Optional[int] = None
    measured_ram: Optional[int] = None


def compare_stages(plan: Any, finished: Iterable[StageFinished], total_seconds: Optional[float] = None) -> list[StageComparison]:
    """The plan's predictions next to what the run measured, a row per stage and a last "total" row."""
    measured = {e.stage: e for e in finished}  # after a plan switch the last run of a stage counts
    predicted: dict[str, tuple[float, int, int]] = {}  # a two-expert denoise has a prediction per phase: summed
    for s in getattr(plan, "predicted", ()):
        seconds, vram, ram = predicted.get(s.stage, (0.0, 0, 0))
        predicted[s.stage] = (seconds + s.seconds, max(vram, s.vram_bytes), max(ram, s.ram_bytes))
    rows = []
    for stage in list(predicted) + [s for s in measured if s not in predicted]:
        p, m = predicted.get(stage), measured.get(stage)
        rows.append(StageComparison(
            stage,
            p[0] if p else None, m.seconds if m else None,
            p[1] if p else None, m.peak_vram_bytes if m else None,
            p[2] if p else None, m.peak_ram_bytes if m else None,
        ))
    top = lambda values: max((v for v in values if v is not None), default=None)  # noqa: E731
    rows.append(StageComparison(
        "total",
        getattr(plan, "predicted_seconds", 0.0) or None,
        total_seconds if total_seconds is not None else (sum(r.measured_seconds or 0.0 for r in rows) or None),
        top(r.predicted_vram for r in rows), top(r.measured_vram for r in rows),
        top(r.predicted_ram for r in rows), top(r.measured_ram for r in rows),
    ))
    return rows


def _cell(value: Optional[float], fmt) -> str:
    return "-" if value is None else fmt(value)


def comparison_lines(rows: list[StageComparison], cpu: bool = False) -> list[str]:
    """The comparison as a table that fits 80 columns; a note when the time model is far off."""
    lines = [f"  {'':<8} {'time':>19}   {'peak VRAM':>21}   {'peak RAM':>21}",
             f"  {'stage':<8} {'predicted':>9} {'measured':>9}   {'predicted':>10} {'measured':>10}   {'predicted':>10} {'measured':>10}"]
    for r in rows:
        lines.append(
            f"  {r.stage:<8} {_cell(r.predicted_seconds, fmt_seconds):>9} {_cell(r.measured_seconds, fmt_seconds):>9}   "
            f"{_cell(r.predicted_vram, fmt_bytes):>10} {_cell(r.measured_vram, fmt_bytes):>10}   "
            f"{_cell(r.predicted_ram, fmt_bytes):>10} {_cell(r.measured_ram, fmt_bytes):>10}"
        )
    note = calibration_note(rows[-1], cpu) if rows else None
    return lines + ([note] if note else [])


def calibration_note(total: StageComparison, cpu: bool = False) -> Optional[str]:
    """A note when the measured time is far from the prediction. `cpu`: a plan that ran on the CPU, which
    `lowvram calibrate` cannot measure (it needs a CUDA GPU), so it is not suggested."""
    p, m = total.predicted_seconds, total.measured_seconds
    if not p or not m or m < CALIBRATE_MIN_SECONDS or 1 / CALIBRATE_RATIO <= m / p <= CALIBRATE_RATIO:
        return None
    how = f"took {m / p:.1f}x the predicted time" if m > p else f"was {p / m:.1f}x faster than predicted"
    if cpu:
        return f"  the run {how}: times on the CPU are rough estimates (`lowvram calibrate` measures CUDA GPUs only)"
    return f"  the run {how}: `lowvram calibrate` measures this machine so that plans predict it better"


class ConsoleReporter:
    """An event sink that prints. On a terminal the step bar redraws in place; elsewhere one line a step.
    Given the plan, the end of a run compares its predictions with the measurements."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False, plan: Any = None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.plan = plan
        self.tty = self.stream.isatty()
        self._bar_open = False
        self._stages: list[StageFinished] = []
        self._gone = False

    def _write(self, text: str) -> None:
        """Write and flush; a terminal that went away (closed window: EIO, a closed pipe) must not end the run."""
        if self._gone:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self._gone = True

    def _bar(self, text: str, last: bool) -> None:
        if self.tty:
            self._bar_open = not last
            self._write("\r" + text + ("\n" if last else ""))
        else:
            self._line(text)

    def _line(self, text: str) -> None:
        if self._bar_open:
            self._bar_open = False
            text = "\n" + text
        self._write(text + "\n")

    def __call__(self, event: Event) -> None:
        if self.quiet and not isinstance(event, (RunFinished, RunFailed, RunCancelled, PlanSwitched)):
            return
        if isinstance(event, RunStarted):
            self._line(f"model {event.model} ({event.task}), plan: {event.plan_summary}")
        elif isinstance(event, StageStarted):
            self._line(f"[{event.stage}] ...")
        elif isinstance(event, StageFinished):
            self._stages.append(event)
            extra = f", peak VRAM {fmt_bytes(event.peak_vram_bytes)}" if event.peak_vram_bytes else ""
            if event.peak_vram_by_gpu:
                extra = ", peak VRAM " + ", ".join(f"{gpu} {fmt_bytes(v)}" for gpu, v in event.peak_vram_by_gpu)
            self._line(f"[{event.stage}] done in {fmt_seconds(event.seconds)}{extra}, peak RAM {fmt_bytes(event.peak_ram_bytes)}")
        elif isinstance(event, StepFinished):
            done = event.step + 1
            skipped = f" skipped {event.skipped_calls}" if event.skipped_calls else ""
            text = (
                f"  step {done}/{event.total} {progress_bar(done, event.total)} "
                f"{fmt_seconds(event.seconds)}/step, ETA {fmt_seconds(event.eta_seconds)}{skipped}"
            )
            self._bar(text, done >= event.total)
        elif isinstance(event, PhaseStarted):
            who = PHASE_LABEL.get(event.phase, event.component)
            self._line(f"  {who} takes over at step {event.step + 1} (the high-noise expert left first)" if event.phase == "low"
                       else f"  {who} runs from step {event.step + 1}")
        elif isinstance(event, DecodeProgress):
            text = f"  decoded {event.done}/{event.total} {progress_bar(event.done, event.total)} {fmt_seconds(event.seconds)}, ETA {fmt_seconds(event.eta_seconds)}"
            tenth = event.done * 10 // max(1, event.total)
            if self.tty or event.done == 1 or tenth != (event.done - 1) * 10 // max(1, event.total):  # a log gets ~10 lines
                self._bar(text, event.done >= event.total)
        elif isinstance(event, LogMessage):
            self._line(f"{event.level}: {event.message}")
        elif isinstance(event, PlanSwitched):
            self._line(f"plan switched during {event.stage}: {event.reason}\n  was: {event.old_summary}\n  now: {event.new_summary}")
        elif isinstance(event, RunFinished):
            self._line(f"wrote {event.video_path} (sidecar {event.sidecar_path}) in {fmt_seconds(event.seconds)}")
            if self.plan is not None and not self.quiet:
                self._line("predicted vs measured:")
                cpu = getattr(self.plan, "device", "") == "cpu"
                for line in comparison_lines(compare_stages(self.plan, self._stages, event.seconds), cpu):
                    self._line(line)
                if getattr(self.plan, "parallel", ""):
                    self._line(f"  peak RAM: predicted for all {self.plan.parallel_gpus} processes together, measured in "
                               "the first process (each process's peaks: the sidecar's \"processes\")")
        elif isinstance(event, RunCancelled):
            kept = (f"; latents kept in {event.latents_path}: finish with `lowvram generate --resume {shlex.quote(str(event.latents_path))}`"
                    if event.latents_path else "")
            self._line(f"cancelled during {event.stage or 'start-up'}; no video written" + kept)
        elif isinstance(event, RunFailed):
            self._line(f"failed during {event.stage}: {event.message}")
