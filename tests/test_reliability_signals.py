"""Signals sent to real processes: a closed terminal (SIGHUP) stops at the next step and keeps the latents; a
second signal while the latents are being written waits for the write. (SIGINT and SIGTERM on their own:
test_reliability_cancel.) Both tests fail on the code before issue 17: SIGHUP killed the run, and a second
Ctrl-C interrupted the latents write that the first one had promised."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time

from lowvram.sampling.resume import load_resume_file
from reliability_support import SMALL, env, finish, lowvram, scratch_entries, wait_for

RUN = ["generate", "a dog runs", *SMALL, "--steps", "400"]


def test_closing_the_terminal_stops_at_the_next_step_and_keeps_the_latents(demo_t2v_path, tmp_path):
    """The run's terminal is a pty it controls; closing the pty's master makes the kernel send SIGHUP."""
    out = tmp_path / "v.mp4"
    master, slave = pty.openpty()

    def own_terminal():  # a session of its own, with the pty as its controlling terminal, like a shell's job
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    code = "import sys\nfrom lowvram.cli import main\nsys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *RUN, "--out", str(out)], stdin=slave, stdout=slave, stderr=slave,
                            cwd=tmp_path, env=env(), preexec_fn=own_terminal)
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 120
        while b"step 3/400" not in seen:
            assert time.monotonic() < deadline and proc.poll() is None, seen.decode(errors="replace")
            if select.select([master], [], [], 0.1)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
    finally:
        os.close(master)  # the terminal window closes
    assert finish(proc, 120) == 130, seen.decode(errors="replace")
    kept = tmp_path / "v.latents.safetensors"
    state = load_resume_file(str(kept))
    assert 3 <= state.checkpoint.step < 400 and state.reason == "cancelled"
    assert not out.exists() and scratch_entries(tmp_path) == []


HOLD_LATENTS_WRITE = """
import os, sys, time, safetensors.torch as st
_save = st.save_file
def held_save(tensors, filename, *args, **kwargs):
    if "latents" in str(filename):
        sys.stderr.write("WRITING LATENTS\\n"); sys.stderr.flush()
        while not os.path.exists(os.environ["SAVE_GATE"]):  # a slow disk: the test says when it is done
            time.sleep(0.05)
    return _save(tensors, filename, *args, **kwargs)
st.save_file = held_save
"""


def test_a_second_signal_during_the_latents_write_waits_for_it(demo_t2v_path, tmp_path):
    out, log, gate = tmp_path / "v.mp4", tmp_path / "err.txt", tmp_path / "go"
    proc = lowvram([*RUN, "--out", str(out)], log, tmp_path, prelude=HOLD_LATENTS_WRITE, SAVE_GATE=str(gate))
    try:
        wait_for(lambda: "step 3/400" in log.read_text(), proc, log=log)
        proc.send_signal(signal.SIGINT)  # stop at the next step, keep the latents
        wait_for(lambda: "WRITING LATENTS" in log.read_text(), proc, log=log)
        proc.send_signal(signal.SIGTERM)  # and now, impatient: stop at once
        wait_for(lambda: "finishing the write in progress first" in log.read_text(), proc, log=log)
        gate.touch()
        code = finish(proc, 120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 130 and "Traceback" not in text, text
    kept = tmp_path / "v.latents.safetensors"
    assert f"latents kept in {kept}" in text
    assert load_resume_file(str(kept)).checkpoint.step >= 3
    assert not out.exists() and scratch_entries(tmp_path) == []
