"""What each model family's card recommends: default size, frames, fps, steps, guidance (per expert) and
the flow shift. Pure data; the family itself is read from the checkpoint's configs (planner.spec.detect_family).

Sources: the Wan2.1 / Wan2.2 repositories' configs (sample_steps, sample_guide_scale, sample_shift,
frame_num, sample_fps) and model cards; REFERENCE.md. Wan2.1's shift follows the resolution (3.0 at 480p,
5.0 at 720p: seed 002, the Wan2.1 card); Wan2.2's is one value per model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from planner.spec import ModelSpec


@dataclass(frozen=True)
class FamilyDefaults:
    width: int
    height: int
    frames: int
    steps: int
    guidance: float
    fps: int
    guidance_2: Optional[float] = None  # the low-noise expert's guidance (two-expert models)
    shift: Optional[float] = None  # one shift for every resolution; None: by resolution (Wan2.1)
    trained_sizes: tuple[tuple[int, int], ...] = ()  # (width, height) the card lists, for warnings
    max_frames: int = 81


WAN21_SIZES = ((832, 480), (480, 832), (1280, 720), (720, 1280))
FAMILY_DEFAULTS: dict[str, FamilyDefaults] = {
    "wan2.1-t2v-1.3b": FamilyDefaults(832, 480, 81, 50, 5.0, 16, trained_sizes=((832, 480), (480, 832))),
    "wan2.1-t2v-14b": FamilyDefaults(832, 480, 81, 50, 5.0, 16, trained_sizes=WAN21_SIZES),
    "wan2.1-i2v-14b": FamilyDefaults(832, 480, 81, 40, 5.0, 16, trained_sizes=WAN21_SIZES),
    "wan2.2-t2v-a14b": FamilyDefaults(832, 480, 81, 40, 4.0, 16, guidance_2=3.0, shift=12.0, trained_sizes=WAN21_SIZES),
    "wan2.2-i2v-a14b": FamilyDefaults(832, 480, 81, 40, 3.5, 16, guidance_2=3.5, shift=5.0, trained_sizes=WAN21_SIZES),
    "wan2.2-ti2v-5b": FamilyDefaults(1280, 704, 121, 50, 5.0, 24, shift=5.0,
                                     trained_sizes=((1280, 704), (704, 1280)), max_frames=121),
    "wan": FamilyDefaults(832, 480, 81, 50, 5.0, 16),
}
# The demo models run in seconds on a CPU: tiny sizes (multiples of their spatial multiple), few steps.
DEMO_SIZES = {16: (256, 144), 32: (256, 128)}
DEMO_FRAMES, DEMO_STEPS = 17, 8


def family_defaults(spec: ModelSpec) -> FamilyDefaults:
    base = FAMILY_DEFAULTS.get(spec.family, FAMILY_DEFAULTS["wan"])
    if not spec.is_demo:
        return base
    w, h = DEMO_SIZES.get(spec.spatial_multiple, (256, 144))
    from dataclasses import replace

    return replace(base, width=w, height=h, frames=DEMO_FRAMES, steps=DEMO_STEPS, trained_sizes=(), max_frames=10**6)


def default_shift(spec: ModelSpec, width: int, height: int) -> tuple[float, str]:
    """(flow shift, why) for a job of this size when the user gives no --shift."""
    if spec.is_demo or spec.family == "wan":
        return spec.flow_shift, "the checkpoint's scheduler setting"
    fam = FAMILY_DEFAULTS[spec.family]
    if fam.shift is not None:
        return fam.shift, f"the {spec.family} model card"
    if width * height > 832 * 480 * 1.25:
        return 5.0, f"{spec.family} at 720p (model card: 5.0 at 720p, 3.0 at 480p)"
    return 3.0, f"{spec.family} at 480p (model card: 3.0 at 480p, 5.0 at 720p)"
