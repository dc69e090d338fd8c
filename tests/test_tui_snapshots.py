"""Snapshots of each screen at 80x24 with deterministic content: a fixed probe, and for the run and
done screens a scripted runtime (fixed events and times) so no measured timing enters the picture."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from tui_support import cpu_services

from lowvram.errors import CancelledError
from lowvram.caching.setting import CacheSetting
from lowvram.job import Job
from lowvram.profiles.library import ProfileEntry
from lowvram.sampling.runner import RunResult
from lowvram.telemetry import (
    MemorySample,
    RunStarted,
    StageFinished,
    StageStarted,
    StepFinished,
    TransformerCall,
)
from planner.plan import Plan
from tui.app import create_app
from tui.screens.done import DoneScreen
from tui.screens.plan import PlanScreen
from tui.screens.run import RunScreen

GIB = 1024**3
JOB = Job(prompt="a cat walks in the city", model="tiny-random", width=64, height=64, frames=5, steps=12, seed=3)
TEACACHE_JOB = JOB.with_(cache=CacheSetting("teacache", threshold=0.2))


class FakeLoaded:
    """Stands in for a LoadedModel: the scripted runtime below never touches it."""

    def __init__(self, name: str, plan: Plan, loras: tuple = ()):
        from lowvram.models.names import ModelRef

        self.ref = ModelRef(name=name, kind="demo", location="/demo")
        self.plan = plan
        self.loras = loras


def scripted_events(steps_done: int):
    yield RunStarted(t=0.1, model="tiny-random", task="t2v", prompt=JOB.prompt, plan_summary="scripted plan", total_steps=JOB.steps)
    yield StageStarted(t=0.1, stage="encode")
    yield StageFinished(t=0.6, stage="encode", seconds=0.5, peak_vram_bytes=3 * GIB, peak_ram_bytes=5 * GIB)
    yield StageStarted(t=0.6, stage="denoise")
    for i in range(40):  # VRAM rises while weights stream in; RAM steady
        yield MemorySample(t=0.6 + i * 0.25, vram_allocated=(2 + i % 8) * GIB // 2, vram_reserved=6 * GIB, vram_free=6 * GIB,
                           vram_total=12 * GIB, ram_used=(4 + i // 10) * GIB, ram_available=20 * GIB)
    for step in range(steps_done):
        skipped = step in (3, 5, 6)
        for branch in ("cond", "uncond"):
            yield TransformerCall(t=1.0 + step, step=step, branch=branch, computed=not skipped)
        yield StepFinished(t=1.0 + step, step=step, total=JOB.steps, seconds=1.25, eta_seconds=1.25 * (JOB.steps - step - 1),
                           computed_calls=0 if skipped else 2, skipped_calls=2 if skipped else 0)


def scripted_run(job, plan, on_event, cancel, loaded=None):
    """Emit a fixed run up to step 7, then wait until the screen goes away."""
    for event in scripted_events(7):
        on_event(event)
    cancel.wait(timeout=30)
    raise CancelledError("cancelled")


def scripted_stubborn_run(job, plan, on_event, cancel, loaded=None):
    """Like scripted_run, but a cancel does not end it (a long step under way) until the test is over."""
    for event in scripted_events(7):
        on_event(event)
    STUBBORN_RELEASE.wait(timeout=5)
    raise CancelledError("cancelled")


STUBBORN_RELEASE = threading.Event()


def scripted_finished_run(job, plan, on_event, cancel, loaded=None):
    events = list(scripted_events(job.steps))
    for event in events:
        on_event(event)
    return RunResult(
        video_path=Path("/home/me/outputs/a-cat-walks-in-the-city-seed3.mp4"),
        sidecar_path=Path("/home/me/outputs/a-cat-walks-in-the-city-seed3.json"),
        seconds=83.4,
        plan=plan,
        events=events,
        step_seconds=[1.25] * job.steps,
        stage_peaks={"encode": {"vram_bytes": 3 * GIB, "ram_bytes": 5 * GIB}, "denoise": {"vram_bytes": int(5.5 * GIB), "ram_bytes": 6 * GIB}},
    )


def app_with(**services):
    return create_app(services=cpu_services(load_model=FakeLoaded, **services), job=JOB)


async def _wait(pilot, condition):
    for _ in range(400):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError("timed out")


async def _plan_then(pilot, key: str | None = None, until=lambda screen: True):
    """Job -> plan (waiting for it), then optionally press `key` and wait until `until(screen)`."""
    await pilot.press("ctrl+r")
    await _wait(pilot, lambda: isinstance(pilot.app.screen, PlanScreen) and pilot.app.screen.view is not None)
    if key:
        await pilot.press(key)
        await _wait(pilot, lambda: until(pilot.app.screen))
    await pilot.pause()


SIZES = [(80, 24), (160, 45)]
size = pytest.mark.parametrize("size", SIZES, ids=["80x24", "160x45"])


@size
def test_job_screen(snap_compare, size):
    assert snap_compare(app_with(), terminal_size=size)


@size
def test_job_screen_with_errors(snap_compare, size):
    async def bad_input(pilot):
        pilot.app.screen.query_one("#frames").value = "6"
        pilot.app.screen.query_one("#width").value = "70"
        pilot.app.screen.query_one("#model").value = "wan2.1-t2v-1.3b"
        pilot.app.screen.query_one("#steps").value = "many"
        await pilot.press("ctrl+r")
        await pilot.pause()

    assert snap_compare(app_with(), terminal_size=size, run_before=bad_input)


@size
def test_help_screen(snap_compare, size):
    async def help_(pilot):
        await pilot.press("f1")
        await pilot.pause()

    assert snap_compare(app_with(), terminal_size=size, run_before=help_)


FIXED_PROFILES = [
    ProfileEntry("/profiles/rtx4090-24gb-t2v-14b.toml", "shipped", "RTX 4090 24 GB: T2V-14B 480p",
                 "Wan2.1 text-to-video 14B at 480p on an RTX 4090 (24 GB) with 64 GB of RAM. Part of the transformer streams from RAM.",
                 "wan2.1-t2v-14b"),
    ProfileEntry("/profiles/8gb-t2v-1.3b.toml", "shipped", "8 GB GPU: T2V-1.3B 480p", "Wan2.1 text-to-video 1.3B at 480p on an 8 GB card.", "wan2.1-t2v-1.3b"),
    ProfileEntry("/home/me/.config/lowvram/profiles/mine.toml", "yours", "My small cat", "tiny test settings", "tiny-random"),
]


@size
def test_profile_picker(snap_compare, size):
    async def picker(pilot):
        await pilot.press("ctrl+l")
        await pilot.pause()

    app = create_app(services=cpu_services(load_model=FakeLoaded, profiles=lambda: FIXED_PROFILES), job=JOB)
    assert snap_compare(app, terminal_size=size, run_before=picker)


def fixed_plan_view(job, probe, prefs=None):
    """A planner answer with fixed numbers: the screen is under test here, not the planner (its own tests
    and test_tui_flow cover the real one), so planner tuning does not move this picture."""
    import dataclasses

    from planner.plan import StagePeak, simple_plan
    from planner.suggest import Suggestion
    from tui.services import Alternative, PlanView

    plan = dataclasses.replace(
        simple_plan("cuda", "int8", "partial", resident_blocks=17, text_encoder="offload", vae="gpu_tiled", source="planner"),
        predicted_seconds=5412.0, reasons=("fastest predicted of 3 plans that fit",),
        predicted=tuple(StagePeak(st, int(v * GIB), int(r * GIB), sec) for st, v, r, sec in
                        (("load", 0, 9.5, 20), ("encode", 2.5, 12, 6), ("denoise", 10.5, 14, 5380), ("decode", 6, 9, 6))))
    return PlanView(
        plan=plan,
        hardware=("GPU: RTX 4070 (compute capability 8.9), VRAM 12.0 GiB free of 12.0 GiB", "RAM: 32.0 GiB available of 32.0 GiB"),
        explanation=("budget: VRAM 10.70 GiB, RAM 30.00 GiB", "runners-up:", "  int8 leaf-level group offload with streams: 7m01s (slower by 2%)",
                     "rejected transformer options:", "  bf16 resident on the GPU: over VRAM by 19.40 GiB in denoise"),
        alternatives=(Alternative("a", True), Alternative("b", True), Alternative("c", False, "over VRAM")),
        suggestions=(Suggestion("--frames 49", "49 frames (3.1 s at 16 fps)", 2780.0, (("frames", "49"),)),
                     Suggestion("--vram-reserve 0.5 --ram-reserve 1", "a smaller reserve (0.5 GiB of VRAM, 1 GiB of RAM left free)", 3900.0,
                                (("vram_reserve", "0.5"), ("ram_reserve", "1")))),
    )


def fixed_preview(job, plan):
    from tui.services import SkipPreview, StepDecision

    decisions = tuple(StepDecision(s, b, s < 3 or s % 3 == 0 or s == job.steps - 1) for s in range(job.steps) for b in ("cond", "uncond"))
    return SkipPreview(computed_steps=7, total_steps=job.steps, predicted_speedup=24 / 14, decisions=decisions, note="TeaCache: computes 7 of 12 steps, predicted 1.7x")


def fixed_app(**services):
    return create_app(services=cpu_services(plan=fixed_plan_view, preview=fixed_preview, load_model=FakeLoaded, **services), job=TEACACHE_JOB)


@size
def test_plan_screen(snap_compare, size):
    assert snap_compare(fixed_app(), terminal_size=size, run_before=_plan_then)


def test_plan_screen_alternatives_and_teacache(snap_compare):
    async def scrolled(pilot):
        await _plan_then(pilot)
        await pilot.press("pagedown")
        await pilot.pause()

    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=scrolled)


async def _reuse_model(pilot):
    """Pretend the last run loaded this model, so the log says "reusing" (no load time in the picture)."""
    await _plan_then(pilot)
    pilot.app.loaded = FakeLoaded(TEACACHE_JOB.model, pilot.app.screen.view.plan)


def _run_until(condition, *keys):
    """A run_before: plan, run, wait until `condition(screen)`, then press `keys` one by one."""

    async def run_before(pilot):
        await _reuse_model(pilot)
        await pilot.press("enter")
        await _wait(pilot, lambda: condition(pilot.app.screen))
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
        await pilot.pause()

    return run_before


def seven_steps_shown(screen) -> bool:
    return isinstance(screen, RunScreen) and sum(screen.grid.counts()) == 14


@size
def test_run_screen(snap_compare, size):
    assert snap_compare(fixed_app(generate=scripted_run), terminal_size=size, run_before=_run_until(seven_steps_shown))


@size
def test_run_screen_quitting(snap_compare, size):
    quitting = _run_until(seven_steps_shown, "ctrl+q", "y")
    assert snap_compare(fixed_app(generate=scripted_stubborn_run), terminal_size=size, run_before=quitting)


@size
def test_done_screen(snap_compare, size):
    done = _run_until(lambda screen: isinstance(screen, DoneScreen))
    assert snap_compare(fixed_app(generate=scripted_finished_run), terminal_size=size, run_before=done)
