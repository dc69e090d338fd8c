"""Where profiles are found: the ones shipped in the repository's profiles/ folder and the user's own
(in the user config folder, where the TUI saves them). Each is listed with its name and description."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "profiles"


def user_profiles_dir() -> Path:
    """LOWVRAM_PROFILES_DIR, else <user config folder>/lowvram/profiles."""
    override = os.environ.get("LOWVRAM_PROFILES_DIR")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("lowvram", appauthor=False)) / "profiles"


@dataclass(frozen=True)
class ProfileEntry:
    path: str
    source: str  # "shipped" or "yours"
    name: str
    description: str = ""
    model: str = ""
    problem: str = ""  # why it cannot be loaded (shown, not hidden)


def list_profiles(folders: Optional[list[tuple[str, Path]]] = None) -> list[ProfileEntry]:
    """Every *.toml of the user's folder, then the shipped ones, each read for its name and description."""
    from lowvram.errors import UserError
    from lowvram.profiles.toml_io import load

    folders = folders if folders is not None else [("yours", user_profiles_dir()), ("shipped", SHIPPED_DIR)]
    entries = []
    for source, folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            try:
                profile = load(path)
            except UserError as exc:
                entries.append(ProfileEntry(str(path), source, path.stem, problem=str(exc).splitlines()[0]))
                continue
            entries.append(ProfileEntry(str(path), source, profile.name or path.stem, profile.description, profile.model))
    return entries
