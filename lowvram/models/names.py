"""Model references: short names, hub ids, local folders, and the built-in demo model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from lowvram.errors import UserError
from lowvram.models.ref import ModelRef
from lowvram.models.single_file import files_ref, infer_base, inspect_files, model_files
from planner.known_configs import KNOWN

DEMO_NAMES = ("tiny-random", "tiny-random-i2v", "tiny-random-a14b", "tiny-random-a14b-i2v", "tiny-random-ti2v")

SHORT_NAMES: dict[str, str] = {name: known.hub_id for name, known in KNOWN.items()}


def resolve_model(name: str, base: Optional[str] = None) -> ModelRef:
    """Map --model (and --base) to a ModelRef without loading anything. Raises UserError when it cannot be found.

    A weight file (or a high,low pair of them) is read by its header only; see lowvram.models.single_file."""
    files = model_files(name)
    if files is not None:
        inspected = inspect_files(name, files)
        base_ref = resolve_model(base or infer_base(inspected))
        if base_ref.files:
            raise UserError(f"--base {base}: give a diffusers folder, hub id or short name, not weight files.")
        short = {hub.lower(): s for s, hub in SHORT_NAMES.items()}.get(base_ref.location.lower()) if base_ref.kind == "hub" else None
        return files_ref(name, inspected, base_ref, short)
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
        guess = did_you_mean(name)
        hint = f"Did you mean {guess}? " if guess else ""
        raise UserError(
            f"--model {name}: no such folder and not a known model name. {hint}"
            f"Use a local diffusers folder, a hub id (owner/name), or one of: {known}."
        )
    return ModelRef(name=name, kind="hub", location=name)


def did_you_mean(name: str) -> str | None:
    """Known model names close to a mistyped one: those that contain it (wan2.1-i2v-14b -> the 480p and 720p
    ones), else the closest by spelling (wan2.1-t2v-13b -> wan2.1-t2v-1.3b). None when nothing is close."""
    import difflib

    known = list(DEMO_NAMES) + list(SHORT_NAMES)
    typed = name.lower().strip()
    matches = [k for k in known if len(typed) >= 5 and typed in k] or difflib.get_close_matches(typed, known, n=1, cutoff=0.75)
    return " or ".join(matches) if matches else None
