"""Done screen: where the video is, how long it took, what TeaCache skipped, the measured peaks."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from lowvram.cli.console import fmt_bytes, fmt_seconds
from lowvram.job import Job
from tui.state import RunSummary
from tui.widgets.title_bar import TitleBar


def summary_table(summary: RunSummary) -> Table:
    table = Table(box=None, show_header=False, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    calls = summary.computed_calls + summary.skipped_calls
    table.add_row("video", Text(summary.video_path, style="green"))
    table.add_row("sidecar", summary.sidecar_path)
    table.add_row("total time", fmt_seconds(summary.seconds))
    table.add_row("steps", f"{summary.steps}: {summary.computed_calls} of {calls} transformer calls computed, {summary.skipped_calls} skipped")
    table.add_row("peak VRAM", fmt_bytes(summary.peak_vram_bytes) if summary.peak_vram_bytes else "0 (no GPU)")
    table.add_row("peak RAM", fmt_bytes(summary.peak_ram_bytes))
    table.add_row("model", "reused from the previous run" if summary.reused_model else "loaded for this run")
    return table


class DoneScreen(Screen):
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
            yield Static(summary_table(self.summary), id="summary")
            yield Static(Text("n: edit these settings for another job · a: plan and run the same job again · q: quit", style="dim"), id="done-hint")
        yield Footer()

    def action_new_job(self) -> None:
        self.app.back_to_job()

    def action_again(self) -> None:
        self.app.show_plan(self.job)
