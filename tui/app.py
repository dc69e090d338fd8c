"""The lowvram TUI: job -> plan -> run -> done. `create_app` builds it for the CLI and for tests."""

from __future__ import annotations

from typing import Any, Optional

from textual.app import App
from textual.binding import Binding
from textual.screen import ModalScreen

from lowvram.errors import UserError
from lowvram.job import Job
from planner.plan import Plan
from tui.form import default_job
from tui.screens.done import DoneScreen
from tui.screens.job import JobScreen
from tui.screens.plan import PlanScreen
from tui.screens.run import CANCELLING, RUNNING, RunScreen
from tui.services import PlanView, Services
from tui.state import RunSummary


class LowvramApp(App):
    CSS_PATH = "styles.tcss"
    TITLE = "lowvram"
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("f1", "help", "Help", priority=True),
        Binding("question_mark", "help", "Help", show=False),  # an Input takes "?" as text: F1 always works
    ]

    def __init__(self, services: Services, job: Job, profile: Optional[str] = None, model_override: Optional[str] = None,
                 loras_override: Optional[tuple] = None) -> None:
        super().__init__()
        self.model_override = model_override
        self.loras_override = loras_override
        self.services = services
        self.initial_job = job
        self.profile = profile
        self.last_plan: Optional[Plan] = None
        self.last_probe: Any = None
        self.planner_prefs: Any = None  # the loaded profile's [planner] preferences, if any
        self.loaded: Any = None  # the LoadedModel of the last successful run, reused when it fits
        self.seed_was_random = False  # the job being planned or run drew its seed at random
        self.abandoned_worker = False  # an aborted run's thread did not stop in time: end without waiting for it

    def on_mount(self) -> None:
        job = self.initial_job
        profile = ""
        if self.profile:
            try:
                loaded, self.planner_prefs = self.services.load_profile(self.profile, job)
                # Command-line options override the profile, as in `generate`.
                job = loaded.with_(model=self.model_override) if self.model_override else loaded
                profile = self.profile
                if self.loras_override is not None:  # --lora given: it wins over the profile's, as in `generate`
                    job = job.with_(loras=self.loras_override, notes=())
            except UserError as exc:
                self.notify(str(exc), title="Profile not loaded", severity="error", timeout=10)
        self.push_screen(JobScreen(job, profile, profile_name=self._profile_name(profile)))

    def _profile_name(self, path: str) -> str:
        if not path:
            return ""
        from pathlib import Path

        try:
            from lowvram.profiles import load

            return load(path).name or Path(path).stem
        except UserError:
            return Path(path).stem

    def action_quit(self) -> None:
        """Quit; during a run, ask first, then stop it after the current step (a second press aborts at once)."""
        run = self._run_screen()
        if run is not None and run.state in (RUNNING, CANCELLING):
            run.action_quit_run()
            return
        self.exit()

    def _run_screen(self) -> Optional[RunScreen]:
        return next((s for s in reversed(self.screen_stack) if isinstance(s, RunScreen)), None)

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):
            self.screen.dismiss(None)
            return
        screen = next((s for s in reversed(self.screen_stack) if not isinstance(s, ModalScreen)), self.screen)
        self.push_screen(HelpScreen(getattr(screen, "SUB_TITLE", "")))

    # -- navigation, called by the screens -------------------------------------------------------

    def show_plan(self, job: Job, random_seed: bool = False) -> None:
        self._pop_to_job()
        self.seed_was_random = random_seed
        self.push_screen(PlanScreen(job, random_seed=random_seed))

    def run_again(self, job: Job) -> None:
        """The same job once more; a seed that was drawn at random is drawn again (the same seed would make
        the same video)."""
        from lowvram.models.defaults import random_seed

        if self.seed_was_random:
            job = job.with_(seed=random_seed())
        self.show_plan(job, random_seed=self.seed_was_random)

    def start_run(self, job: Job, view: PlanView) -> None:
        self.push_screen(RunScreen(job, view))

    def show_done(self, job: Job, summary: RunSummary) -> None:
        self.switch_screen(DoneScreen(job, summary))

    def back_to_job(self, job: Optional[Job] = None) -> None:
        """Back to the form; `job` (the planned one: what its LoRAs set) refills it."""
        self._pop_to_job()
        if job is not None and isinstance(self.screen, JobScreen):
            self.screen.fill(job)

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


def create_app(model: Optional[str] = None, profile: Optional[str] = None, services: Optional[Services] = None, job: Optional[Job] = None,
               loras: Optional[tuple] = None) -> LowvramApp:
    """The app with the given (or real) services. `job` prefills the form; `model` picks the model; `loras`
    (LoraSpecs of --lora) the LoRAs, over a profile's."""
    job = job or default_job(model)
    if model and job.model != model:
        job = job.with_(model=model)
    if loras is not None:
        job = job.with_(loras=loras)
    return LowvramApp(services or Services(), job, profile, model_override=model, loras_override=loras)
