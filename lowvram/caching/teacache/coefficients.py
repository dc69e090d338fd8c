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

# (num_layers, num_attention_heads, in_channels) of the released checkpoints.
_SHAPES = {(30, 12, 16): "t2v-1.3b", (40, 40, 16): "t2v-14b", (40, 40, 36): "i2v-14b-480p"}


@dataclass(frozen=True)
class CoefficientChoice:
    """The coefficients a run uses, and why (`note` is shown to the user when the choice was a guess)."""

    coefficients: ModelCoefficients
    note: str = ""

    @property
    def key(self) -> str:
        return self.coefficients.key


def choose_coefficients(
    transformer_config: dict, model_name: Optional[str] = None, override: Optional[str] = None
) -> CoefficientChoice:
    """Pick the coefficients for a checkpoint from its transformer config (layers, heads, in_channels).

    480P and 720P I2V checkpoints have the same transformer config, so the resolution comes from the
    model name or hub id ("...720P..."); without one, 480P is assumed and the note says so.
    """
    if override:
        key = override.lower()
        if key not in COEFFICIENTS:
            raise UserError(
                f"--teacache-coefficients {override}: unknown; use one of {', '.join(COEFFICIENTS)}."
            )
        return CoefficientChoice(COEFFICIENTS[key])
    layers = transformer_config.get("num_layers")
    heads = transformer_config.get("num_attention_heads")
    in_channels = transformer_config.get("in_channels", 16)
    i2v = in_channels == 36 or bool(transformer_config.get("image_dim"))
    key = _SHAPES.get((layers, heads, in_channels))
    note = ""
    if key is None:
        # Not a released shape (the demo model, a pruned fine-tune): the nearest by task and size.
        big = (heads or 0) * transformer_config.get("attention_head_dim", 128) >= 5120
        key = "i2v-14b-480p" if i2v else ("t2v-14b" if big else "t2v-1.3b")
        note = (
            f"no TeaCache coefficients were fitted for this transformer ({layers} layers, {heads} heads); "
            f"using {COEFFICIENTS[key].label}'s (choose others with --teacache-coefficients)"
        )
    if key == "i2v-14b-480p":
        name = (model_name or "").lower()
        if "720p" in name:
            key = "i2v-14b-720p"
        elif "480p" not in name:
            note = note or (
                "480P and 720P I2V checkpoints look alike and the model name does not say which this is; "
                "using I2V-14B-480P's coefficients (pass --teacache-coefficients i2v-14b-720p for the 720P model)"
            )
    return CoefficientChoice(COEFFICIENTS[key], note)
