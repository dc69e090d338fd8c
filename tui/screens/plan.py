"""Plan screen: the machine, the chosen plan with its predicted peaks and time, the alternatives and
why they lost, and the TeaCache skip schedule, all before anything loads."""

from __future__ import annotations

from dataclasses import replace

from rich.console import Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, LoadingIndicator, Static
from textual.worker import Worker, WorkerState

from lowvram.cli.console import fmt_bytes, fmt_seconds
from lowvram.errors import UserError
from lowvram.job import Job
from tui.services import PlanView, split_explanation
from tui.state import BRANCHES, StepGrid
from tui.widgets.skip_map import render_grid
from tui.widgets.title_bar import TitleBar


def describe_job(job: Job) -> str:
    tc = job.cache
    cache = "TeaCache off" if not tc.enabled else tc.describe()
    image = f", image {job.image}" if job.image else ""
    return f"{job.model}: {job.width}x{job.height}, {job.frames} frames, {job.steps} steps, guidance {job.guidance:g}, seed {job.seed}, {cache}{image}"


def plan_renderable(job: Job, view: PlanView, width: int = 78) -> Group:
    parts: list = []
    heading = lambda s: Text(s, style="bold underline")  # noqa: E731
    parts += [heading("Job"), Text(describe_job(job)), Text("")]
    parts += [heading("Hardware")] + [Text(line) for line in view.hardware] + [Text("")]
    plan = view.plan
    parts.append(heading("Plan"))
    if view.preferences:
        parts.append(Text(f"profile preferences: {view.preferences}", style="cyan"))
    where = "every component on the CPU" if plan.device == "cpu" else plan.summary()
    parts.append(Text(f"{plan.device}: {where}"))
    if plan.predicted:
        table = Table(box=None, padding=(0, 2), show_edge=False)
        for col in ("stage", "peak VRAM", "peak RAM", "time"):
            table.add_column(col, justify="left" if col == "stage" else "right")
        for s in plan.predicted:
            table.add_row(s.label, fmt_bytes(s.vram_bytes), fmt_bytes(s.ram_bytes), fmt_seconds(s.seconds) if s.seconds else "-")
        table.add_row(Text("peak", style="bold"), fmt_bytes(plan.peak_vram_bytes), fmt_bytes(plan.peak_ram_bytes), fmt_seconds(plan.predicted_seconds) if plan.predicted_seconds else "-")
        parts.append(table)
    else:
        parts.append(Text("no predicted peaks or time for this plan", style="dim"))
    notes, comparison = split_explanation(view.explanation)
    parts += [Text(line, style="dim") for line in dict.fromkeys(tuple(plan.reasons) + notes) if line]
    parts.append(Text(""))
    parts.append(heading("Alternatives"))
    fitting = sum(alt.fits for alt in view.alternatives)
    if view.alternatives:
        parts.append(Text(f"{len(view.alternatives)} plans considered, {fitting} fit this machine"))
    if comparison:
        for line in comparison:
            if not line.startswith(" "):
                parts.append(Text(line, style="bold"))
            else:  # indented items wrap under themselves
                over = "over VRAM" in line or "over RAM" in line
                parts.append(Padding(Text(line.strip(), style="red" if over else ""), (0, 0, 0, 2)))
    elif len(view.alternatives) <= 1:
        parts.append(Text("no alternatives: one plan is possible on this machine", style="dim"))
    parts += [Text(""), heading("MagCache" if job.cache.method == "magcache" else "TeaCache")]
    preview = view.preview
    if preview is None:
        parts.append(Text("no preview", style="dim"))
    else:
        if preview.note:
            parts.append(Text(preview.note))
        if preview.decisions:
            branches = tuple(b for b in BRANCHES if any(d.branch == b for d in preview.decisions))
            grid = StepGrid(preview.total_steps, branches)
            grid.set_prediction(preview.decisions)
            parts.append(render_grid(grid, width - 8, predicted=True))
    return Group(*parts)


class PlanScreen(Screen):
    SUB_TITLE = "plan"
    BINDINGS = [
        Binding("enter,r", "run", "Run"),
        Binding("escape,b", "back", "Back to job"),
    ]

    def __init__(self, job: Job) -> None:
        super().__init__()
        self.job = job
        self.view: PlanView | None = None

    def compose(self) -> ComposeResult:
        yield TitleBar()
        yield LoadingIndicator(id="planning")
        with VerticalScroll(id="plan-body"):
            yield Static("", id="plan")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#plan-body").display = False
        self.make_plan()

    @work(thread=True, exclusive=True, exit_on_error=False, group="plan")
    def make_plan(self) -> tuple:
        """(the plan view, the probe); the app's state is set on the UI thread when the worker ends."""
        services = self.app.services
        probe = services.probe()
        view = services.plan(self.job, probe, self.app.planner_prefs)
        preview = services.preview(self.job, view.plan)
        return replace(view, preview=preview), probe

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "plan":
            return
        if event.state == WorkerState.SUCCESS:
            self.view, self.app.last_probe = event.worker.result
            self.app.last_plan = self.view.plan
            self.query_one("#plan", Static).update(plan_renderable(self.job, self.view, self.size.width - 2))
        elif event.state == WorkerState.ERROR:
            error = event.worker.error
            message = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
            self.query_one("#plan", Static).update(Text(f"No plan: {message}", style="bold red"))
            self.notify(message, title="No plan", severity="error", timeout=10)
        else:
            return
        self.query_one("#planning").display = False
        self.query_one("#plan-body").display = True
        self.query_one("#plan-body").focus()

    def action_run(self) -> None:
        if self.view is None:
            self.notify("no plan to run yet", severity="warning")
            return
        self.app.start_run(self.job, self.view)

    def action_back(self) -> None:
        self.app.back_to_job()
