"""Job defaults per model: what `generate`, `plan`, profiles and the TUI use for options not given.

They come from the model card of the checkpoint's family (planner.families), and the family from the
checkpoint's configs (planner.spec): a folder of Wan2.2 TI2V-5B gets 1280x704, 121 frames at 24 fps
whatever it is called. The demo models get tiny sizes that run in seconds on a CPU.
"""

from __future__ import annotations

from planner.families import FAMILY_DEFAULTS, FamilyDefaults, family_defaults

DEFAULT_MODEL = "tiny-random"
DEFAULT_GUIDANCE, DEFAULT_FPS = FAMILY_DEFAULTS["wan"].guidance, FAMILY_DEFAULTS["wan"].fps


def model_family_defaults(model: str) -> FamilyDefaults:
    """The card defaults for `model`; the generic Wan ones when its configs cannot be read without downloading."""
    from lowvram.errors import UserError
    from lowvram.models.specs import spec_for_model

    try:
        return family_defaults(spec_for_model(model))
    except UserError:
        return FAMILY_DEFAULTS["wan"]


def job_defaults(model: str) -> dict:
    """Size, frames, steps, guidance (per expert), fps and negative prompt for `model` when the user gives none."""
    d = model_family_defaults(model)
    return dict(width=d.width, height=d.height, frames=d.frames, steps=d.steps, guidance=d.guidance,
                guidance_2=d.guidance_2, fps=d.fps, negative_prompt="", shift=None)
