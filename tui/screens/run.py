"""Run screen: the job runs in a thread worker; its telemetry arrives here as messages.

The screen holds no generation logic: it calls the runner (through the app's services) and renders the
events. Stopping has two levels, as in the CLI: cancel (c, or quit) sets the threading.Event the runner
checks at each step boundary and between decoded frames, keeping the latents; a second Ctrl-C (or Ctrl-Q)
aborts at once (tui.interrupt), still keeping the latents of the last finished step.
"""

from __future__ import annotations

import threading
import time

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Label
from textual.worker import Worker, WorkerState

from lowvram.cli.console import fmt_seconds
from lowvram.errors import CancelledError, UserError
from lowvram.job import Job
from planner.plan import PHASE_LABEL
from lowvram.telemetry import (
    CacheScheduled,
    DecodeProgress,
    MemorySample,
    PlanSwitched,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunStarted,
    PhaseStarted,
    StageStarted,
    StepFinished,
    TransformerCall,
)
from tui.interrupt import Interrupter
from tui.layout import WideLayout
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
# After an abort the worker ends at its next bytecode (after the torch operation under way) and keeps the
# latents; a long native call can hold it longer: quit without it after this long.
ABORT_GRACE_SECONDS = 1.5


class RunScreen(WideLayout, Screen):
    SUB_TITLE = "run"
    BINDINGS = [
        Binding("c", "cancel", "Cancel run"),
        Binding("ctrl+c", "interrupt", "Stop", show=False, priority=True),
        Binding("escape", "leave", "Back to job"),
    ]

    def __init__(self, job: Job, view: PlanView) -> None:
        super().__init__()
        self.job, self.view = job, view
        self.cancel_event = threading.Event()
        self.interrupter = Interrupter()
        self.state = RUNNING
        self.quitting = False
        self.aborted = False
        self.stage = ""
        self.last_step = -1
        self.kept_latents = ""  # where the runtime kept the latents of a cancelled or failed run
        self.cancelled_at = ""  # "denoise (step 8 of 30)"
        self.stop_requested_at = 0.0
        self.load_seconds: float | None = None
        branches = ("cond", "uncond") if job.guidance > 1.0 else ("cond",)
        self.grid = StepGrid(job.steps, branches)
        if view.preview is not None:
            self.grid.set_prediction(view.preview.decisions)

    def compose(self) -> ComposeResult:
        yield TitleBar()
        job = self.job
        yield Label(f"{job.model} · {job.width}x{job.height} · {job.frames} frames · {job.steps} steps · seed {job.seed}", id="run-title")
        yield StepProgress(id="progress")
        with Horizontal(id="run-layout"):
            with Vertical(id="run-left"):
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
        try:
            with self.interrupter.armed():
                return self._generate()
        except KeyboardInterrupt:  # aborted (tui.interrupt): the runner kept the latents and cleaned up
            raise CancelledError("aborted") from None

    def _generate(self) -> tuple:
        app, job, plan = self.app, self.job, self.view.plan
        services = app.services
        loaded = app.reusable_model(job.model, plan)
        reused = loaded is not None
        if loaded is None:
            self.post_message(ModelLoading(job.model))
            started = time.perf_counter()
            loaded = services.load_model(job.model, plan, job.loras)
            self.post_message(ModelReady(job.model, time.perf_counter() - started, reused=False))
        else:
            self.post_message(ModelReady(job.model, 0.0, reused=True))
        result = services.generate(job, plan, on_event=lambda e: self.post_message(RuntimeEvent(e)), cancel=self.cancel_event, loaded=loaded)
        return result, loaded, reused

    # -- events from the worker -----------------------------------------------------------------

    @on(ModelLoading)
    def _loading(self, message: ModelLoading) -> None:
        self.stage = "load"
        if self.state == RUNNING:
            self.query_one(StepProgress).set_stage(f"loading {message.model}…")
        self.query_one(EventLog).add_line(f"loading {message.model}")

    @on(ModelReady)
    def _ready(self, message: ModelReady) -> None:
        line = f"reusing the loaded {message.model}" if message.reused else f"loaded {message.model} in {fmt_seconds(message.seconds)}"
        self.load_seconds = None if message.reused else message.seconds
        self.query_one(EventLog).add_line(line)

    @on(RuntimeEvent)
    def _runtime_event(self, message: RuntimeEvent) -> None:
        event = message.event
        if isinstance(event, MemorySample):
            self.query_one(MemoryGraph).add_sample(event)
            return
        progress = self.query_one(StepProgress)
        if isinstance(event, (TransformerCall, StepFinished)) and self.grid.apply(event):
            self.query_one(SkipMap).refresh_map()
        if isinstance(event, StepFinished):
            self.last_step = event.step
            progress.step(event)
        elif isinstance(event, DecodeProgress):
            progress.decode(event)
        elif isinstance(event, PhaseStarted):
            # which of a two-expert model's experts is on the GPU now
            if self.state == RUNNING:
                progress.set_stage(f"stage: denoise, {PHASE_LABEL.get(event.phase, event.component)} on the GPU")
        elif isinstance(event, StageStarted):
            self.stage = event.stage
            if event.stage == "decode":
                progress.start_decode()
            if self.state == RUNNING:
                progress.set_stage(f"stage: {event.stage}")
        elif isinstance(event, CacheScheduled):
            # The runtime's own schedule (one event per denoiser component) replaces the plan screen's preview.
            self.grid.set_schedule(event)
            self.query_one(SkipMap).refresh_map()  # the runtime logs its summary as a LogMessage
        elif isinstance(event, PlanSwitched):
            self.notify(event.reason, title=f"Plan switched during {event.stage}", severity="warning", timeout=10)
        elif isinstance(event, (RunCancelled, RunFailed)):
            self.kept_latents = event.latents_path
            if isinstance(event, RunCancelled):
                where = f" (after step {event.step} of {self.job.steps})" if event.step >= 0 else ""
                self.cancelled_at = f"{event.stage or 'start-up'}{where}"
        elif isinstance(event, RunStarted):
            progress.set_total(event.total_steps)
        elif isinstance(event, RunFinished):
            progress.finish("finished")
        if self.state == CANCELLING and isinstance(event, (StageStarted, StepFinished, DecodeProgress)):
            progress.set_stage(self.stopping_text())
        if not isinstance(event, TransformerCall):
            self.query_one(EventLog).add_event(event)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "generate":
            return
        if event.state == WorkerState.SUCCESS:
            result, loaded, reused = event.worker.result
            self.state = FINISHED
            self.app.keep_model(loaded)
            if self.quitting:  # the run finished before it could stop (the decode completed): say where the video is
                self.app.exit(return_code=0, message=f"lowvram: wrote {result.video_path}")
                return
            summary = RunSummary.from_result(result, reused_model=reused, plan=self.view.plan, seed=self.job.seed, load_seconds=self.load_seconds)
            self.app.show_done(self.job, summary)
        elif event.state == WorkerState.ERROR:
            error = event.worker.error
            progress = self.query_one(StepProgress)
            if isinstance(error, CancelledError):
                self.state = CANCELLED
                progress.finish("cancelled: no video written · esc: back to the job")
                if self.quitting:
                    self.app.exit(return_code=130, message=self.exit_message())
                    return
                self.notify("no video written" + self._resume_hint(), title="Cancelled", severity="warning", timeout=15)
            else:
                self.state = FAILED
                message = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
                progress.finish("failed · esc: back to the job")
                self.query_one(EventLog).add_line(f"error: {message}")
                if self.quitting:
                    self.app.exit(return_code=getattr(error, "exit_code", 1), message=f"lowvram: the run failed: {message}{self._resume_hint()}")
                    return
                self.notify(message + self._resume_hint(), title="Run failed", severity="error", timeout=15)
            self.refresh_bindings()

    def _resume_hint(self) -> str:
        if not self.kept_latents:
            return ""
        return f"; latents kept: finish later with lowvram generate --resume {self.kept_latents}"

    def exit_message(self) -> str:
        how = "aborted" if self.aborted else "cancelled"
        where = f" during {self.cancelled_at}" if self.cancelled_at else ""
        return f"lowvram: run {how}{where}, no video written{self._resume_hint()}"

    # -- stopping ----------------------------------------------------------------------------------

    def stopping_text(self) -> str:
        """What the run does before it stops, and how to stop it at once."""
        if self.stage == "denoise" and self.last_step + 1 < self.job.steps:
            doing = f"finishing step {self.last_step + 2}/{self.job.steps}"
        elif self.stage == "decode":
            doing = "stopping the decode after this frame"
        elif self.stage == "write":
            doing = "writing the decoded video"
        elif self.stage in ("load", ""):
            doing = "finishing loading the model"
        else:
            doing = f"finishing {self.stage}"
        verb = "quitting" if self.quitting else "cancelling"
        return f"{verb}: {doing} (latents are kept for --resume) · Ctrl-C again aborts now"

    def request_stop(self, quitting: bool) -> None:
        """The first press: stop at the next boundary (and quit then, when quitting)."""
        self.quitting = self.quitting or quitting
        if self.state == RUNNING:
            self.state = CANCELLING
            self.stop_requested_at = time.monotonic()
            self.cancel_event.set()
        self.query_one(StepProgress).set_stage(self.stopping_text())
        self.refresh_bindings()

    def abort(self) -> None:
        """The second press: raise KeyboardInterrupt in the worker now and quit when it has kept the latents
        and cleaned up; when a native call holds it past the grace period, quit without waiting for it."""
        self.quitting = True
        self.aborted = True
        self.cancel_event.set()
        self.query_one(StepProgress).set_stage("aborting now…")
        if self.interrupter.interrupt():
            self.set_timer(ABORT_GRACE_SECONDS, self._abandon)

    def _abandon(self) -> None:
        if self.state not in (RUNNING, CANCELLING):
            return  # the worker reported in time
        self.app.abandoned_worker = True  # `lowvram tui` ends the process without waiting for it
        where = f" during {self.stage}" + (f" (step {self.last_step + 2} of {self.job.steps})" if self.stage == "denoise" else "")
        self.app.exit(return_code=130, message=f"lowvram: run aborted{where}; the operation under way did not stop in time, "
                                               "so neither a video nor the latents were written")

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "cancel":
            return self.state == RUNNING
        if action == "leave":  # nothing to go back to while the run stops
            return self.state != CANCELLING
        return True

    def action_cancel(self) -> None:
        def answered(yes: bool | None) -> None:
            if yes and self.state == RUNNING:
                self.request_stop(quitting=False)

        self.app.push_screen(ConfirmScreen("Cancel this run? It stops after the current step (or decoded frame) and keeps the latents for --resume; no video is written."), answered)

    def action_interrupt(self) -> None:
        """Ctrl-C: while running, cancel and quit (asked first); while stopping, abort at once."""
        if self.state == CANCELLING:
            self.abort()
        elif self.state == RUNNING:
            self.app.action_quit()
        else:
            self.app.exit(return_code=130 if self.state == CANCELLED else 0)

    def action_quit_run(self) -> None:
        """Ctrl-Q during a run (from the app)."""
        if self.state == CANCELLING:
            self.abort()
            return

        def answered(yes: bool | None) -> None:
            if yes and self.state in (RUNNING, CANCELLING):
                self.request_stop(quitting=True)

        self.app.push_screen(ConfirmScreen("Quit? The run stops after the current step (or decoded frame) and keeps its latents for --resume; Ctrl-C then aborts at once."), answered)

    def action_leave(self) -> None:
        if self.state in (RUNNING, CANCELLING):
            if self.state == RUNNING:
                self.action_cancel()
            return
        self.app.back_to_job()
