"""Model references: short names, hub ids, local folders, and the built-in demo model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lowvram.errors import UserError

DEMO_NAMES = ("tiny-random", "tiny-random-i2v", "tiny-random-a14b", "tiny-random-a14b-i2v", "tiny-random-ti2v")

SHORT_NAMES: dict[str, str] = {
    "wan2.1-t2v-1.3b": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    "wan2.1-t2v-14b": "Wan-AI/Wan2.1-T2V-14B-Diffusers",
    "wan2.1-i2v-14b-480p": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
    "wan2.1-i2v-14b-720p": "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
    "wan2.2-t2v-a14b": "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
    "wan2.2-i2v-a14b": "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
    "wan2.2-ti2v-5b": "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
}


@dataclass(frozen=True)
class ModelRef:
    """What the user asked for, resolved. `kind` is 'demo', 'local' or 'hub'."""

    name: str  # as the user wrote it
    kind: str
    location: str  # folder path (demo/local) or hub id

    @property
    def is_demo(self) -> bool:
        return self.kind == "demo"


def resolve_model(name: str) -> ModelRef:
    """Map --model to a ModelRef without loading anything. Raises UserError when it cannot be found."""
    if name in DEMO_NAMES:
        from lowvram.models.demo import demo_path

        return ModelRef(name=name, kind="demo", location=str(demo_path(name)))
    lowered = name.lower()
    if lowered in SHORT_NAMES:
        return ModelRef(name=name, kind="hub", location=SHORT_NAMES[lowered])
    path = Path(os.path.expanduser(name))
    if path.exists():
        if not path.is_dir():
            raise UserError(f"--model {name}: is a file; give the folder of a diffusers checkpoint (with model_index.json).")
        if not (path / "model_index.json").is_file():
            raise UserError(
                f"--model {name}: no model_index.json in that folder; it is not a diffusers pipeline folder. "
                "Give the folder that holds model_index.json, or a hub id such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers."
            )
        return ModelRef(name=name, kind="local", location=str(path.resolve()))
    looks_like_path = name.startswith((".", "/", "~")) or os.sep in name and name.count("/") != 1
    if looks_like_path or "/" not in name:
        known = ", ".join(list(DEMO_NAMES) + list(SHORT_NAMES))
        raise UserError(
            f"--model {name}: no such folder and not a known model name. "
            f"Use a local diffusers folder, a hub id (owner/name), or one of: {known}."
        )
    return ModelRef(name=name, kind="hub", location=name)
