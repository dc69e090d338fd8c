"""What `generate` and `plan` tell a user: the random seed, the default negative prompt, "did you mean", the
size an image implies, warnings outside the trained range, a batch from a prompt file, a name collision, the
GPU a what-if assumes, suggestions for a slow plan, and predicted vs measured at the end."""

from __future__ import annotations

import json
import re

import pytest

from lowvram.cli import main
from lowvram.models.defaults import WAN_NEGATIVE_PROMPT

SMALL = ["--width", "64", "--height", "64", "--frames", "5", "--steps", "1"]


def sidecar_of(video: str) -> dict:
    from pathlib import Path

    return json.loads(Path(video).with_suffix(".json").read_text())


def test_no_seed_draws_a_random_one_prints_and_records_it(tmp_path, capsys, demo_t2v_path):
    seeds = []
    for name in ("a.mp4", "b.mp4"):
        assert main(["generate", "a cat", *SMALL, "--out", str(tmp_path / name)]) == 0
        out = capsys.readouterr().out
        match = re.search(r"seed: (\d+) \(random; --seed \1 makes this video again\)", out)
        assert match, out
        side = sidecar_of(str(tmp_path / name))
        assert side["seed"] == int(match.group(1))
        assert side["settings"]["negative_prompt"] == WAN_NEGATIVE_PROMPT  # Wan's own default negative prompt
        seeds.append(side["seed"])
    assert seeds[0] != seeds[1]
    assert main(["generate", "a cat", *SMALL, "--seed", "7", "--out", str(tmp_path / "c.mp4")]) == 0
    assert "seed: " not in capsys.readouterr().out and sidecar_of(str(tmp_path / "c.mp4"))["seed"] == 7


def test_a_mistyped_model_gets_a_did_you_mean(capsys):
    assert main(["generate", "a cat", "--model", "wan2.1-t2v-13b"]) == 2
    assert "Did you mean wan2.1-t2v-1.3b?" in capsys.readouterr().err
    assert main(["plan", "--model", "wan2.1-i2v-14b", "--vram", "24", "--ram", "64"]) == 2
    assert "Did you mean wan2.1-i2v-14b-480p or wan2.1-i2v-14b-720p?" in capsys.readouterr().err


def test_an_i2v_video_takes_the_shape_of_its_image(tmp_path, capsys, image_file, demo_i2v_path):
    out = tmp_path / "i2v.mp4"  # image_file is 64x48 (4:3); the demo's default size is 256x144
    assert main(["generate", "a cat", "--model", "tiny-random-i2v", "--image", str(image_file), "--frames", "5", "--steps", "1", "--seed", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    settings = sidecar_of(str(out))["settings"]
    assert (settings["width"], settings["height"]) == (208, 160)  # 4:3 at about 256x144's area, in multiples of 16
    assert "video size: 208x160, the shape of the image (64x48)" in printed


def test_a_ti2v_video_from_an_image_takes_a_size_in_multiples_of_32(tmp_path, capsys):
    """TI2V-5B's sizes are multiples of 32: the size taken from the image must be one, not one it then refuses
    (a 300x400 image gave 144x208 and exit 2)."""
    from PIL import Image

    image = tmp_path / "tall.png"
    Image.new("RGB", (300, 400), (20, 50, 230)).save(image)
    out = tmp_path / "ti2v.mp4"
    assert main(["generate", "a cat", "--model", "tiny-random-ti2v", "--image", str(image), "--frames", "5", "--steps", "1",
                 "--seed", "1", "--out", str(out)]) == 0
    settings = sidecar_of(str(out))["settings"]
    assert (settings["width"], settings["height"]) == (128, 192)  # about 3:4 at the demo's default area, multiples of 32
    assert "video size: 128x192, the shape of the image (300x400)" in capsys.readouterr().out
    from lowvram.models.advice import size_multiple

    assert size_multiple("wan2.2-ti2v-5b") == 32 and size_multiple("wan2.1-t2v-14b") == 16


def test_a_video_shape_other_than_the_images_is_warned_about(tmp_path, capsys, image_file, demo_i2v_path):
    assert main(["generate", "a cat", "--model", "tiny-random-i2v", "--image", str(image_file), *SMALL, "--out", str(tmp_path / "x.mp4")]) == 0
    assert "warning: the image is 64x48 but the video 64x64: the first frame will be stretched; 64x48 keeps the image's shape" in capsys.readouterr().out


def test_plan_warns_outside_the_models_trained_range(capsys):
    code = main(["plan", "--model", "wan2.1-t2v-1.3b", "--width", "1280", "--height", "720", "--frames", "121",
                 "--vram", "24", "--ram", "64", "--compute-capability", "8.9"])
    err = capsys.readouterr().err
    assert code == 0
    assert "warning: wan2.1-t2v-1.3b was trained at 480p (832x480); at 1280x720" in err
    assert "trained on clips of up to 81 frames; 121 frames" in err


def test_a_prompt_file_runs_each_prompt_with_the_model_loaded_once(tmp_path, capsys, monkeypatch, demo_t2v_path):
    monkeypatch.chdir(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n\n# a comment\na blue whale\n", encoding="utf-8")
    assert main(["generate", "--prompt-file", str(prompts), *SMALL, "--seed", "5"]) == 0
    captured = capsys.readouterr()
    videos = [line for line in captured.out.splitlines() if line.endswith(".mp4")]
    assert videos == ["outputs/a-red-fox-seed5.mp4", "outputs/a-blue-whale-seed5.mp4"]
    assert "job 1/2: a red fox" in captured.out and "job 2/2: a blue whale" in captured.out
    assert captured.err.count("[load] ...") == 1  # the second job reuses the loaded model
    assert sidecar_of(videos[1])["prompt"] == "a blue whale"


@pytest.mark.parametrize(
    "text, extra, message",
    [
        ("", [], "no prompts in it"),
        ("# only a comment\n", [], "no prompts in it"),
        ("a fox\n", ["--out", "x.mp4"], "--out names one video"),
        ("a fox\n", ["a prompt too"], "either a prompt or --prompt-file"),
    ],
)
def test_bad_prompt_files_are_refused_before_loading(tmp_path, capsys, text, extra, message):
    prompts = tmp_path / "p.txt"
    prompts.write_text(text, encoding="utf-8")
    positional = [a for a in extra if not a.startswith("--") and not a.endswith(".mp4")]
    options = [a for a in extra if a not in positional]
    assert main(["generate", *positional, "--prompt-file", str(prompts), *options]) == 2
    err = capsys.readouterr().err
    assert message in err and "[load]" not in err


def test_the_default_name_taken_is_announced(tmp_path, capsys, monkeypatch, demo_t2v_path):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["generate", "a cat", *SMALL, "--seed", "3"]) == 0
    captured = capsys.readouterr()
    assert "outputs/a-cat-seed3.mp4 already exists; writing outputs/a-cat-seed3-1.mp4 instead" in captured.err
    assert captured.out.splitlines()[-1] == "outputs/a-cat-seed3-1.mp4"


@pytest.mark.parametrize(
    "args, card",
    [
        (["--vram", "24"], "an RTX 3090 (24 GB, compute capability 8.6"),
        (["--vram", "24", "--compute-capability", "8.9"], "an RTX 4090 (24 GB, compute capability 8.9"),
        (["--vram", "11.5"], "an RTX 3060 (12 GB, compute capability 8.6"),
    ],
)
def test_a_what_if_gpu_without_a_name_is_inferred_and_said(capsys, args, card):
    assert main(["plan", "--model", "wan2.1-t2v-1.3b", *args, "--ram", "64"]) == 0
    captured = capsys.readouterr()
    assert f"what-if GPU: assuming {card}" in captured.err
    name = card.split(" (")[0].removeprefix("an ")
    assert f"time model: defaults for {name}" in captured.out  # the speed of that card, not an RTX 3060's


def test_a_what_if_vram_no_card_has_is_asked_about(capsys):
    assert main(["plan", "--model", "wan2.1-t2v-1.3b", "--vram", "32", "--ram", "64"]) == 2
    assert "which GPU is it?" in capsys.readouterr().err


def test_a_very_slow_plan_comes_with_suggestions(capsys):
    assert main(["plan", "--model", "wan2.1-t2v-14b", "--vram", "8", "--ram", "16"]) == 0
    out = capsys.readouterr().out
    assert "suggestions (this plan is predicted to take" in out
    assert "--model wan2.1-t2v-1.3b: the smaller model wan2.1-t2v-1.3b; predicted" in out and "--frames 49: 49 frames" in out


def test_no_plan_fits_says_what_would(capsys):
    assert main(["plan", "--model", "wan2.1-t2v-14b", "--vram", "8", "--ram", "6"]) == 2
    err = capsys.readouterr().err
    assert "no plan fits" in err and "what would make it fit:" in err
    assert "--model wan2.1-t2v-1.3b: the smaller model wan2.1-t2v-1.3b; fits, predicted" in err


def test_generate_ends_with_decode_progress_and_predicted_vs_measured(tmp_path, capsys, demo_t2v_path):
    assert main(["generate", "a cat", "--width", "64", "--height", "64", "--frames", "9", "--steps", "1", "--seed", "1", "--out", str(tmp_path / "x.mp4")]) == 0
    err = capsys.readouterr().err
    assert "decoded 1/3 [" in err and "decoded 3/3 [" in err
    table = err[err.index("predicted vs measured:"):]
    assert re.search(r"denoise +\S+ +\S+ +\S+ GiB +\S+ GiB", table) and "\n  total " in table


def test_a_run_of_a_model_already_built_prints_no_library_import_notices(tmp_path, demo_t2v_path):
    """torchao's "Failed to load ..." extension warnings, torch's pytree deprecations and diffusers' "Unable to import
    `torchao` Tensor objects" were quieted only when the demo was built in the same process: every later run (the
    demo already built, any real model) printed them during the load."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    done = subprocess.run([sys.executable, "-m", "lowvram", "generate", "a cat", *SMALL, "--seed", "1", "--out", str(tmp_path / "a.mp4")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    for noise in ("torchao", "_pytree", "Failed to load"):
        assert noise not in done.stderr, done.stderr


def test_a_cpu_run_far_from_its_prediction_does_not_send_the_user_to_calibrate():
    """`lowvram calibrate` needs a CUDA GPU (exit 2 without one): a CPU run that took 500x its predicted time was told
    to run it anyway."""
    import io

    from lowvram.cli.console import ConsoleReporter
    from lowvram.job import Job
    from lowvram.telemetry.events import RunFinished, StageFinished
    from planner.choose import Preferences, make_plan
    from planner.probe import synthetic_probe
    from planner.spec import known_spec

    job = Job(prompt="x", model="wan2.1-t2v-1.3b", width=256, height=144, frames=17, steps=8)
    plan = make_plan(synthetic_probe(0, 64), known_spec(job.model), job, Preferences()).plan
    assert plan.device == "cpu"
    out = io.StringIO()
    reporter = ConsoleReporter(out, plan=plan)
    for stage in ("load", "encode", "denoise", "decode"):
        reporter(StageFinished(stage=stage, seconds=plan.predicted_seconds * 100))
    reporter(RunFinished(video_path="x.mp4", sidecar_path="x.json", seconds=plan.predicted_seconds * 400))
    text = out.getvalue()
    assert "the predicted time" in text and "`lowvram calibrate` measures this machine" not in text, text
    assert "CUDA GPUs only" in text


def test_generate_help_states_the_defaults_it_uses(capsys):
    """--help said the negative prompt defaults to none (it is Wan's own), guidance 5.0 and 16 fps for every model
    (Wan2.2 A14B and TI2V-5B differ) and that generate runs Wan2.1 models only."""
    assert main(["generate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "what to avoid (default: none)" not in text and "the Wan team's own negative prompt" in text
    assert "Wan2.1 or Wan2.2" in text and "24 for TI2V-5B" in text and "I2V 3.5" in text
