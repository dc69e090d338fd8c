"""The shapes the benchmark builds and the budget matrix it runs. Pure data, no torch.

Configs are diffusers' `WanTransformer3DModel`, `AutoencoderKLWan` and transformers' `UMT5EncoderModel`
arguments for the real Wan2.1 checkpoints (REFERENCE.md), so random weights have the real sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.known_configs import UMT5_XXL as UMT5_XXL_CONFIG
from planner.known_configs import WAN_1_3B, WAN_14B, WAN_COMMON, WAN22_TI2V_5B  # noqa: F401  (WAN_COMMON: tests' tiny shapes)

# The planner's known configs are the one source of the real shapes.
TRANSFORMERS = {
    "1.3b": WAN_1_3B,
    "14b": WAN_14B,
    "5b": WAN22_TI2V_5B,
}

# lowvram's model names, so the planner sees the same job a user would give.
MODEL_NAMES = {"1.3b": "wan2.1-t2v-1.3b", "14b": "wan2.1-t2v-14b", "5b": "wan2.2-ti2v-5b"}

# google/umt5-xxl encoder, as Wan2.1 ships it (~5.7 B params); no dropout at inference.
UMT5_XXL = dict(UMT5_XXL_CONFIG, dropout_rate=0.0, tie_word_embeddings=False)
TEXT_TOKENS = 512
TEXT_DIM = 4096

# (height, width, frames)
RESOLUTIONS = {
    "480p": (480, 832, 81),
    "720p": (720, 1280, 81),
}

# VAE: 8x spatial and 4x temporal compression, z_dim 16; patch 2x2 in the transformer.
VAE_SPATIAL = 8
VAE_TEMPORAL = 4
Z_DIM = 16


def latent_shape(height: int, width: int, frames: int) -> tuple[int, int, int, int, int]:
    return (1, Z_DIM, (frames - 1) // VAE_TEMPORAL + 1, height // VAE_SPATIAL, width // VAE_SPATIAL)


def tokens(height: int, width: int, frames: int) -> int:
    _, _, f, h, w = latent_shape(height, width, frames)
    return f * (h // 2) * (w // 2)


@dataclass(frozen=True)
class BenchCase:
    """One cell of the budget matrix: a model at a resolution under a VRAM budget (GiB)."""

    model: str
    resolution: str
    budget_gib: float

    @property
    def label(self) -> str:
        return f"{self.model} {self.resolution} @ {self.budget_gib:g} GiB"


# issue 8's matrix: 1.3B at 4, 8, 24 GB; 14B at 8, 12, 16, 24 GB; 480p, plus 720p for 14B at 24 GB.
MATRIX: tuple[BenchCase, ...] = (
    BenchCase("1.3b", "480p", 4),
    BenchCase("1.3b", "480p", 8),
    BenchCase("1.3b", "480p", 24),
    BenchCase("14b", "480p", 8),
    BenchCase("14b", "480p", 12),
    BenchCase("14b", "480p", 16),
    BenchCase("14b", "480p", 24),
    BenchCase("14b", "720p", 24),
)

# issue 8's targets: ratio of the step to the all-on-GPU step in the same run.
TARGETS: dict[tuple[str, str, float], float] = {
    ("14b", "480p", 24): 1.03,
    ("14b", "480p", 12): 1.06,
    ("1.3b", "480p", 8): 1.01,
    ("1.3b", "480p", 4): 1.04,
}
E2E_TARGET = 1.10
PREDICTION_TOLERANCE = 0.10


def cases_for(model: str, budgets: tuple[float, ...] | None = None, resolutions: tuple[str, ...] | None = None) -> list[BenchCase]:
    """The matrix cells for one model, optionally narrowed to some budgets / resolutions."""
    if model not in TRANSFORMERS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(TRANSFORMERS)}")
    out = [c for c in MATRIX if c.model == model]
    if budgets:
        out = [c for c in out if c.budget_gib in budgets]
    if resolutions:
        out = [c for c in out if c.resolution in resolutions]
    return out


# (height, width, frames) points for the activation-peak curve, smallest first (the same for both models).
ACTIVATION_SHAPES = ((240, 416, 81), (480, 832, 41), (480, 832, 81), (720, 1280, 81))
