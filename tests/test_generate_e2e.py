"""End to end on the demo model: the video and the sidecar a user gets."""

from __future__ import annotations

import json

import imageio.v3 as iio

from lowvram.cli import main
from lowvram.sampling.runner import generate
from lowvram.telemetry import EventLog, RunFinished, StageFinished, StepFinished


def read_video(path):
    return iio.imread(path)


def test_t2v_generate_writes_video_and_sidecar(small_job, cpu_plan, tmp_path):
    log = EventLog()
    job = small_job(width=96, height=64, frames=9, steps=3)
    result = generate(job, plan=cpu_plan, on_event=log)
    frames = read_video(result.video_path)
    assert frames.shape == (9, 64, 96, 3)
    assert [e.stage for e in log.of(StageFinished)] == ["load", "encode", "denoise", "decode", "write"]
    steps = log.of(StepFinished)
    assert [s.step for s in steps] == [0, 1, 2] and all(s.total == 3 for s in steps)
    assert log.of(RunFinished)[0].video_path == str(result.video_path)

    side = json.loads(result.sidecar_path.read_text())
    assert side["prompt"] == job.prompt and side["seed"] == job.seed
    assert side["settings"]["width"] == 96 and side["settings"]["frames"] == 9 and side["settings"]["steps"] == 3
    assert side["model"]["name"] == "tiny-random" and side["model"]["task"] == "t2v"
    assert side["model"]["random_weights"] is True
    assert side["libraries"]["torch"] and side["libraries"]["diffusers"]
    assert side["plan"]["device"] == "cpu"
    assert len(side["step_seconds"]) == 3 and all(s > 0 for s in side["step_seconds"])
    assert set(side["measured"]["stages"]) >= {"encode", "denoise", "decode"}
    assert any(e["event"] == "StepFinished" for e in side["telemetry"])


def test_i2v_generate_uses_the_image(small_job, cpu_plan, image_file):
    job = small_job(model="tiny-random-i2v", image=str(image_file), frames=5)
    result = generate(job, plan=cpu_plan)
    frames = read_video(result.video_path)
    assert frames.shape == (5, 64, 64, 3)
    side = json.loads(result.sidecar_path.read_text())
    assert side["model"]["task"] == "i2v" and side["settings"]["image"] == str(image_file)


def test_same_seed_same_video_different_seed_differs(small_job, cpu_plan, tmp_path):
    a = generate(small_job(out=str(tmp_path / "a.mp4")), plan=cpu_plan)
    b = generate(small_job(out=str(tmp_path / "b.mp4")), plan=cpu_plan)
    c = generate(small_job(out=str(tmp_path / "c.mp4"), seed=99), plan=cpu_plan)
    fa, fb, fc = (read_video(r.video_path) for r in (a, b, c))
    assert (fa == fb).all()
    assert not (fa == fc).all()


def test_never_overwrites(small_job, cpu_plan, tmp_path):
    target = tmp_path / "out.mp4"
    target.write_bytes(b"precious")
    result = generate(small_job(out=str(target)), plan=cpu_plan)
    assert target.read_bytes() == b"precious"
    assert result.video_path == tmp_path / "out-1.mp4" and result.video_path.exists()


def test_cli_generate_prints_stages_and_path(tmp_path, capsys):
    out = tmp_path / "cli.mp4"
    code = main(["generate", "a dog runs", "--width", "64", "--height", "64", "--frames", "5", "--steps", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert out.exists() and out.with_suffix(".json").exists()
    assert str(out) in captured.out
    for stage in ("load", "encode", "denoise", "decode", "write"):
        assert f"[{stage}] done" in captured.err
    assert "step 2/2" in captured.err and "ETA" in captured.err
    assert "random weights" in captured.err


def test_cli_says_when_it_picks_a_new_name(tmp_path, capsys):
    out = tmp_path / "taken.mp4"
    out.write_bytes(b"x")
    code = main(["generate", "a dog", "--width", "64", "--height", "64", "--frames", "5", "--steps", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0
    assert "already exists" in err and "taken-1.mp4" in err
    assert out.read_bytes() == b"x"
