"""TeaCache rescaling coefficients for the four Wan2.1 models, and which one a checkpoint gets.

The polynomials map the relative L1 change of the timestep embedding to an estimate of the change of
the model output. They were fitted by TeaCache4Wan2.1 per model, once for each signal: `e` (the time
embedding, used without retention steps) and `e0` (the 6*dim time projection, with retention steps).
Highest power first, as numpy.poly1d takes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from lowvram.errors import UserError


@dataclass(frozen=True)
class ModelCoefficients:
    key: str
    label: str
    without_retention: tuple[float, ...]
    with_retention: tuple[float, ...]

    def for_mode(self, retention: bool) -> tuple[float, ...]:
        return self.with_retention if retention else self.without_retention


COEFFICIENTS: dict[str, ModelCoefficients] = {
    c.key: c
    for c in (
        ModelCoefficients(
            "t2v-1.3b",
            "T2V-1.3B",
            (2.39676752e03, -1.31110545e03, 2.01331979e02, -8.29855975e00, 1.37887774e-01),
            (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02),
        ),
        ModelCoefficients(
            "t2v-14b",
            "T2V-14B",
            (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404),
            (-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01),
        ),
        ModelCoefficients(
            "i2v-14b-480p",
            "I2V-14B-480P",
            (-3.02331670e02, 2.23948934e02, -5.25463970e01, 5.87348440e00, -2.01973289e-01),
            (2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01),
        ),
        ModelCoefficients(
            "i2v-14b-720p",
            "I2V-14B-720P",
            (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683),
            (8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02),
        ),
    )
}

# The released models TeaCache4Wan2.1 fitted coefficients for (identity key -> coefficient set).
FOR_MODEL = {
    "wan2.1-t2v-1.3b": "t2v-1.3b",
    "wan2.1-t2v-14b": "t2v-14b",
    "wan2.1-i2v-14b-480p": "i2v-14b-480p",
    "wan2.1-i2v-14b-720p": "i2v-14b-720p",
}


@dataclass(frozen=True)
class CoefficientChoice:
    """The coefficients a run uses, why (`reason`), and a warning for the user when they were not fitted for
    this model (`note`)."""

    coefficients: ModelCoefficients
    reason: str = ""
    note: str = ""

    @property
    def key(self) -> str:
        return self.coefficients.key


def choose_coefficients(identity, override: Optional[str] = None) -> CoefficientChoice:
    """The coefficients for a model identity (lowvram.caching.identity), or a UserError naming what exists.

    Released Wan2.1 models get their own; the demo model (random weights) gets the nearest released
    model's, with a note; anything else has none (TeaCache has no Wan2.2 coefficients) unless forced.
    """
    if override:
        key = override.lower()
        if key not in COEFFICIENTS:
            raise UserError(f"--teacache-coefficients {override}: unknown; use one of {', '.join(COEFFICIENTS)}.")
        note = "" if FOR_MODEL.get(identity.key) == key else (
            f"{COEFFICIENTS[key].label}'s coefficients forced with --teacache-coefficients; they were not fitted for {identity.label}")
        return CoefficientChoice(COEFFICIENTS[key], f"{COEFFICIENTS[key].label}'s coefficients: forced with --teacache-coefficients", note)
    if identity.expand_timesteps:
        raise UserError(
            f"TeaCache cannot run {identity.label}: its signal is one timestep embedding per call, and this model gives "
            "every token its own timestep (expand_timesteps). Use --cache magcache."
        )
    key = FOR_MODEL.get(identity.key)
    if key is not None:
        return CoefficientChoice(COEFFICIENTS[key], f"{COEFFICIENTS[key].label}'s coefficients: {identity.reason}")
    if identity.is_demo:
        key = "i2v-14b-480p" if identity.image_to_video else "t2v-1.3b"
        label = COEFFICIENTS[key].label
        return CoefficientChoice(
            COEFFICIENTS[key],
            f"{label}'s coefficients: the demo model has random weights and no coefficients of its own",
            "random weights: the schedule shows how TeaCache decides, not what it would skip on a real model",
        )
    known = ", ".join(c.label for c in COEFFICIENTS.values())
    raise UserError(
        f"TeaCache has no coefficients for {identity.label} ({identity.reason}). TeaCache4Wan2.1 fitted coefficients "
        f"for the Wan2.1 models only: {known}. Use --cache magcache (published magnitude ratios for the Wan2.1 and "
        "Wan2.2 models; other models can be calibrated with --cache magcache --cache-calibrate), or force a set with "
        "--teacache-coefficients t2v-14b (not fitted for this model: skips may cost quality)."
    )
