"""Full and read-only disks, on real small file systems (tmpfs; skipped where this machine cannot mount one).

Before issue 17 both were found only after the whole run: a traceback, exit 1, the denoising thrown away, and the
console claiming a sidecar that was never written.
"""

from __future__ import annotations

import shutil

from lowvram.cli import main
from lowvram.sampling.resume import load_resume_file
from reliability_support import SMALL, fill, finish, lowvram, scratch_entries, tmpfs, wait_for


def test_a_disk_too_small_for_the_run_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    import lowvram.sampling.runner as runner

    loads = []
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: loads.append(a))
    with tmpfs(tmp_path / "disk", "1m") as disk:
        code = main(["generate", "a cat", "--width", "256", "--height", "144", "--frames", "17", "--steps", "1", "--out", str(disk / "x.mp4")])
        err = capsys.readouterr().err
        assert code == 2 and "free; this run needs up to" in err and "Traceback" not in err, err
        assert list(disk.iterdir()) == [] and loads == []


def test_a_read_only_output_folder_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    import lowvram.sampling.runner as runner

    loads = []
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: loads.append(a))
    with tmpfs(tmp_path / "ro", "4m", read_only=True) as folder:  # root ignores permission bits: a read-only mount
        code = main(["generate", "a cat", *SMALL, "--steps", "1", "--out", str(folder / "x.mp4")])
        err = capsys.readouterr().err
    assert code == 2 and "cannot be written (read-only file system)" in err, err
    assert loads == []


def test_a_disk_that_fills_during_the_run_keeps_the_latents_and_resume_finishes(demo_t2v_path, tmp_path):
    """The disk fills while denoising: the write fails with exit 4, the latents go to the user cache (the output
    folder is full), the message says how to finish; after freeing space --resume writes the video."""
    with tmpfs(tmp_path / "disk", "24m") as disk:
        out, log = disk / "v.mp4", tmp_path / "err.txt"
        proc = lowvram(["generate", "a cat", *SMALL, "--steps", "80", "--out", str(out)], log, tmp_path)
        try:
            wait_for(lambda: "step 1/80" in log.read_text(), proc, log=log)  # checked and reserved: now fill it
            filler = fill(disk)
            code = finish(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
        text = log.read_text()
        assert code == 4 and "Traceback" not in text, text
        assert "could not write the video v.mp4" in text and "no space left on device" in text.lower()
        assert "wrote " not in text  # no claim of a video or sidecar that does not exist
        kept = text.split("The latents are kept in ")[1].split(":")[0]
        assert f"lowvram generate --resume {kept}" in text
        state = load_resume_file(kept)
        assert state.checkpoint.step == 80 and state.reason == "write failed"
        assert sorted(p.name for p in disk.iterdir()) == ["filler.bin"]  # no half video, no scratch, no claim

        filler.unlink()
        resumed = lowvram(["generate", "--resume", kept, "--quiet"], tmp_path / "resume.txt", tmp_path)
        assert finish(resumed) == 0, (tmp_path / "resume.txt").read_text()
        assert out.is_file() and out.with_suffix(".json").is_file() and scratch_entries(disk) == []


def test_an_output_folder_removed_during_the_run_fails_cleanly(demo_t2v_path, tmp_path):
    """The same path on any machine (no mount needed): the output folder is deleted while the run denoises."""
    folder, log = tmp_path / "out", tmp_path / "err.txt"
    folder.mkdir()
    proc = lowvram(["generate", "a cat", *SMALL, "--steps", "80", "--out", str(folder / "v.mp4")], log, tmp_path)
    try:
        wait_for(lambda: "step 1/80" in log.read_text(), proc, log=log)
        shutil.rmtree(folder)
        code = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 4 and "Traceback" not in text and "could not write the video v.mp4" in text, text
    kept = text.split("The latents are kept in ")[1].split(":")[0]
    assert load_resume_file(kept, out=str(tmp_path / "v.mp4")).checkpoint.step == 80
    assert main(["generate", "--resume", kept, "--out", str(tmp_path / "v.mp4"), "--quiet"]) == 0
    assert (tmp_path / "v.mp4").is_file() and scratch_entries(tmp_path) == []


def test_the_resume_commands_in_messages_survive_a_path_with_spaces(tmp_path):
    """The write-failure and out-of-memory messages print a command to copy; an --out folder with a space in its
    name gave one that the shell splits in two."""
    import shlex

    from lowvram.io.output import WriteFailed
    from lowvram.sampling.recovery import OutOfMemoryExhausted
    from plans import plan_with

    kept = tmp_path / "my videos" / "v.latents.safetensors"
    for message in (str(WriteFailed("the video v.mp4", kept.parent, OSError(28, "No space left on device"), kept)),
                    str(OutOfMemoryExhausted("denoise", plan_with("cpu"), "out of memory", kept))):
        command = shlex.split(message.split("`lowvram generate --resume ", 1)[1].split("`", 1)[0])
        assert command == [str(kept)], message
