"""Helpers for the TUI tests: a fixed probe (the only fake for hardware), waiting, filling the form."""

from __future__ import annotations

import time
from pathlib import Path

from tui.app import create_app
from tui.services import Services


def cpu_probe():
    """A fixed CPU-only machine, so the plan screen does not depend on where the tests run."""
    from planner.probe import synthetic_probe

    return synthetic_probe(vram_gib=0, ram_gib=16, os="test machine")


def cpu_services(**changes) -> Services:
    return Services(probe=cpu_probe, **changes)


def cpu_app(**changes):
    return create_app(services=cpu_services(**changes))


async def wait_for(pilot, condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; screen is {pilot.app.screen!r}")
        await pilot.pause(0.05)


async def fill_job(pilot, out: Path, prompt: str = "a cat walks in the city", **fields):
    """Type the prompt as a person would; set the sizes of the small test job."""
    from textual.widgets import Input

    screen = pilot.app.screen
    await pilot.click("#prompt")
    await pilot.press(*prompt)
    values = dict(width="64", height="64", frames="5", steps="2", out=str(out))
    values.update(fields)
    for key, value in values.items():
        screen.query_one(f"#{key}", Input).value = value
    await pilot.pause()


def text_of(widget) -> str:
    """What a Static/Label shows, as plain text (Rich renderables rendered at 78 columns)."""
    import io

    from rich.console import Console

    from rich.text import Text

    content = widget.content
    if isinstance(content, str):
        return content
    if isinstance(content, Text):  # unwrapped, so long messages read as one line
        return content.plain
    console = Console(width=78, file=io.StringIO(), record=True, color_system=None)
    console.print(content)
    return console.export_text()
