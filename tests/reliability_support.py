"""Helpers for the reliability tests: real `lowvram` processes, waiting on their output, small disks, plans."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--width", "64", "--height", "64", "--frames", "5"]


# Run in a child before lowvram: at its first safetensors write whose name contains $SAVE_GATE_MATCH, the child
# waits until the file $SAVE_GATE exists (a slow disk, held as long as the test needs, not a guessed sleep): after
# the write ("SAVED <name>" on stderr), or before it with SAVE_GATE_BEFORE=1 ("SAVING <name>").
GATED_SAVES = """
import os, sys, time, safetensors.torch as st
_save = st.save_file
def _hold(word, filename):
    sys.stderr.write(f"{word} {filename}\\n"); sys.stderr.flush()
    while not os.path.exists(os.environ["SAVE_GATE"]):
        time.sleep(0.05)
def gated_save(tensors, filename, *args, **kwargs):
    gated = os.environ.get("SAVE_GATE_MATCH", "") in str(filename)
    if gated and os.environ.get("SAVE_GATE_BEFORE"):
        _hold("SAVING", filename)
    out = _save(tensors, filename, *args, **kwargs)
    if gated and not os.environ.get("SAVE_GATE_BEFORE"):
        _hold("SAVED", filename)
    return out
st.save_file = gated_save
"""


def env(**changes: str) -> dict:
    out = dict(os.environ)
    out["PYTHONPATH"] = str(REPO) + os.pathsep + out.get("PYTHONPATH", "")
    out.pop("LOWVRAM_INJECT_OOM", None)
    out.update(changes)
    return out


def lowvram(args: list[str], stderr_path: Path, cwd: Path, prelude: str = "", **env_changes: str) -> subprocess.Popen:
    """A real `lowvram ARGS` process; `prelude` is Python run first inside it (to inject a fault or a delay)."""
    code = f"{prelude}\nimport sys\nfrom lowvram.cli import main\nsys.exit(main(sys.argv[1:]))"
    err = open(stderr_path, "w")
    try:
        return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=err, cwd=cwd, env=env(**env_changes), text=True)
    finally:
        err.close()  # the child has its own copy


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120, log: Optional[Path] = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            detail = log.read_text() if log is not None and log.exists() else ""
            raise AssertionError(f"gave up waiting (exit {proc.poll()}):\n{detail}")
        time.sleep(0.05)


def finish(proc: subprocess.Popen, timeout: float = 300) -> int:
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def scratch_entries(folder: Path) -> list[Path]:
    """lowvram's scratch files and claims (hidden), which a finished run never leaves behind."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(".lowvram-"))


def write_plan(path: Path, precision: str = "", placement: str = "resident") -> Path:
    """A CPU plan file for --force-plan: every denoiser at `precision` (fp32 by default) and `placement`."""
    from plans import TP, plan_with

    path.write_text(json.dumps(plan_with("cpu", precision=precision, transformer=TP(placement)).to_dict()))
    return path


@contextlib.contextmanager
def tmpfs(folder: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A small real file system (tmpfs) at `folder`: a disk that fills up, or one that cannot be written."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0777" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        import pytest

        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system under `folder` until at most `leave` bytes are free; returns the filler file."""
    import shutil

    filler = folder / "filler.bin"
    block = b"\0" * (1 << 16)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while (free := shutil.disk_usage(folder).free) > leave:
            os.write(fd, block[: min(len(block), free - leave)])
    except OSError:  # ENOSPC: full
        pass
    finally:
        os.close(fd)
    return filler


def cancelled_resume_file(folder: Path) -> tuple[Path, dict, dict]:
    """A real resume file: a demo run (64x64, 5 frames, 3 steps) cancelled after its first step.
    Returns (its path, its header, its tensors)."""
    import threading

    import pytest
    from safetensors import safe_open

    from lowvram.errors import CancelledError
    from lowvram.job import Job
    from lowvram.sampling.resume import FORMAT
    from lowvram.sampling.runner import generate
    from lowvram.telemetry import StepFinished
    from plans import plan_with

    job = Job(prompt="a cat", width=64, height=64, frames=5, steps=3, seed=1, out=str(folder / "g.mp4"))
    cancel = threading.Event()
    with pytest.raises(CancelledError):
        generate(job, plan_with("cpu"), on_event=lambda e: isinstance(e, StepFinished) and cancel.set(), cancel=cancel)
    path = folder / "g.latents.safetensors"
    with safe_open(str(path), "pt") as fh:
        return path, json.loads(fh.metadata()[FORMAT]), {k: fh.get_tensor(k) for k in fh.keys()}
