"""Job defaults per model: what `generate`, `plan`, profiles and the TUI use for options not given.

They come from the model card of the checkpoint's family (planner.families), and the family from the
checkpoint's configs (planner.spec): a folder of Wan2.2 TI2V-5B gets 1280x704, 121 frames at 24 fps
whatever it is called. The demo models get tiny sizes that run in seconds on a CPU.
"""

from __future__ import annotations

import secrets

from planner.families import FAMILY_DEFAULTS, FamilyDefaults, family_defaults

DEFAULT_MODEL = "tiny-random"
DEFAULT_GUIDANCE, DEFAULT_FPS = FAMILY_DEFAULTS["wan"].guidance, FAMILY_DEFAULTS["wan"].fps

# The Wan team's default negative prompt (`sample_neg_prompt` in wan/configs/shared_config.py of the
# Wan2.1 and Wan2.2 repositories; the models were tuned with it). In English: garish colours, overexposed,
# static, blurry details, subtitles, style, artwork, painting, still image, greyish overall, worst quality,
# low quality, JPEG artefacts, ugly, mutilated, extra fingers, badly drawn hands or face, deformed,
# disfigured, malformed limbs, fused fingers, motionless frames, cluttered background, three legs, crowded
# background, walking backwards.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
# A random seed is drawn from [0, 2**32): short enough to read back and type.
RANDOM_SEED_LIMIT = 2**32


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
    from lowvram.models.advice import trained_at_from_name

    d = model_family_defaults(model)
    width, height = d.width, d.height
    if trained_at_from_name(model) == ("720p",):  # Wan2.1 I2V 720P: its configs are the 480P one's, its name says
        width, height = 1280, 720
    return dict(width=width, height=height, frames=d.frames, steps=d.steps, guidance=d.guidance,
                guidance_2=d.guidance_2, fps=d.fps, negative_prompt=WAN_NEGATIVE_PROMPT, shift=None)


def random_seed() -> int:
    """A seed for a job that gives none; it is printed and recorded, so the video can be made again."""
    return secrets.randbelow(RANDOM_SEED_LIMIT)
