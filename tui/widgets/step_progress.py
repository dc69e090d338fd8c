"""Stage, step progress bar, per-step time and ETA, as the runtime reports them."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar

from lowvram.cli.console import fmt_seconds
from lowvram.telemetry import StepFinished


class StepProgress(Vertical):
    DEFAULT_CSS = """
    StepProgress { height: 2; }
    StepProgress #stage { width: 1fr; text-style: bold; }
    StepProgress ProgressBar { width: 1fr; }
    StepProgress #bar-row { height: 1; }
    StepProgress #step-stats { width: auto; padding-left: 1; }
    """

    def compose(self) -> ComposeResult:
        yield Label("waiting to start", id="stage")
        with Horizontal(id="bar-row"):
            # ETA comes from the runtime's own per-step times, not from the widget's clock.
            yield ProgressBar(total=None, show_eta=False, id="bar")
            yield Label("", id="step-stats")

    def set_stage(self, text: str) -> None:
        self.query_one("#stage", Label).update(text)

    def set_total(self, total: int) -> None:
        self.query_one(ProgressBar).update(total=total, progress=0)
        self.query_one("#step-stats", Label).update(f"step 0/{total}")

    def step(self, event: StepFinished) -> None:
        self.query_one(ProgressBar).update(total=event.total, progress=event.step + 1)
        skipped = f", {event.skipped_calls} skipped" if event.skipped_calls else ""
        self.query_one("#step-stats", Label).update(
            f"step {event.step + 1}/{event.total} · {fmt_seconds(event.seconds)}/step{skipped} · ETA {fmt_seconds(event.eta_seconds)}"
        )

    def finish(self, text: str) -> None:
        self.set_stage(text)
