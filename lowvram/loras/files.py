"""Where LoRA files are, and their identity (sha256).

A profile names a LoRA by file name and sha256; on another machine lowvram looks for that name in the
LoRA folders, in order:
- LOWVRAM_LORA_DIRS (folders separated by ':', ';' on Windows);
- a `loras/` folder under each LOWVRAM_MODEL_DIRS folder (a ComfyUI `models/` tree keeps them there);
- lowvram's cache folder `loras/` (LOWVRAM_CACHE_DIR);
- the folder of the profile itself.
Sub-folders are searched too (ComfyUI users sort LoRAs into folders). A file of that name whose sha256
differs is not used: the error names both hashes.

Hashing a 600 MB LoRA takes a second or two; hashes are kept in the cache folder keyed by the file's path,
size and modification time, so a file is hashed once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from lowvram.errors import UserError
from lowvram.paths import cache_dir

DIRS_ENV = "LOWVRAM_LORA_DIRS"
MODEL_DIRS_ENV = "LOWVRAM_MODEL_DIRS"  # lowvram.models.catalog's; their loras/ sub-folders are searched
SCAN_DEPTH = 4
HASH_CACHE_FILE = "lora_hashes.json"
_memo: dict[tuple[str, int, int], str] = {}


def _named(env: str) -> list[Path]:
    return [Path(os.path.expanduser(p.strip())) for p in os.environ.get(env, "").split(os.pathsep) if p.strip()]


def lora_dirs(extra: Iterable[Path] = ()) -> tuple[Path, ...]:
    """The folders searched for a LoRA named by a profile, in order, those that exist."""
    named = _named(DIRS_ENV)
    for p in named:
        if not p.is_dir():
            raise UserError(f"LoRA folder {p}: no such folder. Fix {DIRS_ENV} (folders separated by '{os.pathsep}').")
    out = named + [p / "loras" for p in _named(MODEL_DIRS_ENV)] + [cache_dir() / "loras"] + list(extra)
    return tuple(dict.fromkeys(p.resolve() for p in out if p.is_dir()))


def _walk(root: Path, depth: int = SCAN_DEPTH):
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return
    for e in entries:
        if e.is_file():
            yield Path(e.path)
        elif e.is_dir(follow_symlinks=True) and depth > 0 and not e.name.startswith("."):
            yield from _walk(Path(e.path), depth - 1)


def sha256_of(path: Path) -> str:
    """The file's sha256 (hex), from the hash cache when the file has not changed."""
    path = Path(path).expanduser().resolve()
    try:
        st = path.stat()
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc}).") from exc
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _memo:
        return _memo[key]
    stored = _read_cache()
    entry = stored.get(str(path))
    if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        digest = str(entry.get("sha256", ""))
        if len(digest) == 64:
            _memo[key] = digest
            return digest
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(8 * 1024 * 1024), b""):
                h.update(chunk)
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc}).") from exc
    digest = h.hexdigest()
    _memo[key] = digest
    stored[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    _write_cache(stored)
    return digest


def _read_cache() -> dict:
    try:
        data = json.loads((cache_dir() / HASH_CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(data: dict) -> None:
    from lowvram.io.output import write_json_atomic

    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        write_json_atomic(data, cache_dir() / HASH_CACHE_FILE)
    except OSError:  # a read-only cache folder: hash again next time
        pass


def find_lora(name: str, sha256: str, extra_dirs: Iterable[Path] = ()) -> Path:
    """The file called `name` whose sha256 is `sha256`, in the LoRA folders. UserError naming the hash when
    none is there, or when files of that name have another hash."""
    dirs = lora_dirs(extra_dirs)
    others: list[tuple[Path, str]] = []
    for root in dirs:
        for path in _walk(root):
            if path.name != name:
                continue
            digest = sha256_of(path)
            if digest == sha256:
                return path
            others.append((path, digest))
    searched = ", ".join(str(d) for d in dirs) or "(no LoRA folder exists)"
    if others:
        found = "; ".join(f"{p} has sha256 {d}" for p, d in others)
        raise UserError(
            f"LoRA {name} (sha256 {sha256}): a file of that name is here but it is a different file ({found}). "
            f"Put the file the profile was saved with in a LoRA folder, or give --lora with the file you want."
        )
    raise UserError(
        f"LoRA {name} (sha256 {sha256}) not found. Searched: {searched}. Copy the file into one of them, or name its "
        f"folder in {DIRS_ENV}, or give --lora FILE instead of the profile's LoRAs."
    )


def lora_file(path: str) -> Path:
    """A --lora path as given: the file itself, else a file of that name in the LoRA folders."""
    p = Path(os.path.expanduser(path))
    if p.is_file():
        return p.resolve()
    if p.exists():
        raise UserError(f"--lora {path}: not a file; give a .safetensors LoRA file.")
    if p.name == path:  # a bare name: look in the LoRA folders
        for root in lora_dirs():
            for found in _walk(root):
                if found.name == path:
                    return found.resolve()
    searched = ", ".join(str(d) for d in lora_dirs()) or "none exist"
    raise UserError(f"--lora {path}: no such file (a bare file name is looked up in the LoRA folders: {searched}; set {DIRS_ENV}).")


def describe_dirs() -> str:
    dirs = lora_dirs()
    return ", ".join(str(d) for d in dirs) if dirs else f"none yet (set {DIRS_ENV}, or use {cache_dir() / 'loras'})"
