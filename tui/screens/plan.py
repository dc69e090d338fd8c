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
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, LoadingIndicator, Static
from textual.worker import Worker, WorkerState

from lowvram.cli.console import fmt_bytes, fmt_seconds
from lowvram.errors import UserError
from lowvram.job import Job
from tui.layout import WideLayout
from tui.services import PlanView, split_explanation
from tui.state import BRANCHES, StepGrid
from tui.widgets.skip_map import render_grid
from tui.widgets.title_bar import TitleBar


def describe_job(job: Job, random_seed: bool = False) -> str:
    tc = job.cache
    cache = "TeaCache off" if not tc.enabled else tc.describe()
    image = f", image {job.image}" if job.image else ""
    seed = f"seed {job.seed}" + (" (random)" if random_seed else "")
    loras = (", LoRA " + ", ".join(lora.describe() for lora in job.loras)) if job.loras else ""
    return f"{job.model}: {job.width}x{job.height}, {job.frames} frames, {job.steps} steps, guidance {job.guidance:g}, {seed}, {cache}{image}{loras}"


def plan_parts(job: Job, view: PlanView, width: int = 78, random_seed: bool = False) -> tuple[list, list]:
    """(the job, the machine and the plan; the alternatives, the TeaCache schedule and the suggestions):
    one column each on a wide terminal, one after the other on a narrow one."""
    from lowvram.models.advice import job_warnings

    heading = lambda s: Text(s, style="bold underline")  # noqa: E731
    left: list = [heading("Job"), Text(describe_job(job, random_seed))]
    left += [Text(note, style="cyan") for note in job.notes]  # what the LoRAs set, and why
    left += [Text("⚠ " + w, style="yellow") for w in job_warnings(job)]
    left += [Text(""), heading("Hardware")] + [Text(line) for line in view.hardware] + [Text("")]
    plan = view.plan
    left.append(heading("Plan"))
    if view.preferences:
        left.append(Text(f"profile preferences: {view.preferences}", style="cyan"))
    where = "every component on the CPU" if plan.device == "cpu" else plan.summary()
    left.append(Text(f"{plan.device}: {where}"))
    if plan.predicted:
        table = Table(box=None, padding=(0, 2), show_edge=False)
        for col in ("stage", "peak VRAM", "peak RAM", "time"):
            table.add_column(col, justify="left" if col == "stage" else "right")
        for st in plan.predicted:
            table.add_row(st.label, fmt_bytes(st.vram_bytes), fmt_bytes(st.ram_bytes), fmt_seconds(st.seconds) if st.seconds else "-")
        table.add_row(Text("peak", style="bold"), fmt_bytes(plan.peak_vram_bytes), fmt_bytes(plan.peak_ram_bytes), fmt_seconds(plan.predicted_seconds) if plan.predicted_seconds else "-")
        left.append(table)
    else:
        left.append(Text("no predicted peaks or time for this plan", style="dim"))
    notes, comparison = split_explanation(view.explanation)
    left += [Text(line, style="dim") for line in dict.fromkeys(tuple(plan.reasons) + notes) if line]
    right: list = []
    if view.suggestions:
        right += [heading("What would help"), Text(f"this plan is predicted to take {fmt_seconds(plan.predicted_seconds)}; in the form:", style="yellow")]
        for suggestion in view.suggestions:
            right.append(Padding(Text("• " + suggestion_in_fields(suggestion, plan.predicted_seconds)), (0, 0, 0, 2)))
        right.append(Text(""))
    right.append(heading("Alternatives"))
    fitting = sum(alt.fits for alt in view.alternatives)
    if view.alternatives:
        right.append(Text(f"{len(view.alternatives)} plans considered, {fitting} fit this machine"))
    if comparison:
        for line in comparison:
            if not line.startswith(" "):
                right.append(Text(line, style="bold"))
            else:  # indented items wrap under themselves
                over = "over VRAM" in line or "over RAM" in line
                right.append(Padding(Text(line.strip(), style="red" if over else ""), (0, 0, 0, 2)))
    elif len(view.alternatives) <= 1:
        right.append(Text("no alternatives: one plan is possible on this machine", style="dim"))
    right += [Text(""), heading("MagCache" if job.cache.method == "magcache" else "TeaCache")]
    preview = view.preview
    if preview is None:
        right.append(Text("no preview", style="dim"))
    else:
        if preview.note:
            right.append(Text(preview.note))
        if preview.decisions:
            branches = tuple(b for b in BRANCHES if any(d.branch == b for d in preview.decisions))
            grid = StepGrid(preview.total_steps, branches)
            grid.set_prediction(preview.decisions)
            right.append(render_grid(grid, width - 8, predicted=True))
    return left, right


# The form's words for the options planner.suggest names.
SUGGESTION_FIELDS = {"frames": "Frames", "width": "width", "height": "height", "model": "Model", "cache": "Cache", "cache_speedup": "target speed-up",
                     "vram_reserve": "VRAM reserve (GiB)", "ram_reserve": "RAM reserve (GiB)", "min_precision": "lowest precision"}


def suggestion_in_fields(suggestion, current: float) -> str:
    changes = ", ".join(f"{SUGGESTION_FIELDS.get(k, k)} {v}" for k, v in suggestion.changes)
    flag = f" (command line: {suggestion.option})" if any(k in ("vram_reserve", "ram_reserve", "min_precision") for k, _ in suggestion.changes) else ""
    return f"{changes}: {suggestion.describe(current)}{flag}"


def plan_renderable(job: Job, view: PlanView, width: int = 78, random_seed: bool = False) -> Group:
    left, right = plan_parts(job, view, width, random_seed)
    return Group(*left, Text(""), *right)


class PlanScreen(WideLayout, Screen):
    SUB_TITLE = "plan"
    BINDINGS = [
        Binding("enter,r", "run", "Run"),
        Binding("escape,b", "back", "Back to job"),
        # Priority: the focused scroll view's own (hidden) page keys would hide this one from the footer.
        Binding("pagedown", "page(1)", "Scroll", key_display="PgDn/PgUp", priority=True),
        Binding("pageup", "page(-1)", "Scroll up", show=False, priority=True),
    ]

    def __init__(self, job: Job, random_seed: bool = False) -> None:
        super().__init__()
        self.job = job
        self.random_seed = random_seed
        self.view: PlanView | None = None

    def compose(self) -> ComposeResult:
        yield TitleBar()
        yield LoadingIndicator(id="planning")
        with VerticalScroll(id="plan-body"):
            with Horizontal(id="plan-columns"):
                yield Static("", id="plan")
                yield Static("", id="plan-side")
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
        job = view.job or self.job  # its LoRAs checked and their presets applied
        preview = services.preview(job, view.plan)
        return replace(view, preview=preview, job=job), probe

    def render_plan(self) -> None:
        if self.view is None:
            return
        wide = self.has_class("-wide")
        width = (self.size.width // 2 if wide else self.size.width) - 2
        left, right = plan_parts(self.job, self.view, width, self.random_seed)
        if wide:
            self.query_one("#plan", Static).update(Group(*left))
            self.query_one("#plan-side", Static).update(Group(*right))
        else:
            self.query_one("#plan", Static).update(Group(*left, Text(""), *right))
            self.query_one("#plan-side", Static).update("")
        self.query_one("#plan-side").display = wide

    def on_resize(self, event) -> None:
        self.call_after_refresh(self.render_plan)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "plan":
            return
        if event.state == WorkerState.SUCCESS:
            self.view, self.app.last_probe = event.worker.result
            self.job = self.view.job or self.job
            self.app.last_plan = self.view.plan
            self.render_plan()
        elif event.state == WorkerState.ERROR:
            error = event.worker.error
            message = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
            self.query_one("#plan", Static).update(Text(f"No plan: {message}", style="bold red"))
            self.query_one("#plan-side").display = False
            self.notify(message.splitlines()[0], title="No plan", severity="error", timeout=10)
        else:
            return
        self.query_one("#planning").display = False
        self.query_one("#plan-body").display = True
        self.query_one("#plan-body").focus()

    def action_page(self, direction: int) -> None:
        body = self.query_one("#plan-body", VerticalScroll)
        body.scroll_page_down() if direction > 0 else body.scroll_page_up()

    def action_run(self) -> None:
        if self.view is None:
            self.notify("no plan to run yet", severity="warning")
            return
        self.app.start_run(self.job, self.view)

    def action_back(self) -> None:
        self.app.back_to_job(self.job if self.view is not None else None)
