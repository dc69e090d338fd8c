"""Which model a checkpoint is, for choosing the published cache data: from its configs, never its path.

The released Wan models differ in their transformer configs (layers, heads, input channels, image
branch) and in the pipeline's structure (a second expert with a boundary ratio for Wan2.2 A14B), so
the configs identify them. Two released checkpoints share one config: Wan2.1 I2V-14B 480P and 720P;
between those the job's size decides (their coefficients and ratios were fitted at that resolution).
Before a hub model is downloaded only its name is known; the released names map to their identity.
Anything else is a custom model, identified by a digest of its configs (calibrated ratios are saved
under that key).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# (num_layers, num_attention_heads, in_channels, has an image branch, two experts) -> model key
_SHAPES = {
    (30, 12, 16, False, False): "wan2.1-t2v-1.3b",
    (40, 40, 16, False, False): "wan2.1-t2v-14b",
    (40, 40, 36, True, False): "wan2.1-i2v-14b",  # 480P or 720P: by the job's size
    (40, 40, 16, False, True): "wan2.2-t2v-a14b",
    (40, 40, 36, False, True): "wan2.2-i2v-a14b",
    (30, 24, 48, False, False): "wan2.2-ti2v-5b",
}
LABELS = {
    "wan2.1-t2v-1.3b": "Wan2.1 T2V-1.3B",
    "wan2.1-t2v-14b": "Wan2.1 T2V-14B",
    "wan2.1-i2v-14b-480p": "Wan2.1 I2V-14B-480P",
    "wan2.1-i2v-14b-720p": "Wan2.1 I2V-14B-720P",
    "wan2.2-t2v-a14b": "Wan2.2 T2V-A14B",
    "wan2.2-i2v-a14b": "Wan2.2 I2V-A14B",
    "wan2.2-ti2v-5b": "Wan2.2 TI2V-5B",
}
# Released names (short names and diffusers hub ids, lower case) -> model key, for models not downloaded yet.
KNOWN_NAMES = {
    "wan2.1-t2v-1.3b": "wan2.1-t2v-1.3b",
    "wan-ai/wan2.1-t2v-1.3b-diffusers": "wan2.1-t2v-1.3b",
    "wan2.1-t2v-14b": "wan2.1-t2v-14b",
    "wan-ai/wan2.1-t2v-14b-diffusers": "wan2.1-t2v-14b",
    "wan2.1-i2v-14b-480p": "wan2.1-i2v-14b",
    "wan-ai/wan2.1-i2v-14b-480p-diffusers": "wan2.1-i2v-14b",
    "wan2.1-i2v-14b-720p": "wan2.1-i2v-14b",
    "wan-ai/wan2.1-i2v-14b-720p-diffusers": "wan2.1-i2v-14b",
    "wan2.2-t2v-a14b": "wan2.2-t2v-a14b",
    "wan-ai/wan2.2-t2v-a14b-diffusers": "wan2.2-t2v-a14b",
    "wan2.2-i2v-a14b": "wan2.2-i2v-a14b",
    "wan-ai/wan2.2-i2v-a14b-diffusers": "wan2.2-i2v-a14b",
    "wan2.2-ti2v-5b": "wan2.2-ti2v-5b",
    "wan-ai/wan2.2-ti2v-5b-diffusers": "wan2.2-ti2v-5b",
}
TWO_EXPERTS = ("wan2.2-t2v-a14b", "wan2.2-i2v-a14b")
_AREA_480P, _AREA_720P = 832 * 480, 1280 * 720
# Config keys that are bookkeeping, not architecture: left out of a custom model's digest.
_NOT_ARCHITECTURE = ("_class_name", "_diffusers_version", "_name_or_path")


@dataclass(frozen=True)
class ModelFacts:
    """What identifies a model, known before loading it: its denoisers' configs and the pipeline's."""

    transformer: Optional[dict] = None  # transformer/config.json; None when only the name is known
    transformer_2: Optional[dict] = None  # the low-noise expert of a two-expert model
    boundary_ratio: Optional[float] = None
    expand_timesteps: bool = False
    name: str = ""  # the short name or hub id the user gave (not a folder: a path never identifies a model)
    is_demo: bool = False

    @classmethod
    def from_folder(cls, folder: Path, name: str = "", is_demo: bool = False) -> "ModelFacts":
        folder = Path(folder)
        index = read_json(folder / "model_index.json")
        t2 = index.get("transformer_2")
        has_t2 = isinstance(t2, list) and bool(t2[0]) and (folder / "transformer_2" / "config.json").is_file()
        return cls(
            transformer=read_json(folder / "transformer" / "config.json"),
            transformer_2=read_json(folder / "transformer_2" / "config.json") if has_t2 else None,
            boundary_ratio=index.get("boundary_ratio"),
            expand_timesteps=bool(index.get("expand_timesteps", False)),
            name=name,
            is_demo=is_demo,
        )

    @property
    def components(self) -> tuple[str, ...]:
        """The denoiser components, in the order a run uses them (the high-noise expert first)."""
        return ("transformer", "transformer_2") if self.transformer_2 is not None else ("transformer",)


@dataclass(frozen=True)
class ModelIdentity:
    key: str  # a released model ("wan2.1-t2v-14b", "wan2.1-i2v-14b-720p", ...) or "custom-<digest>"
    label: str
    released: bool
    reason: str  # how it was recognised, for the user
    components: tuple[str, ...] = ("transformer",)
    is_demo: bool = False
    image_to_video: bool = False
    expand_timesteps: bool = False

    @property
    def two_experts(self) -> bool:
        return len(self.components) == 2


def identify(facts: ModelFacts, width: int, height: int) -> Optional[ModelIdentity]:
    """The model's identity for a job of this size; None when neither configs nor a released name are known."""
    if facts.transformer is None:
        key = KNOWN_NAMES.get(facts.name.lower())
        if key is None:
            return None
        components = ("transformer", "transformer_2") if key in TWO_EXPERTS else ("transformer",)
        return _released(key, f"the released model {facts.name}", width, height, components, key.startswith(("wan2.1-i2v", "wan2.2-i2v")))
    t = facts.transformer
    shape = (
        t.get("num_layers"),
        t.get("num_attention_heads"),
        t.get("in_channels", 16),
        bool(t.get("image_dim")),
        facts.transformer_2 is not None,
    )
    i2v = shape[2] == 36
    key = None if facts.is_demo else _SHAPES.get(shape)
    experts = "two experts (transformer, transformer_2)" if shape[4] else "one transformer"
    described = f"{experts} of {shape[0]} layers, {shape[1]} heads, {shape[2]} input channels" + (", an image branch" if shape[3] else "")
    if key is not None and shape[4] and _architecture(t) != _architecture(facts.transformer_2):
        key = None  # two experts of different shapes: not a released A14B
    if key is not None:
        return _released(key, f"its configs ({described})", width, height, facts.components, i2v, facts.expand_timesteps)
    digest = config_digest(facts)
    return ModelIdentity(
        key=f"custom-{digest}",
        label=facts.name or ("the demo model" if facts.is_demo else "this model"),
        released=False,
        reason=f"{'the demo model' if facts.is_demo else 'a custom model'}: {described}, no released Wan model",
        components=facts.components,
        is_demo=facts.is_demo,
        image_to_video=i2v,
        expand_timesteps=facts.expand_timesteps,
    )


def _released(key: str, how: str, width: int, height: int, components, i2v: bool, expand: bool = False) -> ModelIdentity:
    reason = f"{LABELS.get(key, key)}, recognised from {how}"
    if key == "wan2.1-i2v-14b":
        # 480P and 720P checkpoints are one architecture; their data were fitted at their resolution.
        res = resolution_of(width, height)
        key = f"wan2.1-i2v-14b-{res}"
        reason = (
            f"{LABELS[key]}: Wan2.1 I2V-14B recognised from {how}; 480P and 720P checkpoints look alike, "
            f"and a {width}x{height} job is nearer {res}'s pixel count"
        )
    return ModelIdentity(key, LABELS[key], True, reason, tuple(components), False, i2v, expand or key == "wan2.2-ti2v-5b")


def resolution_of(width: int, height: int) -> str:
    """'720p' when the job's pixel count is nearer 1280x720's than 832x480's (on a log scale), else '480p'."""
    return "720p" if width * height >= math.sqrt(_AREA_480P * _AREA_720P) else "480p"


def config_digest(facts: ModelFacts) -> str:
    """A short digest of the architecture (both experts and the boundary): the key of a custom model."""
    data = {
        "transformer": _architecture(facts.transformer or {}),
        "transformer_2": _architecture(facts.transformer_2) if facts.transformer_2 is not None else None,
        "boundary_ratio": facts.boundary_ratio,
        "expand_timesteps": facts.expand_timesteps,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _architecture(config: Optional[dict]) -> dict:
    return {k: v for k, v in (config or {}).items() if k not in _NOT_ARCHITECTURE}


def read_json(path: Path) -> dict:
    from lowvram.errors import UserError

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read it as JSON ({exc}). Is this a diffusers Wan pipeline folder?") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a JSON object of settings. Is this a diffusers Wan pipeline folder?")
    return data
