"""The TUI driven by Pilot on the demo model on CPU: job -> plan -> run -> done, cancel, bad input."""

from __future__ import annotations

import threading
import time

from textual.widgets import Label
from tui_support import cpu_app, fill_job, text_of, wait_for

from lowvram.sampling.runner import generate
from lowvram.telemetry import DecodeProgress, PhaseStarted, StepFinished
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
        assert second.seed != first.seed  # the seed was drawn at random: run again draws another one
        assert len(list(tmp_path.glob("*.mp4"))) == 2

        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen), what="the job screen")
        assert app.screen.values()["prompt"] == "a cat walks in the city"


def first_step_done(event) -> bool:
    return isinstance(event, StepFinished) and event.step == 0


def first_frame_decoded(event) -> bool:
    return isinstance(event, DecodeProgress) and event.done == 1


def pausing_generate(reached: threading.Event, finished: threading.Event | None = None, looked: threading.Event | None = None,
                     when=first_step_done):
    """The real runner; at the event `when` picks (step 1 by default) it waits (bounded) until the user has
    confirmed the cancel, and then, given `looked`, until the test has read the screen (the work "under way"
    while stopping)."""

    def run(job, plan, on_event, cancel, loaded=None):
        def sink(event):
            on_event(event)
            if when(event):
                reached.set()
                cancel.wait(timeout=30)
                if looked is not None:
                    looked.wait(timeout=30)

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
    first_step, looked = threading.Event(), threading.Event()
    app = cpu_app(generate=pausing_generate(first_step, looked=looked))
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
        await pilot.pause()
        stage = text_of(run_screen.query_one("#stage", Label))
        assert stage.startswith("cancelling: finishing step 2/6") and "Ctrl-C again aborts now" in stage
        looked.set()
        await wait_for(pilot, lambda: run_screen.state == CANCELLED, what="the cancelled state")
        assert "cancelled" in text_of(run_screen.query_one("#stage", Label))
        assert run_screen.grid.counts() == (2, 0)  # step 1's two calls computed, nothing after
        assert not list(tmp_path.glob("*.mp4"))
        cancelled = [n.message for n in app._notifications if n.title == "Cancelled"]
        assert cancelled and "generate --resume" in cancelled[0]  # the runtime kept the latents; the UI says how to finish

        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen), what="the job screen")


async def test_quit_during_a_run_asks_finishes_the_step_then_quits(tmp_path, demo_t2v_path):
    first_step, finished, looked = threading.Event(), threading.Event(), threading.Event()
    app = cpu_app(generate=pausing_generate(first_step, finished, looked))
    async with app.run_test(size=(80, 24)) as pilot:
        run_screen = await start_paused_run(pilot, tmp_path, first_step)
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert app.return_code is None and not run_screen.cancel_event.is_set()  # asked first
        await pilot.press("y")
        await pilot.pause()
        assert run_screen.cancel_event.is_set()
        stage = text_of(run_screen.query_one("#stage", Label))
        assert stage.startswith("quitting: finishing step 2/6") and "Ctrl-C again aborts now" in stage  # said, not blank
        assert app.return_code is None  # still on screen while the step finishes
        looked.set()
        await wait_for(pilot, lambda: app.return_code is not None, what="the app to quit")
        assert app.return_code == 130
        message = str(app._exit_renderables[-1])
        assert "run cancelled during denoise (after step 1 of 6)" in message and "lowvram generate --resume" in message
    assert finished.wait(timeout=30)
    assert not list(tmp_path.glob("*.mp4")) and list(tmp_path.glob("*.latents.safetensors"))


def slow_step_generate(first_step: threading.Event, step_seconds: float = 30.0):
    """The real runner whose second step takes `step_seconds` (a long step of a big model): the sink keeps
    the worker busy in Python, as torch would between its operations, whatever the cancel event says."""

    def run(job, plan, on_event, cancel, loaded=None):
        def sink(event):
            on_event(event)
            if isinstance(event, StepFinished) and event.step == 0:
                first_step.set()
                deadline = time.monotonic() + step_seconds
                while time.monotonic() < deadline:
                    time.sleep(0.01)

        return generate(job, plan, sink, cancel, loaded=loaded)

    return run


async def test_a_second_ctrl_c_while_quitting_aborts_at_once(tmp_path, demo_t2v_path):
    first_step = threading.Event()
    app = cpu_app(generate=slow_step_generate(first_step))
    async with app.run_test(size=(80, 24)) as pilot:
        run_screen = await start_paused_run(pilot, tmp_path, first_step)
        await pilot.press("ctrl+c")  # a first Ctrl-C asks to quit, like Ctrl-Q
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        assert "Ctrl-C again aborts now" in text_of(run_screen.query_one("#stage", Label))
        pressed = time.monotonic()
        await pilot.press("ctrl+c")
        await wait_for(pilot, lambda: app.return_code is not None, timeout=10, what="the app to quit")
        took = time.monotonic() - pressed
        assert took < 2.0, f"the abort took {took:.1f} s; the step had 30 s to go"
        assert app.return_code == 130 and not app.abandoned_worker  # the worker stopped in time: nothing left behind
        assert "run aborted during denoise (after step 1 of 6)" in str(app._exit_renderables[-1])
    kept = list(tmp_path.glob("*.latents.safetensors"))
    assert kept and not list(tmp_path.glob("*.mp4"))  # the latents of the finished step are kept even so


async def test_cancel_during_decode_stops_between_frames_with_progress(tmp_path, demo_t2v_path):
    first_chunk, looked = threading.Event(), threading.Event()
    app = cpu_app(generate=pausing_generate(first_chunk, looked=looked, when=first_frame_decoded))
    async with app.run_test(size=(80, 24)) as pilot:
        await fill_job(pilot, tmp_path / "never.mp4", frames="9", steps="2")  # 3 latent frames: 3 chunks
        await pilot.press("ctrl+r")
        await wait_for_plan(pilot)
        await pilot.press("enter")
        await wait_for(pilot, first_chunk.is_set, what="the first decoded frame")
        run_screen = app.screen
        await wait_for(pilot, lambda: "decoded 1/3" in text_of(run_screen.query_one("#step-stats", Label)), what="decode progress")
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        assert "stopping the decode after this frame" in text_of(run_screen.query_one("#stage", Label))
        looked.set()
        await wait_for(pilot, lambda: run_screen.state == CANCELLED, what="the cancelled state")
        assert "decoded 1/3" in text_of(run_screen.query_one("#step-stats", Label))  # it never decoded a second frame
        assert not list(tmp_path.glob("*.mp4")) and list(tmp_path.glob("*.latents.safetensors"))


async def test_bad_input_is_refused_in_one_pass_in_the_forms_words_and_clears_when_fixed(tmp_path):
    app = cpu_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await fill_job(pilot, tmp_path / "x.mp4", prompt=" ", width="65", frames="6", steps="two", image=str(tmp_path / "missing.png"))
        await pilot.press("ctrl+r")  # one press shows every problem
        await pilot.pause()
        assert isinstance(app.screen, JobScreen)
        messages = {key: text_of(screen.query_one(f"#error-{key}", Label)) for key in ("prompt", "image", "preset", "frames")}
        assert "prompt is empty" in messages["prompt"]
        assert "no such file" in messages["image"]
        assert "width 65 must be a positive multiple of 16" in messages["preset"]
        assert "frames 6 must be of the form 4k+1" in messages["frames"] and "whole number" in messages["frames"]  # steps share the row
        assert not any("--" in m for m in messages.values())  # fields, not command-line options
        assert app.focused.id == "prompt"  # the first problem has the focus

        screen.query_one("#steps").value = "2"  # fixed fields lose their message at once, without planning again
        screen.query_one("#frames").value = "5"
        screen.query_one("#prompt").value = "a cat"
        await pilot.pause()
        assert screen.query_one("#error-frames", Label).display is False
        assert screen.query_one("#error-prompt", Label).display is False
        assert "multiple of 16" in text_of(screen.query_one("#error-preset", Label))

        screen.query_one("#model").value = "no-such-model"
        await pilot.pause()
        assert "not a known model name" in text_of(screen.query_one("#error-model", Label))


async def test_an_i2v_model_without_an_image_is_caught_in_the_form(tmp_path, image_file):
    app = cpu_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await fill_job(pilot, tmp_path / "x.mp4", model="tiny-random-i2v")
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert isinstance(app.screen, JobScreen)  # refused before planning, let alone loading
        assert "image-to-video model: give the first frame in the Image field" in text_of(screen.query_one("#error-image", Label))
        screen.query_one("#image").value = str(image_file)  # 64x48
        screen.query_one("#image").focus()
        await pilot.press("tab")  # leaving the field: the video takes the image's shape
        await pilot.pause()
        assert screen.query_one("#error-image", Label).display is False
        assert (screen.values()["width"], screen.values()["height"]) == ("64", "48")
        assert any(n.title == "Resolution" and "64x48" in n.message for n in app._notifications)


async def test_profiles_are_picked_from_a_list_and_saved_with_a_name(tmp_path, monkeypatch):
    from textual.widgets import Input, OptionList

    from lowvram.profiles import load
    from tui.screens.profiles import ProfilePicker, SaveProfile

    monkeypatch.setenv("LOWVRAM_PROFILES_DIR", str(tmp_path / "mine"))
    app = cpu_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await fill_job(pilot, tmp_path / "x.mp4", negative="blurry", teacache_value="0.08")
        screen.query_one("#teacache_mode").value = "threshold"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, SaveProfile), what="the save dialog")
        app.screen.query_one("#save-name", Input).value = "My small cat"
        app.screen.query_one("#save-description", Input).value = "tiny test settings"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen), what="the form again")
        saved = list((tmp_path / "mine").glob("*.toml"))
        assert len(saved) == 1 and load(saved[0]).name == "My small cat" and load(saved[0]).description == "tiny test settings"
        assert "My small cat" in text_of(screen.query_one("#profile-name", Label))

        screen.query_one("#width").value = "128"
        screen.query_one("#negative").value = ""
        screen.query_one("#teacache_mode").value = "off"
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: isinstance(app.screen, ProfilePicker), what="the picker")
        options = app.screen.query_one(OptionList)
        names = [text_of_prompt(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert any(n.startswith("My small cat") and "yours" in n for n in names)
        assert any("RTX 4090 24 GB" in n and "shipped" in n for n in names)  # the shipped profiles too
        mine = next(i for i, n in enumerate(names) if n.startswith("My small cat"))
        options.highlighted = mine
        await pilot.pause()
        assert "tiny test settings" in text_of(app.screen.query_one("#profile-detail"))
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen), what="the form again")
        values = screen.values()
        assert (values["width"], values["negative"], values["teacache_mode"], values["teacache_value"]) == ("64", "blurry", "threshold", "0.08")
        assert values["prompt"] == "a cat walks in the city"  # a profile holds no prompt: the typed one stays

        (tmp_path / "bad.toml").write_text("schema_version = 1\nname = 'x'\nmodel = 'tiny-random'\n[job]\nwidth = 'wide'\n")
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: isinstance(app.screen, ProfilePicker), what="the picker")
        app.screen.query_one("#profile-path", Input).value = str(tmp_path / "bad.toml")
        app.screen.query_one("#profile-path", Input).focus()
        await pilot.press("enter")
        await pilot.pause()
        assert any("width" in n.message and "bad.toml" in n.message for n in app._notifications)
        assert screen.values()["width"] == "64"


def text_of_prompt(prompt) -> str:
    return prompt.plain if hasattr(prompt, "plain") else str(prompt)


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


async def test_the_run_screen_says_which_expert_is_on_the_gpu(tmp_path):
    """Wan2.2 A14B (demo): when the low-noise expert takes over, the stage line names it; the log says where."""
    reached, looked = threading.Event(), threading.Event()

    def run(job, plan, on_event, cancel, loaded=None):
        def sink(event):
            on_event(event)
            if isinstance(event, PhaseStarted) and event.phase == "low":
                reached.set()
                looked.wait(timeout=30)

        return generate(job, plan, sink, cancel, loaded=loaded)

    app = cpu_app(generate=run)
    async with app.run_test(size=(100, 30)) as pilot:
        await fill_job(pilot, tmp_path / "a14b.mp4", model="tiny-random-a14b", steps="4")
        await pilot.press("ctrl+r")
        await wait_for_plan(pilot)
        await pilot.press("enter")
        await wait_for(pilot, reached.is_set, what="the low-noise expert's phase")
        screen = app.screen
        assert isinstance(screen, RunScreen)
        await wait_for(pilot, lambda: "low-noise expert" in text_of(screen.query_one("#stage", Label)), what="the stage line")
        assert text_of(screen.query_one("#stage", Label)) == "stage: denoise, low-noise expert on the GPU"
        looked.set()
        await app.workers.wait_for_complete()
        await wait_for(pilot, lambda: isinstance(app.screen, DoneScreen), what="the done screen")
        assert (tmp_path / "a14b.mp4").stat().st_size > 0
