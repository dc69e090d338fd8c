"""The TUI driven by Pilot on the demo model on CPU: job -> plan -> run -> done, cancel, bad input."""

from __future__ import annotations

import threading

from textual.widgets import Label
from tui_support import cpu_app, fill_job, text_of, wait_for

from lowvram.sampling.runner import generate
from lowvram.telemetry import StepFinished
from tui.screens.done import DoneScreen
from tui.screens.job import JobScreen
from tui.screens.plan import PlanScreen
from tui.screens.run import CANCELLED, RunScreen


async def wait_for_plan(pilot, what: str = "the plan") -> None:
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, PlanScreen) and app.screen.view is not None, what=what)


async def run_to_done(pilot, what: str = "") -> None:
    """Enter on the plan screen, then wait for the worker and the done screen."""
    app = pilot.app
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, (RunScreen, DoneScreen)), what=f"the {what}run screen")
    await app.workers.wait_for_complete()
    await wait_for(pilot, lambda: isinstance(app.screen, DoneScreen), what=f"the {what}done screen")



async def test_whole_flow_writes_the_video_and_reuses_the_model(tmp_path, demo_t2v_path):
    app = cpu_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await fill_job(pilot, tmp_path / "clip.mp4")
        await pilot.press("ctrl+r")
        await wait_for_plan(pilot)
        plan_text = text_of(app.screen.query_one("#plan"))
        assert "Hardware" in plan_text and "Plan" in plan_text and "64x64, 5 frames, 2 steps" in plan_text

        await run_to_done(pilot)
        first = app.screen.summary
        assert (tmp_path / "clip.mp4").stat().st_size > 0
        assert first.video_path.endswith("clip.mp4") and first.steps == 2
        assert first.computed_calls + first.skipped_calls == 4  # 2 steps x cond/uncond
        assert not first.reused_model and first.peak_ram_bytes > 0

        # Another run with the same settings keeps the loaded model and never overwrites the first video.
        await pilot.press("a")
        await wait_for_plan(pilot, what="the second plan")
        await run_to_done(pilot, what="second ")
        second = app.screen.summary
        assert second.reused_model and second.video_path != first.video_path
        assert len(list(tmp_path.glob("*.mp4"))) == 2

        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen), what="the job screen")
        assert app.screen.values()["prompt"] == "a cat walks in the city"


def pausing_generate(first_step: threading.Event, finished: threading.Event | None = None):
    """The real runner; after step 1 it waits (bounded) until the user has confirmed the cancel."""

    def run(job, plan, on_event, cancel, loaded=None):
        def sink(event):
            on_event(event)
            if isinstance(event, StepFinished) and event.step == 0:
                first_step.set()
                cancel.wait(timeout=30)

        try:
            return generate(job, plan, sink, cancel, loaded=loaded)
        finally:
            if finished is not None:
                finished.set()

    return run


async def start_paused_run(pilot, tmp_path, first_step) -> RunScreen:
    await fill_job(pilot, tmp_path / "never.mp4", steps="6")
    await pilot.press("ctrl+r")
    await wait_for_plan(pilot)
    await pilot.press("enter")
    await wait_for(pilot, first_step.is_set, what="the first step")
    assert isinstance(pilot.app.screen, RunScreen)
    return pilot.app.screen


async def test_cancel_mid_run_with_confirmation_writes_no_video(tmp_path, demo_t2v_path):
    first_step = threading.Event()
    app = cpu_app(generate=pausing_generate(first_step))
    async with app.run_test(size=(80, 24)) as pilot:
        run_screen = await start_paused_run(pilot, tmp_path, first_step)
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("n")  # "No": the run goes on
        await pilot.pause()
        assert not run_screen.cancel_event.is_set()

        await pilot.press("c")
        await pilot.pause()
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await wait_for(pilot, lambda: run_screen.state == CANCELLED, what="the cancelled state")
        assert "cancelled" in text_of(run_screen.query_one("#stage", Label))
        assert run_screen.grid.counts() == (2, 0)  # step 1's two calls computed, nothing after
        assert not list(tmp_path.glob("*.mp4"))
        cancelled = [n.message for n in app._notifications if n.title == "Cancelled"]
        assert cancelled and "generate --resume" in cancelled[0]  # the runtime kept the latents; the UI says how to finish

        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen), what="the job screen")


async def test_quit_during_a_run_asks_then_cancels_it(tmp_path, demo_t2v_path):
    first_step, finished = threading.Event(), threading.Event()
    app = cpu_app(generate=pausing_generate(first_step, finished))
    async with app.run_test(size=(80, 24)) as pilot:
        run_screen = await start_paused_run(pilot, tmp_path, first_step)
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert app.is_running and not run_screen.cancel_event.is_set()  # asked first
        await pilot.press("y")
        await pilot.pause()
        assert run_screen.cancel_event.is_set()
    assert finished.wait(timeout=30)  # the runner stopped at the next step boundary
    assert not list(tmp_path.glob("*.mp4"))


async def test_bad_input_is_refused_with_a_message_next_to_the_field(tmp_path):
    app = cpu_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+r")  # empty prompt
        screen = app.screen
        assert isinstance(screen, JobScreen)
        assert "prompt is empty" in text_of(screen.query_one("#error-prompt", Label))

        await fill_job(pilot, tmp_path / "x.mp4", width="65", frames="6", steps="two", image=str(tmp_path / "missing.png"))
        assert "no such file" in text_of(screen.query_one("#error-image", Label))
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert isinstance(app.screen, JobScreen)
        assert "whole number" in text_of(screen.query_one("#error-frames", Label))  # steps share the frames row

        screen.query_one("#steps").value = "2"
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert isinstance(app.screen, JobScreen)
        assert "multiple of 16" in text_of(screen.query_one("#error-preset", Label))
        assert "4k+1" in text_of(screen.query_one("#error-frames", Label))
        assert "no such file" in text_of(screen.query_one("#error-image", Label))
        assert screen.query_one("#error-prompt", Label).display is False

        screen.query_one("#model").value = "no-such-model"
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert "not a known model name" in text_of(screen.query_one("#error-model", Label))


async def test_profile_save_and_load_from_the_form(tmp_path):
    app = cpu_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await fill_job(pilot, tmp_path / "x.mp4", negative="blurry", teacache_value="0.08")
        screen.query_one("#teacache_mode").value = "threshold"
        screen.query_one("#profile").value = str(tmp_path / "mine.toml")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert (tmp_path / "mine.toml").is_file()

        await pilot.press("ctrl+s")  # never overwrites: refused with a notification, the file unchanged
        await pilot.pause()
        assert any("already exists" in n.message for n in app._notifications)

        screen.query_one("#width").value = "128"
        screen.query_one("#negative").value = ""
        screen.query_one("#teacache_mode").value = "off"
        await pilot.press("ctrl+l")
        await pilot.pause()
        values = screen.values()
        assert (values["width"], values["negative"], values["teacache_mode"], values["teacache_value"]) == ("64", "blurry", "threshold", "0.08")
        assert values["prompt"] == "a cat walks in the city"  # a profile holds no prompt: the typed one stays

        (tmp_path / "bad.toml").write_text("schema_version = 1\nname = 'x'\nmodel = 'tiny-random'\n[job]\nwidth = 'wide'\n")
        screen.query_one("#profile").value = str(tmp_path / "bad.toml")
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert any("width" in n.message and "bad.toml" in n.message for n in app._notifications)
        assert screen.values()["width"] == "64"


async def test_out_of_memory_switches_plan_with_a_notification_and_finishes(tmp_path, demo_t2v_path):
    from lowvram.sampling.faults import FaultPlan

    def generate_with_oom(job, plan, on_event, cancel, loaded=None):
        """The real runner with a real torch.OutOfMemoryError injected at denoising step 1."""
        return generate(job, plan, on_event, cancel, loaded=loaded, faults=FaultPlan.parse("denoise:1"))

    app = cpu_app(generate=generate_with_oom)
    async with app.run_test(size=(80, 24)) as pilot:
        await fill_job(pilot, tmp_path / "oom.mp4")
        await pilot.press("ctrl+r")
        await wait_for_plan(pilot)
        await run_to_done(pilot)
        switched = [n for n in app._notifications if n.title == "Plan switched during denoise"]
        assert switched and "out of memory" in switched[0].message
        assert (tmp_path / "oom.mp4").stat().st_size > 0
        await pilot.press("q")  # q quits from the done screen
        await pilot.pause()
        assert app.return_code == 0


async def test_plan_screen_shows_the_planners_alternatives_for_a_small_gpu():
    """A real model planned for a fixed 8 GiB GPU (no weights needed): rejected options come with reasons."""
    from lowvram.job import Job
    from planner.probe import synthetic_probe
    from tui.app import create_app
    from tui.services import Services

    probe = lambda: synthetic_probe(vram_gib=8, ram_gib=16, gpu_name="RTX 3060", compute_capability=(8, 6))  # noqa: E731
    job = Job(prompt="a cat", model="wan2.1-t2v-14b", width=832, height=480, frames=81, steps=50)
    app = create_app(services=Services(probe=probe), job=job)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+r")
        await wait_for_plan(pilot)
        text = text_of(app.screen.query_one("#plan"))
        assert "RTX 3060" in text and "cuda" in text
        assert "rejected transformer options" in text and "over VRAM by" in text
        assert "plans considered" in text


async def test_tui_profile_option_fills_the_form_and_model_option_wins(tmp_path):
    from pathlib import Path

    from tui_support import cpu_services

    from tui.app import create_app

    shipped = sorted(Path(__file__).resolve().parent.parent.joinpath("profiles").glob("*.toml"))
    assert shipped, "the curated profiles ship in profiles/"
    app = create_app(profile=str(shipped[0]), model="tiny-random", services=cpu_services())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        values = app.screen.values()
        assert values["model"] == "tiny-random"  # --model overrides the profile's model
        from lowvram.profiles import load

        profile = load(shipped[0])
        if profile.job.steps is not None:
            assert values["steps"] == str(profile.job.steps)
        assert app.planner_prefs == profile.planner
