"""Render telemetry events for a terminal: a line per stage, a progress bar per denoising step."""

from __future__ import annotations

import sys
from typing import TextIO

from lowvram.telemetry import (
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


class ConsoleReporter:
    """An event sink that prints. On a terminal the step bar redraws in place; elsewhere one line a step."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self._bar_open = False

    def _line(self, text: str) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def __call__(self, event: Event) -> None:
        if self.quiet and not isinstance(event, (RunFinished, RunFailed, RunCancelled, PlanSwitched)):
            return
        if isinstance(event, RunStarted):
            self._line(f"model {event.model} ({event.task}), plan: {event.plan_summary}")
        elif isinstance(event, StageStarted):
            self._line(f"[{event.stage}] ...")
        elif isinstance(event, StageFinished):
            extra = f", peak VRAM {fmt_bytes(event.peak_vram_bytes)}" if event.peak_vram_bytes else ""
            self._line(f"[{event.stage}] done in {fmt_seconds(event.seconds)}{extra}, peak RAM {fmt_bytes(event.peak_ram_bytes)}")
        elif isinstance(event, StepFinished):
            done = event.step + 1
            skipped = f" skipped {event.skipped_calls}" if event.skipped_calls else ""
            text = (
                f"  step {done}/{event.total} {progress_bar(done, event.total)} "
                f"{fmt_seconds(event.seconds)}/step, ETA {fmt_seconds(event.eta_seconds)}{skipped}"
            )
            if self.tty:
                self.stream.write("\r" + text)
                self._bar_open = done < event.total
                if not self._bar_open:
                    self.stream.write("\n")
                self.stream.flush()
            else:
                self._line(text)
        elif isinstance(event, PhaseStarted):
            who = PHASE_LABEL.get(event.phase, event.component)
            self._line(f"  {who} takes over at step {event.step + 1} (the high-noise expert left first)" if event.phase == "low"
                       else f"  {who} runs from step {event.step + 1}")
        elif isinstance(event, LogMessage):
            self._line(f"{event.level}: {event.message}")
        elif isinstance(event, PlanSwitched):
            self._line(f"plan switched during {event.stage}: {event.reason}\n  was: {event.old_summary}\n  now: {event.new_summary}")
        elif isinstance(event, RunFinished):
            self._line(f"wrote {event.video_path} (sidecar {event.sidecar_path}) in {fmt_seconds(event.seconds)}")
        elif isinstance(event, RunCancelled):
            self._line(f"cancelled during {event.stage or 'start-up'}; no video written" + (f"; latents kept in {event.latents_path}" if event.latents_path else ""))
        elif isinstance(event, RunFailed):
            self._line(f"failed during {event.stage}: {event.message}")
