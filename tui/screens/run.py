"""Run screen: the job runs in a thread worker; its telemetry arrives here as messages.

The screen holds no generation logic: it calls the runner (through the app's services) and renders
the events. Cancel sets the threading.Event the runner checks at each step boundary.
"""

from __future__ import annotations

import threading
import time

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Label
from textual.worker import Worker, WorkerState

from lowvram.cli.console import fmt_seconds
from lowvram.errors import CancelledError, UserError
from lowvram.job import Job
from lowvram.telemetry import (
    CacheScheduled,
    MemorySample,
    PlanSwitched,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunStarted,
    StageStarted,
    StepFinished,
    TransformerCall,
)
from tui.messages import ModelLoading, ModelReady, RuntimeEvent
from tui.screens.confirm import ConfirmScreen
from tui.services import PlanView
from tui.state import RunSummary, StepGrid
from tui.widgets.event_log import EventLog
from tui.widgets.memory_graph import MemoryGraph
from tui.widgets.skip_map import SkipMap
from tui.widgets.step_progress import StepProgress
from tui.widgets.title_bar import TitleBar

RUNNING, CANCELLING, CANCELLED, FAILED, FINISHED = "running", "cancelling", "cancelled", "failed", "finished"


class RunScreen(Screen):
    SUB_TITLE = "run"
    BINDINGS = [
        Binding("c", "cancel", "Cancel run"),
        Binding("escape", "leave", "Back to job"),
    ]

    def __init__(self, job: Job, view: PlanView) -> None:
        super().__init__()
        self.job, self.view = job, view
        self.cancel_event = threading.Event()
        self.state = RUNNING
        self.kept_latents = ""  # where the runtime kept the latents of a cancelled or failed run
        branches = ("cond", "uncond") if job.guidance > 1.0 else ("cond",)
        self.grid = StepGrid(job.steps, branches)
        if view.preview is not None:
            self.grid.set_prediction(view.preview.decisions)

    def compose(self) -> ComposeResult:
        yield TitleBar()
        job = self.job
        yield Label(f"{job.model} · {job.width}x{job.height} · {job.frames} frames · {job.steps} steps", id="run-title")
        yield StepProgress(id="progress")
        yield MemoryGraph(id="memory")
        yield SkipMap(self.grid, id="skipmap")
        yield EventLog(id="log")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(StepProgress).set_total(self.job.steps)
        self.query_one(SkipMap).refresh_map()
        self.generate()

    def on_unmount(self) -> None:
        self.cancel_event.set()  # never leave a run going behind a closed screen

    # -- the worker -----------------------------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="generate")
    def generate(self) -> tuple:
        app, job, plan = self.app, self.job, self.view.plan
        services = app.services
        loaded = app.reusable_model(job.model, plan)
        reused = loaded is not None
        if loaded is None:
            self.post_message(ModelLoading(job.model))
            started = time.perf_counter()
            loaded = services.load_model(job.model, plan)
            self.post_message(ModelReady(job.model, time.perf_counter() - started, reused=False))
        else:
            self.post_message(ModelReady(job.model, 0.0, reused=True))
        result = services.generate(job, plan, on_event=lambda e: self.post_message(RuntimeEvent(e)), cancel=self.cancel_event, loaded=loaded)
        return result, loaded, reused

    # -- events from the worker -----------------------------------------------------------------

    @on(ModelLoading)
    def _loading(self, message: ModelLoading) -> None:
        self.query_one(StepProgress).set_stage(f"loading {message.model}…")
        self.query_one(EventLog).add_line(f"loading {message.model}")

    @on(ModelReady)
    def _ready(self, message: ModelReady) -> None:
        line = f"reusing the loaded {message.model}" if message.reused else f"loaded {message.model} in {fmt_seconds(message.seconds)}"
        self.query_one(EventLog).add_line(line)

    @on(RuntimeEvent)
    def _runtime_event(self, message: RuntimeEvent) -> None:
        event = message.event
        if isinstance(event, MemorySample):
            self.query_one(MemoryGraph).add_sample(event)
            return
        if isinstance(event, (TransformerCall, StepFinished)) and self.grid.apply(event):
            self.query_one(SkipMap).refresh_map()
        if isinstance(event, StepFinished):
            self.query_one(StepProgress).step(event)
        elif isinstance(event, StageStarted) and self.state == RUNNING:
            self.query_one(StepProgress).set_stage(f"stage: {event.stage}")
        elif isinstance(event, CacheScheduled):
            # The runtime's own schedule (one event per denoiser component) replaces the plan screen's preview.
            self.grid.set_schedule(event)
            self.query_one(SkipMap).refresh_map()  # the runtime logs its summary as a LogMessage
        elif isinstance(event, PlanSwitched):
            self.notify(event.reason, title=f"Plan switched during {event.stage}", severity="warning", timeout=10)
        elif isinstance(event, (RunCancelled, RunFailed)):
            self.kept_latents = event.latents_path
        elif isinstance(event, RunStarted):
            self.query_one(StepProgress).set_total(event.total_steps)
        elif isinstance(event, RunFinished):
            self.query_one(StepProgress).finish("finished")
        if not isinstance(event, TransformerCall):
            self.query_one(EventLog).add_event(event)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "generate":
            return
        if event.state == WorkerState.SUCCESS:
            result, loaded, reused = event.worker.result
            self.state = FINISHED
            self.app.keep_model(loaded)
            self.app.show_done(self.job, RunSummary.from_result(result, reused_model=reused))
        elif event.state == WorkerState.ERROR:
            error = event.worker.error
            progress = self.query_one(StepProgress)
            if isinstance(error, CancelledError):
                self.state = CANCELLED
                progress.finish("cancelled: no video written · esc: back to the job")
                self.notify("no video written" + self._resume_hint(), title="Cancelled", severity="warning", timeout=15)
            else:
                self.state = FAILED
                message = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
                progress.finish("failed · esc: back to the job")
                self.query_one(EventLog).add_line(f"error: {message}")
                self.notify(message + self._resume_hint(), title="Run failed", severity="error", timeout=15)
            self.refresh_bindings()

    def _resume_hint(self) -> str:
        if not self.kept_latents:
            return ""
        return f"; latents kept: finish later with lowvram generate --resume {self.kept_latents}"

    # -- actions --------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "cancel":
            return self.state == RUNNING
        return True

    def action_cancel(self) -> None:
        def answered(yes: bool | None) -> None:
            if yes and self.state == RUNNING:
                self.state = CANCELLING
                self.cancel_event.set()
                self.query_one(StepProgress).set_stage("cancelling at the next step boundary…")
                self.refresh_bindings()

        self.app.push_screen(ConfirmScreen("Cancel this run? It stops at the next step; no video is written."), answered)

    def action_leave(self) -> None:
        if self.state in (RUNNING, CANCELLING):
            if self.state == RUNNING:
                self.action_cancel()
            return
        self.app.back_to_job()
