"""Model references: short names, hub ids, local folders, and the built-in demo model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lowvram.errors import UserError

DEMO_NAMES = ("tiny-random", "tiny-random-i2v")

SHORT_NAMES: dict[str, str] = {
    "wan2.1-t2v-1.3b": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    "wan2.1-t2v-14b": "Wan-AI/Wan2.1-T2V-14B-Diffusers",
    "wan2.1-i2v-14b-480p": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
    "wan2.1-i2v-14b-720p": "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
}


@dataclass(frozen=True)
class ModelRef:
    """What the user asked for, resolved. `kind` is 'demo', 'local' or 'hub'."""

    name: str  # as the user wrote it
    kind: str
    location: str  # folder path (demo/local) or hub id
    # Single-file transformer(s) replacing the pipeline's (a high,low pair for Wan2.2 A14B); the rest of the
    # pipeline comes from `location`, the base (named `base`). See lowvram.models.single_file.
    files: tuple[str, ...] = ()
    base: Optional[str] = None

    @property
    def is_demo(self) -> bool:
        return self.kind == "demo"


def resolve_model(name: str, base: Optional[str] = None) -> ModelRef:
    """Map --model (and --base) to a ModelRef without loading anything. Raises UserError when it cannot be found.

    A weight file (or a high,low pair of them) is read by its header only; see lowvram.models.single_file."""
    from lowvram.models.single_file import model_files, resolve_files

    files = model_files(name)
    if files is not None:
        return resolve_files(name, files, base)
    if base:
        raise UserError(f"--base {base}: only for a single-file --model (a .safetensors or .gguf transformer); --model {name} is a whole pipeline.")
    if name in DEMO_NAMES:
        from lowvram.models.demo import demo_path

        return ModelRef(name=name, kind="demo", location=str(demo_path(name)))
    lowered = name.lower()
    if lowered in SHORT_NAMES:
        return ModelRef(name=name, kind="hub", location=SHORT_NAMES[lowered])
    path = Path(os.path.expanduser(name))
    if path.exists():
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
