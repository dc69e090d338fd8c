"""Stage, progress bar, time per step and time left, as the runtime reports them: the denoising steps,
then the decode frame by frame (tile by tile when tiled)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar

from lowvram.cli.console import fmt_seconds
from lowvram.telemetry import DecodeProgress, StepFinished


class StepProgress(Vertical):
    DEFAULT_CSS = """
    StepProgress { height: auto; }
    StepProgress #stage { width: 1fr; text-style: bold; }
    StepProgress ProgressBar { width: 1fr; }
    StepProgress #bar-row { height: 1; }
    StepProgress #step-stats { width: auto; padding-left: 1; }
    """

    def compose(self) -> ComposeResult:
        yield Label("waiting to start", id="stage")
        with Horizontal(id="bar-row"):
            # The time left comes from the runtime (the known TeaCache schedule and the plan's decode
            # time), not from the widget's clock.
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
            f"step {event.step + 1}/{event.total} · {fmt_seconds(event.seconds)}/step{skipped} · {fmt_seconds(event.eta_seconds)} left"
        )

    def start_decode(self) -> None:
        self.query_one(ProgressBar).update(total=None, progress=0)
        self.query_one("#step-stats", Label).update("decoding…")

    def decode(self, event: DecodeProgress) -> None:
        self.query_one(ProgressBar).update(total=event.total, progress=event.done)
        self.query_one("#step-stats", Label).update(f"decoded {event.done}/{event.total} · {fmt_seconds(event.eta_seconds)} left")

    def finish(self, text: str) -> None:
        self.set_stage(text)
