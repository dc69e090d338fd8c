"""The lowvram TUI: job -> plan -> run -> done. `create_app` builds it for the CLI and for tests."""

from __future__ import annotations

from typing import Any, Optional

from textual.app import App
from textual.binding import Binding

from lowvram.errors import UserError
from lowvram.job import Job
from planner.plan import Plan
from tui.form import default_job
from tui.screens.confirm import ConfirmScreen
from tui.screens.done import DoneScreen
from tui.screens.job import JobScreen
from tui.screens.plan import PlanScreen
from tui.screens.run import RUNNING, RunScreen
from tui.services import PlanView, Services
from tui.state import RunSummary


class LowvramApp(App):
    CSS_PATH = "styles.tcss"
    TITLE = "lowvram"
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(self, services: Services, job: Job, profile: Optional[str] = None, model_override: Optional[str] = None) -> None:
        super().__init__()
        self.model_override = model_override
        self.services = services
        self.initial_job = job
        self.profile = profile
        self.last_plan: Optional[Plan] = None
        self.last_probe: Any = None
        self.planner_prefs: Any = None  # the loaded profile's [planner] preferences, if any
        self.loaded: Any = None  # the LoadedModel of the last successful run, reused when it fits

    def on_mount(self) -> None:
        job = self.initial_job
        if self.profile:
            try:
                loaded, self.planner_prefs = self.services.load_profile(self.profile, job)
                # Command-line options override the profile, as in `generate`.
                job = loaded.with_(model=self.model_override) if self.model_override else loaded
            except UserError as exc:
                self.notify(str(exc), title="Profile not loaded", severity="error", timeout=10)
        self.push_screen(JobScreen(job, self.profile or ""))

    async def action_quit(self) -> None:
        """Quit; during a run, ask first, then cancel it (the runner stops at the next step)."""
        screen = self.screen
        if isinstance(screen, RunScreen) and screen.state == RUNNING:
            def answered(yes: bool | None) -> None:
                if yes:
                    screen.cancel_event.set()
                    self.exit()

            self.push_screen(ConfirmScreen("A run is in progress. Cancel it and quit?"), answered)
            return
        self.exit()

    # -- navigation, called by the screens -------------------------------------------------------

    def show_plan(self, job: Job) -> None:
        self._pop_to_job()
        self.push_screen(PlanScreen(job))

    def start_run(self, job: Job, view: PlanView) -> None:
        self.push_screen(RunScreen(job, view))

    def show_done(self, job: Job, summary: RunSummary) -> None:
        self.switch_screen(DoneScreen(job, summary))

    def back_to_job(self) -> None:
        self._pop_to_job()

    def _pop_to_job(self) -> None:
        while not isinstance(self.screen, JobScreen) and len(self.screen_stack) > 2:
            self.pop_screen()

    # -- the loaded model, kept between runs ----------------------------------------------------

    def reusable_model(self, model: str, plan: Plan) -> Any:
        """The model from the last run when it is the same model placed the same way (after an OOM
        fallback the runner updates loaded.plan, so a leaner placement is never mistaken for this one).
        Plans are compared by the planner's config_key: where weights live, not the predictions, which
        move with free memory between runs."""
        from planner.choose import config_key

        loaded = self.loaded
        if loaded is not None and loaded.ref.name == model and config_key(loaded.plan) == config_key(plan):
            return loaded
        return None

    def keep_model(self, loaded: Any) -> None:
        self.loaded = loaded


def create_app(model: Optional[str] = None, profile: Optional[str] = None, services: Optional[Services] = None, job: Optional[Job] = None) -> LowvramApp:
    """The app with the given (or real) services. `job` prefills the form; `model` picks the model."""
    job = job or default_job(model)
    if model and job.model != model:
        job = job.with_(model=model)
    return LowvramApp(services or Services(), job, profile, model_override=model)
