"""Concurrent runs, with real processes: nothing lost, nothing overwritten, nothing shared by accident.

Each test fails on the code before issue 17: two runs that pick one name both wrote to it (one result gone),
a link planted at the predictable temporary name was written through, a second disk-offload run deleted the
first one's offload folder, and two runs missing one quantized-cache entry both quantized it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
from pathlib import Path


from reliability_support import GATED_SAVES, SMALL, finish, lowvram, scratch_entries, wait_for, write_plan


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_runs_with_one_out_name_keep_both_results(demo_t2v_path, tmp_path):
    """Both succeed, under two names, and each sidecar describes its own video (checked by sha256 and seed)."""
    out = tmp_path / "same.mp4"
    procs = {
        seed: lowvram(["generate", "a cat", *SMALL, "--steps", "2", "--seed", str(seed), "--out", str(out), "--quiet"], tmp_path / f"err{seed}.txt", tmp_path)
        for seed in (1, 2)
    }
    printed = {}
    for seed, proc in procs.items():
        assert finish(proc) == 0, (tmp_path / f"err{seed}.txt").read_text()
        printed[seed] = Path(proc.stdout.read().strip())
    videos = sorted(tmp_path.glob("*.mp4"))
    assert [v.name for v in videos] == ["same-1.mp4", "same.mp4"]
    assert set(printed.values()) == set(videos)
    for seed, video in printed.items():
        side = json.loads(video.with_suffix(".json").read_text())
        assert side["seed"] == seed
        assert side["video_file"] == {"name": video.name, "sha256": sha256(video), "bytes": video.stat().st_size}
    assert scratch_entries(tmp_path) == []


def test_links_planted_at_predictable_names_are_never_written_through(demo_t2v_path, small_job, cpu_plan, tmp_path):
    """The old fixed temporary name, the final names and the name of a claim: links there are never followed
    or replaced, and the run takes the next free name."""
    from lowvram.sampling.runner import generate

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / ".v.partial.mp4").symlink_to(victim)  # the temporary name before issue 17
    first = generate(small_job(out=str(tmp_path / "v.mp4")), cpu_plan)
    assert victim.read_text() == "precious"
    assert first.video_path == tmp_path / "v.mp4" and not first.video_path.is_symlink()

    from lowvram.io.output import _claim_path

    (tmp_path / "w.mp4").symlink_to(tmp_path / "nowhere.mp4")  # dangling: exists() says no, the name is taken all the same
    _claim_path(tmp_path / "w-1.mp4").symlink_to(victim)  # a planted claim is a taken name, not a file to fill
    second = generate(small_job(out=str(tmp_path / "w.mp4")), cpu_plan)
    assert victim.read_text() == "precious"
    assert second.video_path == tmp_path / "w-2.mp4"
    assert (tmp_path / "w.mp4").is_symlink() and not (tmp_path / "nowhere.mp4").exists()
    for result in (first, second):
        assert json.loads(result.sidecar_path.read_text())["video_file"]["sha256"] == sha256(result.video_path)


def test_a_second_disk_offload_run_leaves_the_first_ones_folder_alone(demo_t2v_path, tmp_path):
    """Run A has written part of its offloaded weights; run B, same checkpoint and plan, starts and is killed
    before it writes any. Before issue 17 B had deleted A's half-written folder (one folder per checkpoint), so A
    failed reading its weights back; now each run has its own folder, and A's goes when A ends."""
    from lowvram.paths import cache_dir

    plan = write_plan(tmp_path / "disk.json", placement="disk_offload")
    args = ["generate", "a cat", *SMALL, "--steps", "2", "--force-plan", str(plan), "--quiet"]
    root = cache_dir() / "offload"
    before = set(root.iterdir()) if root.is_dir() else set()
    a_log, b_log, a_gate = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "a-go"
    a = lowvram([*args, "--out", str(tmp_path / "a.mp4")], a_log, tmp_path, prelude=GATED_SAVES, SAVE_GATE=str(a_gate))
    b = None
    try:
        wait_for(lambda: "SAVED" in a_log.read_text(), a, log=a_log)  # A has written one group file, held there
        b = lowvram([*args, "--out", str(tmp_path / "b.mp4")], b_log, tmp_path, prelude=GATED_SAVES,
                    SAVE_GATE=str(tmp_path / "never"), SAVE_GATE_BEFORE="1")
        wait_for(lambda: "SAVING" in b_log.read_text(), b, log=b_log)  # B has set up its folder, writes nothing yet
        b.send_signal(signal.SIGKILL)
        b.wait()
        a_gate.touch()
        assert finish(a) == 0, a_log.read_text()
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert (tmp_path / "a.mp4").is_file()
    from lowvram.io import scratch

    scratch.sweep(root)  # B's folder: it was killed, so the next run's sweep removes it
    assert set(root.iterdir()) == before


def test_two_runs_missing_one_quantized_entry_quantize_it_once(demo_t2v_path, tmp_path):
    """A misses the int8 entry, quantizes and saves it slowly; B, started meanwhile, waits for A's entry and
    loads it instead of quantizing again (two 14B quantizations at once exhaust a 32 GB machine's RAM)."""
    cache = tmp_path / "cache"
    shutil.copytree(demo_t2v_path, cache / "demo" / demo_t2v_path.name)  # a cache with no quantized entries yet
    plan = write_plan(tmp_path / "int8.json", precision="int8")
    args = ["generate", "a cat", *SMALL, "--steps", "1", "--force-plan", str(plan), "--quiet"]
    says_quantized = """
import sys
from lowvram.placement import quantize
_quantize = quantize.quantize_weights
def quantize_weights(module, level, *args, **kwargs):
    sys.stderr.write(f"QUANTIZING {level}\\n"); sys.stderr.flush()
    return _quantize(module, level, *args, **kwargs)
quantize.quantize_weights = quantize_weights
import filelock
_acquire = filelock.FileLock.acquire
def acquire(self, *args, **kwargs):
    sys.stderr.write(f"LOCKING {self.lock_file}\\n"); sys.stderr.flush()
    return _acquire(self, *args, **kwargs)
filelock.FileLock.acquire = acquire
"""
    a_log, b_log = tmp_path / "a.txt", tmp_path / "b.txt"
    gate = tmp_path / "go"
    a = lowvram([*args, "--out", str(tmp_path / "a.mp4")], a_log, tmp_path, prelude=GATED_SAVES + says_quantized, SAVE_GATE=str(gate), LOWVRAM_CACHE_DIR=str(cache))
    try:
        wait_for(lambda: "SAVED" in a_log.read_text(), a, log=a_log)  # A is inside its cache save, held there
        b = lowvram([*args, "--out", str(tmp_path / "b.mp4")], b_log, tmp_path, prelude=says_quantized, LOWVRAM_CACHE_DIR=str(cache))
        # B has reached the cache: it waits on the entry's lock, or (before issue 17) it quantizes
        wait_for(lambda: "LOCKING" in b_log.read_text() or "QUANTIZING" in b_log.read_text(), b, log=b_log)
        gate.touch()
        assert finish(b) == 0, b_log.read_text()
        assert finish(a) == 0, a_log.read_text()
    finally:
        if a.poll() is None:
            a.kill()
    assert "QUANTIZING int8" in a_log.read_text()
    assert "QUANTIZING" not in b_log.read_text(), b_log.read_text()
    entries = [p for p in (cache / "quantized").iterdir() if p.is_dir()]
    assert len(entries) == 1 and not entries[0].name.startswith(".")


def test_a_fifo_or_a_link_to_dev_zero_planted_at_a_claim_name_neither_hangs_nor_fills_the_ram(tmp_path):
    """Claim names are predictable (a hash of the video name). The sweep before every run read them following
    links and blocking: a FIFO there hung every run into that folder, a link to /dev/zero read until the RAM was
    gone (MemoryError traceback, or the OOM killer)."""
    import os
    import subprocess
    import sys

    from lowvram.io.output import _claim_path

    folder = tmp_path / "shared"
    folder.mkdir()
    os.mkfifo(_claim_path(folder / "v.mp4"))
    os.symlink("/dev/zero", _claim_path(folder / "w.mp4"))
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
            "from lowvram.io.output import reserve_output\n"
            f"for name in ('v.mp4', 'w.mp4'):\n"
            f"    r = reserve_output({str(folder)!r} + '/' + name, 'a cat', 1); print(r.video.name); r.release()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert len(done.stdout.split()) == 2  # both runs got a name (the planted entries' names are skipped)
