"""Job defaults per model: what `generate`, `plan`, profiles and the TUI use for options not given."""

from __future__ import annotations

DEFAULT_MODEL, DEFAULT_GUIDANCE, DEFAULT_FPS = "tiny-random", 5.0, 16
DEMO_DEFAULTS = dict(width=256, height=144, frames=17, steps=8)
REAL_DEFAULTS = dict(width=832, height=480, frames=81, steps=50)


def job_defaults(model: str) -> dict:
    """Size, frames, steps, guidance, fps and negative prompt for `model` when the user gives none."""
    from lowvram.models.names import DEMO_NAMES

    sizes = DEMO_DEFAULTS if model in DEMO_NAMES else REAL_DEFAULTS
    return dict(sizes, negative_prompt="", guidance=DEFAULT_GUIDANCE, fps=DEFAULT_FPS)
