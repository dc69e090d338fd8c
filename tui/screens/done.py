"""Done screen: where the video is, how long it took against the plan's prediction, the predicted and
measured peaks per stage, and what TeaCache skipped."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from lowvram.cli.console import calibration_note, fmt_bytes, fmt_seconds
from lowvram.job import Job
from tui.layout import WideLayout
from tui.state import RunSummary
from tui.widgets.title_bar import TitleBar


def summary_table(summary: RunSummary) -> Table:
    table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # paths wrap instead of being cut at the screen edge
    calls = summary.computed_calls + summary.skipped_calls
    table.add_row("video", Text(summary.video_path, style="green", overflow="fold"))
    table.add_row("sidecar", Text(summary.sidecar_path, overflow="fold"))
    total = summary.stages[-1] if summary.stages else None
    predicted = f" (predicted {fmt_seconds(total.predicted_seconds)})" if total and total.predicted_seconds else ""
    measured = total.measured_seconds if total and total.measured_seconds else summary.seconds  # with the model's load
    table.add_row("total time", fmt_seconds(measured) + predicted)
    table.add_row("steps", f"{summary.steps}: {summary.computed_calls} of {calls} transformer calls computed, {summary.skipped_calls} skipped")
    table.add_row("peak VRAM", fmt_bytes(summary.peak_vram_bytes) if summary.peak_vram_bytes else "0 (no GPU)")
    table.add_row("peak RAM", fmt_bytes(summary.peak_ram_bytes))
    if summary.seed is not None:
        table.add_row("seed", str(summary.seed))
    table.add_row("model", "reused from the previous run" if summary.reused_model else "loaded for this run")
    return table


def _cell(value, fmt) -> str:
    return "-" if value is None else fmt(value)


def comparison_table(summary: RunSummary) -> Table:
    """Predicted vs measured per stage: time, peak VRAM, peak RAM."""
    table = Table(box=None, padding=(0, 1, 0, 0), show_edge=False, title="predicted vs measured", title_justify="left", title_style="bold")
    table.add_column("stage")
    for col in ("time", "", "VRAM", "", "RAM", ""):
        table.add_column(col, justify="right")
    table.add_row("", "predicted", "measured", "predicted", "measured", "predicted", "measured", style="dim")
    for row in summary.stages:
        style = "bold" if row.stage == "total" else ""
        table.add_row(
            row.stage,
            _cell(row.predicted_seconds, fmt_seconds), _cell(row.measured_seconds, fmt_seconds),
            _cell(row.predicted_vram, fmt_bytes), _cell(row.measured_vram, fmt_bytes),
            _cell(row.predicted_ram, fmt_bytes), _cell(row.measured_ram, fmt_bytes),
            style=style,
        )
    return table


class DoneScreen(WideLayout, Screen):
    SUB_TITLE = "done"
    BINDINGS = [
        Binding("n", "new_job", "New job (same settings)"),
        Binding("a", "again", "Run again"),
        Binding("q", "app.quit", "Quit", show=False),
    ]

    def __init__(self, job: Job, summary: RunSummary) -> None:
        super().__init__()
        self.job, self.summary = job, summary

    def compose(self) -> ComposeResult:
        yield TitleBar()
        with VerticalScroll(id="done-body"):
            yield Static(Text("Done", style="bold green"), id="done-title")
            with Horizontal(id="done-columns"):
                yield Static(summary_table(self.summary), id="summary")
                if self.summary.stages:
                    note = calibration_note(self.summary.stages[-1])
                    from rich.console import Group

                    parts = [comparison_table(self.summary)] + ([Text(note.strip(), style="yellow")] if note else [])
                    yield Static(Group(*parts), id="comparison")
            yield Static(Text("n: edit these settings for another job · a: plan and run the same job again · q: quit", style="dim"), id="done-hint")
        yield Footer()

    def action_new_job(self) -> None:
        self.app.back_to_job()

    def action_again(self) -> None:
        self.app.run_again(self.job)
