"""Write results without losing or clobbering anything: unique names, temp file then rename."""

from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Union

DEFAULT_OUT_DIR = "outputs"


def slugify(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", text.lower()).strip("-")
    return (slug[:limit].rstrip("-")) or "video"


def unique_path(path: Path) -> Path:
    """`path` if free, else path-1, path-2, ... (checked against the video and its sidecar)."""
    candidate, n = path, 0
    while candidate.exists() or sidecar_path(candidate).exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def sidecar_path(video: Path) -> Path:
    return video.with_suffix(".json")


def choose_output(out: Optional[str], prompt: str, seed: int) -> tuple[Path, Optional[str]]:
    """Pick the output path; returns (path, note) where note says why it differs from what was asked."""
    if out is None:
        folder = Path(DEFAULT_OUT_DIR)
        folder.mkdir(parents=True, exist_ok=True)
        wanted = folder / f"{slugify(prompt)}-seed{seed}.mp4"
    else:
        wanted = Path(out).expanduser()
    chosen = unique_path(wanted)
    note = None
    if chosen != wanted:  # the default name too: the same prompt and seed again
        note = f"{wanted} already exists; writing {chosen} instead (lowvram never overwrites a file)"
    return chosen, note


def write_video_atomic(frames, path: Path, fps: int) -> None:
    """Encode frames (N,H,W,3 floats in [0,1] or uint8) to mp4 under a temp name, then rename."""
    import imageio.v2 as imageio
    import numpy as np

    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    with replacing(path, path.with_name(f".{path.stem}.partial.mp4")) as tmp:
        with imageio.get_writer(str(tmp), format="FFMPEG", mode="I", fps=fps, codec="libx264", macro_block_size=16) as writer:
            for frame in arr:
                writer.append_data(frame)


def write_json_atomic(data: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with replacing(path, tmp):
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, default=str)
            fh.write("\n")


@contextmanager
def replacing(path: Union[str, Path], tmp: Union[str, Path]) -> Iterator[Union[str, Path]]:
    """Write `tmp` inside the block; it then replaces `path` in one rename. On failure it is removed, so
    no reader ever sees a half-written file and no partial file is left behind."""
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
