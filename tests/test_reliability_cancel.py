"""Cancel and Ctrl-C: stop at a step boundary, write no video (not even a partial one), keep the
latents for --resume, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from lowvram.errors import CancelledError
from lowvram.sampling.resume import load_resume_file
from lowvram.sampling.runner import generate
from lowvram.telemetry import RunCancelled, StageStarted, StepFinished

REPO = Path(__file__).resolve().parents[1]


def videos(folder: Path) -> list[Path]:
    """Every mp4 in the folder, hidden scratch files (lowvram.io.scratch) included."""
    return sorted(p for p in folder.iterdir() if p.name.endswith(".mp4") or p.name.startswith(".lowvram-"))


def test_cancel_after_a_step_keeps_latents_and_resume_matches(small_job, cpu_plan, tmp_path):
    job = small_job(steps=4)
    cancel = threading.Event()
    events = []

    def sink(event):
        events.append(event)
        if isinstance(event, StepFinished) and event.step == 1:
            cancel.set()

    with pytest.raises(CancelledError):
        generate(job, cpu_plan, on_event=sink, cancel=cancel)
    (cancelled,) = [e for e in events if isinstance(e, RunCancelled)]
    assert cancelled.stage == "denoise" and cancelled.step == 2
    assert [e.step for e in events if isinstance(e, StepFinished)] == [0, 1]  # stopped at the boundary
    assert videos(tmp_path) == []
    state = load_resume_file(cancelled.latents_path)
    assert state.reason == "cancelled" and state.checkpoint.step == 2

    resumed = generate(job.with_(out=str(tmp_path / "resumed.mp4")), state.plan, resume=state)
    clean = generate(job.with_(out=str(tmp_path / "clean.mp4")), cpu_plan)
    assert torch.equal(resumed.latents, clean.latents)
    steps = [e.step for e in resumed.events if isinstance(e, StepFinished)]
    assert steps == [2, 3]  # only the remaining steps ran


def test_cancel_before_denoising_keeps_nothing(small_job, cpu_plan, tmp_path):
    cancel = threading.Event()
    events = []

    def sink(event):
        events.append(event)
        if isinstance(event, StageStarted) and event.stage == "encode":
            cancel.set()

    with pytest.raises(CancelledError):
        generate(small_job(), cpu_plan, on_event=sink, cancel=cancel)
    (cancelled,) = [e for e in events if isinstance(e, RunCancelled)]
    assert cancelled.latents_path == "" and cancelled.step == -1
    assert list(tmp_path.iterdir()) == []


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting (exit {proc.poll()}): {proc.stderr.read() if proc.poll() is not None else ''}")
        time.sleep(0.05)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("LOWVRAM_INJECT_OOM", None)
    return env


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_ctrl_c_sigterm_or_sighup_in_the_cli_keeps_the_latents(demo_t2v_path, tmp_path, sig):
    """Ctrl-C, SIGTERM and SIGHUP all stop at the next step boundary: exit 130, latents kept, no video."""
    from lowvram.cli import main

    out = tmp_path / "v.mp4"
    args = ["generate", "a dog runs", "--width", "64", "--height", "64", "--frames", "5", "--steps", "400", "--out", str(out)]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "lowvram", *args], stderr=err, stdout=subprocess.PIPE, env=_env(), cwd=tmp_path, text=True)
        try:
            _wait_for(lambda: "step 3/400" in log.read_text(), 120, proc)
            proc.send_signal(sig)
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert code == 130, text
    assert "Traceback" not in text
    assert "stopping at the next step (the latents are kept for --resume)" in text
    assert "step 400/400" not in text
    kept = tmp_path / "v.latents.safetensors"
    assert f"latents kept in {kept}" in text
    assert videos(tmp_path) == []

    state = load_resume_file(str(kept))
    done = state.checkpoint.step
    assert 3 <= done < 400
    # --resume runs the saved job; a new prompt beside it is refused before anything loads
    assert main(["generate", "--resume", str(kept), "--out", str(tmp_path / "done.mp4"), "--quiet", "extra prompt"]) == 2


def test_resume_through_the_cli(small_job, cpu_plan, tmp_path, capsys):
    """A cancelled run's file finishes through `lowvram generate --resume` (same placeholder plan as the CLI)."""
    from lowvram.cli import main
    from lowvram.sampling.runner import placeholder_plan

    job = small_job(steps=3)
    cancel = threading.Event()
    with pytest.raises(CancelledError):
        generate(job, placeholder_plan(), on_event=lambda e: isinstance(e, StepFinished) and cancel.set(), cancel=cancel)
    kept = tmp_path / "out.latents.safetensors"
    assert kept.is_file() and videos(tmp_path) == []
    assert main(["generate", "--resume", str(kept), "--out", str(tmp_path / "done.mp4"), "--quiet"]) == 0
    assert (tmp_path / "done.mp4").is_file() and (tmp_path / "done.json").is_file()



def test_resume_with_planner_preferences_plans_again(small_job, tmp_path, capsys):
    """After an out-of-memory exit a user adds a cap or a preference to --resume: it plans again with them
    (before, they were ignored and the saved plan ran as it was)."""
    from lowvram.cli import main
    from lowvram.sampling.runner import placeholder_plan

    job = small_job(steps=3)
    cancel = threading.Event()
    with pytest.raises(CancelledError):
        generate(job, placeholder_plan(), on_event=lambda e: isinstance(e, StepFinished) and cancel.set(), cancel=cancel)
    kept = tmp_path / "out.latents.safetensors"
    saved = placeholder_plan().source
    assert main(["generate", "--resume", str(kept), "--out", str(tmp_path / "done.mp4"), "--prefer", "quality", "--ram-cap", "8"]) == 0
    sidecar = json.loads((tmp_path / "done.json").read_text())
    assert sidecar["plan"]["source"] == "planner" != saved


def test_a_cancelled_run_prints_the_resume_command_and_that_command_finishes_it(small_job, tmp_path):
    """The console names the command to finish a cancelled run (as the out-of-memory and write-failure messages
    and the TUI do), and running exactly that command writes the video. Before, it only said "latents kept in X"."""
    import io
    import shlex

    from lowvram.cli import main
    from lowvram.cli.console import ConsoleReporter
    from lowvram.sampling.runner import placeholder_plan

    folder = tmp_path / "a folder with spaces"
    folder.mkdir()
    job = small_job(steps=3).with_(out=str(folder / "v.mp4"))
    cancel, stream = threading.Event(), io.StringIO()
    reporter = ConsoleReporter(stream=stream, quiet=True)
    with pytest.raises(CancelledError):
        generate(job, placeholder_plan(), on_event=lambda e: reporter(e) or (isinstance(e, StepFinished) and cancel.set()), cancel=cancel)
    text = stream.getvalue()
    assert "finish with `lowvram generate --resume " in text, text
    command = shlex.split(text.split("finish with `", 1)[1].split("`", 1)[0])
    assert command[:3] == ["lowvram", "generate", "--resume"]
    assert main([*command[1:], "--quiet"]) == 0
    assert (folder / "v.mp4").is_file() and (folder / "v.json").is_file()

WRITER = """
import sys, numpy as np
from pathlib import Path
from lowvram.cli.interrupt import cancel_on_interrupt
from lowvram.io.output import reserve_output
frames = np.random.default_rng(0).integers(0, 256, (4000, 128, 128, 3), dtype=np.uint8)  # noise: slow to encode
reservation = reserve_output(sys.argv[1], "p", 0)
try:
    with cancel_on_interrupt():
        reservation.publish(reservation.stage_video(frames, 16), lambda video, side: {})
finally:
    reservation.release()
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_kill_during_write_leaves_no_video(tmp_path, sig):
    """A second Ctrl-C (or SIGTERM) while the mp4 is being encoded: no video and no scratch file remain."""
    out = tmp_path / "w.mp4"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stderr=subprocess.PIPE, env=_env(), text=True)
    try:
        _wait_for(lambda: any(p.name.startswith(".lowvram-") for p in tmp_path.iterdir()), 120, proc)
        time.sleep(0.3)
        proc.send_signal(sig)  # the first one only asks for a stop at the next safe point
        time.sleep(0.2)
        proc.send_signal(sig)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert videos(tmp_path) == [], proc.stderr.read()


def test_image_to_video_cancel_and_resume_matches(small_job, cpu_plan, tmp_path, image_file, demo_i2v_path):
    """I2V keeps more conditioning (image embeddings, first-frame latents): all of it must survive the file."""
    job = small_job(model="tiny-random-i2v", image=str(image_file), steps=3)
    cancel = threading.Event()
    events = []
    with pytest.raises(CancelledError):
        generate(job, cpu_plan, on_event=lambda e: events.append(e) or (isinstance(e, StepFinished) and cancel.set()), cancel=cancel)
    (cancelled,) = [e for e in events if isinstance(e, RunCancelled)]
    state = load_resume_file(cancelled.latents_path)
    assert state.cond["condition"] is not None and state.cond["image_embeds"] is not None
    resumed = generate(job.with_(out=str(tmp_path / "resumed.mp4")), cpu_plan, resume=state)
    clean = generate(job.with_(out=str(tmp_path / "clean.mp4")), cpu_plan)
    assert torch.equal(resumed.latents, clean.latents)


def test_cancel_during_decode_writes_no_video_and_keeps_latents(small_job, cpu_plan, tmp_path):
    job = small_job(steps=2)
    cancel = threading.Event()
    events = []

    def sink(event):
        events.append(event)
        if isinstance(event, StageStarted) and event.stage == "decode":
            cancel.set()  # the user presses cancel while the VAE decodes

    with pytest.raises(CancelledError):
        generate(job, cpu_plan, on_event=sink, cancel=cancel)
    assert videos(tmp_path) == []
    (cancelled,) = [e for e in events if isinstance(e, RunCancelled)]
    assert cancelled.stage == "decode"
    assert load_resume_file(cancelled.latents_path).checkpoint.step == 2  # all steps done: resume only decodes


def test_resuming_after_the_lora_file_changed_is_refused(small_job, tmp_path):
    """A LoRA run cancelled, then its LoRA file replaced: the resume finished silently with the other weights."""
    from lora_files import make_lora

    from lowvram.errors import UserError
    from lowvram.loras.spec import LoraSpec
    from lowvram.sampling.runner import placeholder_plan

    lora = make_lora(tmp_path / "l.safetensors")
    from lowvram.loras.files import sha256_of

    job = small_job(steps=3).with_(loras=(LoraSpec(path=str(lora), scale=0.8, sha256=sha256_of(lora)),))
    cancel = threading.Event()
    with pytest.raises(CancelledError):
        generate(job, placeholder_plan(), on_event=lambda e: isinstance(e, StepFinished) and cancel.set(), cancel=cancel)
    kept = tmp_path / "out.latents.safetensors"
    assert load_resume_file(str(kept)).job.loras  # the unchanged LoRA resumes
    make_lora(lora, seed=5)
    with pytest.raises(UserError, match="changed since the run stopped"):
        load_resume_file(str(kept))
