"""The TUI as a new user meets it: help on F1 / ?, a focus you can see, a completion that looks like one,
columns on a wide terminal, whole output paths at 80x24, a memory graph with a scale, a plan screen that
says it scrolls and what would help, a random seed, and predicted vs measured when done."""

from __future__ import annotations

from textual.geometry import Region
from textual.widgets import Input, Label
from tui_support import cpu_app, fill_job, text_of, wait_for

from lowvram.job import Job
from lowvram.telemetry import MemorySample
from tui.app import create_app
from tui.services import Services
from tui.screens.done import DoneScreen
from tui.screens.help import HelpScreen
from tui.screens.job import JobScreen
from tui.screens.plan import PlanScreen
from tui.widgets.memory_graph import MemoryGraph

GIB = 1024**3


def rendered(widget) -> str:
    """What a widget shows on screen at its size, as text."""
    width, height = widget.size
    return "\n".join(strip.text for strip in widget.render_lines(Region(0, 0, width, height)))


async def plan_of(pilot):
    await pilot.press("ctrl+r")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, PlanScreen) and pilot.app.screen.view is not None, what="the plan")
    await pilot.pause()
    return pilot.app.screen


async def test_f1_and_question_mark_open_the_help_of_the_screen():
    app = cpu_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = text_of(app.screen.query_one("#help-text"))
        assert "Ctrl-R / Enter" in text and "Ctrl-L" in text and "Frames" in text  # the job screen's keys and fields
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, JobScreen)
        await pilot.press("?")  # typed into the focused prompt field: text, not help
        await pilot.pause()
        assert app.screen.query_one("#prompt", Input).value == "?" and isinstance(app.screen, JobScreen)
        app.screen.query_one("#prompt", Input).value = "a cat"
        await plan_of(pilot)
        await pilot.press("question_mark")  # on the plan screen "?" is free
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen) and "run the plan" in text_of(app.screen.query_one("#help-text"))
        await pilot.press("f1")  # F1 again closes it
        await pilot.pause()
        assert isinstance(app.screen, PlanScreen)


async def test_the_focused_field_stands_out_and_a_completion_looks_like_one():
    app = cpu_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        prompt_label = screen.query_one("#row-prompt .field-label", Label)
        model_label = screen.query_one("#row-model .field-label", Label)
        assert app.focused.id == "prompt"
        assert prompt_label.rich_style.bold and not model_label.rich_style.bold
        assert prompt_label.rich_style.color != model_label.rich_style.color
        assert screen.query_one("#prompt", Input).rich_style.bgcolor != screen.query_one("#model", Input).rich_style.bgcolor
        model = screen.query_one("#model", Input)
        model.focus()
        model.value = "wan2.1-t2"
        await pilot.pause()
        suggestion, value = model.get_component_rich_style("input--suggestion"), model.rich_style
        assert suggestion.italic and suggestion.color != value.color
        assert "→ accepts" in text_of(screen.query_one("#field-help"))  # and the help line says how to take it


async def test_wide_terminals_get_a_second_column():
    app = cpu_app()
    async with app.run_test(size=(160, 45)) as pilot:
        screen = app.screen
        await pilot.pause()
        assert screen.has_class("-wide") and screen.query_one("#side").display
        assert screen.query_one("#form").size.width > 90 and screen.query_one("#side").size.width >= 50
        assert "tokens per transformer pass" in text_of(screen.query_one("#side-job"))
        await fill_job(pilot, __import__("pathlib").Path("/tmp/never-written.mp4"))
        plan = await plan_of(pilot)
        assert plan.has_class("-wide") and plan.query_one("#plan-side").display
        assert "Alternatives" in text_of(plan.query_one("#plan-side")) and "Alternatives" not in text_of(plan.query_one("#plan"))
    narrow = cpu_app()
    async with narrow.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert not narrow.screen.has_class("-wide") and not narrow.screen.query_one("#side").display


async def test_an_empty_seed_is_drawn_at_random_and_shown(tmp_path):
    app = cpu_app()
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.screen.query_one("#seed", Input).value == ""  # the form starts with a random seed
        await fill_job(pilot, tmp_path / "x.mp4")
        plan = await plan_of(pilot)
        assert plan.random_seed and f"seed {plan.job.seed} (random)" in text_of(plan.query_one("#plan"))


async def test_the_plan_screen_says_it_scrolls_and_what_would_help():
    from planner.probe import synthetic_probe

    probe = lambda: synthetic_probe(8, 16, gpu_name="RTX 3070", compute_capability=(8, 6))  # noqa: E731
    job = Job(prompt="a cat", model="wan2.1-i2v-14b-480p", image=None)
    app = create_app(services=Services(probe=probe, preview=lambda job, plan: None), job=job)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        screen.query_one("#model", Input).value = "wan2.1-t2v-14b"  # the i2v model would need an image
        await pilot.pause()
        plan = await plan_of(pilot)
        bindings = {key: b.binding.description for key, b in app.active_bindings.items() if b.binding.show}
        assert bindings.get("pagedown") == "Scroll"
        text = text_of(plan.query_one("#plan"))
        assert "What would help" in text and "Model wan2.1-t2v-1.3b" in text and "Frames 49" in text


async def test_done_screen_shows_whole_paths_and_predicted_vs_measured(tmp_path, demo_t2v_path):
    deep = tmp_path / "a-folder-with-a-rather-long-name" / "and-another-one-below-it"
    deep.mkdir(parents=True)
    app = cpu_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await fill_job(pilot, deep / "a-video-with-a-long-name-too.mp4")
        await plan_of(pilot)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DoneScreen), what="the done screen")
        await pilot.pause()
        summary = app.screen.summary
        shown = "".join(rendered(app.screen.query_one("#summary")).split())  # wrapped lines joined again
        assert len(summary.video_path) > 70 and summary.video_path in shown
        rows = {row.stage: row for row in summary.stages}
        assert rows["load"].measured_seconds > 0  # the model was loaded before the run: still counted
        assert rows["load"].measured_ram is None  # timed, not sampled: no made-up peak
        assert rows["denoise"].predicted_seconds is not None and rows["denoise"].measured_seconds > 0
        assert rows["total"].measured_seconds >= summary.seconds
        comparison = text_of(app.screen.query_one("#comparison"))
        assert "predicted vs measured" in comparison and "denoise" in comparison and "total" in comparison


def test_the_ram_graph_shows_its_scale():
    graph = MemoryGraph()
    for used in (1, 2, 3):
        graph.samples.append(MemorySample(ram_used=used * GIB))
    text = graph.render_text(20).plain
    assert "RAM (RSS)" in text and "3.00 GiB" in text and "█=3.00G peak" in text
    graph.samples.append(MemorySample(vram_total=12 * GIB, vram_allocated=GIB, ram_used=GIB))
    assert "█=12.00G total" in graph.render_text(20).plain
