"""Hostile and absurd inputs, generated here: refused before any model loads with exit code 2 and a message that
names the limit or the problem, never a traceback, a hang or an allocation sized by the input.

Each test fails on the code before issue 17: a truncated JPEG and a 144-megapixel PNG passed Pillow's verify(),
task vs image was found after loading, resume files with wrong channels, widths or sampler values passed, a
resume file's step count was not bounded, a config with a billion layers made the planner run for ever, and a
1 KiB profile of brackets was a RecursionError.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lowvram.cli import main
from lowvram.errors import UserError
from lowvram.job import MAX_FRAMES, MAX_SIDE, MAX_STEPS, Job, validate_job
from lowvram.sampling.resume import FORMAT, load_resume_file
from reliability_support import SMALL, cancelled_resume_file, env

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BASE = ["generate", "a cat", *SMALL, "--steps", "1"]


@pytest.fixture
def no_loading(monkeypatch):
    """Records every model load: the tests below must refuse before any."""
    import lowvram.sampling.runner as runner

    loads = []
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: loads.append(a))
    return loads


def refused(argv: list[str], capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.strip(), err
    return err


# ---------------------------------------------------------------------------------------------- images


def png_bomb(path: Path, side: int = 12000) -> Path:
    """A valid grayscale PNG of side x side black pixels: 144 megapixels in about 140 KiB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(1)
    row = b"\0" * (side + 1)  # filter byte + pixels
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_a_truncated_image_is_refused_before_loading(tmp_path, capsys, no_loading):
    import numpy as np
    from PIL import Image

    whole = tmp_path / "whole.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(whole, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with Image.open(cut) as img:
        img.verify()  # what passed before: verify() does not decode
    err = refused([*BASE, "--model", "tiny-random-i2v", "--image", str(cut), "--out", str(tmp_path / "x.mp4")], capsys)
    assert "not a readable image" in err and "truncated" in err
    assert no_loading == []


def test_a_decompression_bomb_is_refused_before_loading(tmp_path, capsys, no_loading):
    bomb = png_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 1 << 20
    err = refused([*BASE, "--model", "tiny-random-i2v", "--image", str(bomb), "--out", str(tmp_path / "x.mp4")], capsys)
    assert "12000x12000 is 144 megapixels, over the limit of 64 megapixels" in err
    assert no_loading == []


# ---------------------------------------------------------------------------------------------- what a model accepts


@pytest.mark.parametrize("model, image, message", [
    ("tiny-random", True, "text-to-video model and takes no --image"),
    ("tiny-random-i2v", False, "image-to-video model: give the first frame with --image"),
    ("wan2.1-i2v-14b-480p", False, "image-to-video model: give the first frame with --image"),
    ("Wan-AI/Wan2.1-T2V-14B-Diffusers", True, "text-to-video model and takes no --image"),
])
def test_task_and_image_are_checked_before_loading(model, image, message, tmp_path, capsys, no_loading, image_file, monkeypatch):
    import lowvram.planning

    planned = []
    monkeypatch.setattr(lowvram.planning, "plan_for_job", lambda *a, **k: planned.append(a))
    argv = [*BASE, "--model", model, "--out", str(tmp_path / "x.mp4")] + (["--image", str(image_file)] if image else [])
    assert message in refused(argv, capsys)
    assert no_loading == [] and planned == []  # not even planned: the short name says the task


def ti2v_folder(tmp_path: Path, demo: Path) -> Path:
    """The demo pipeline described as Wan2.2 TI2V: expand_timesteps and no image encoder."""
    folder = tmp_path / "ti2v"
    shutil.copytree(demo, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(dict(index, expand_timesteps=True)))
    return folder


def test_a_ti2v_model_takes_an_image_or_none(tmp_path, demo_t2v_path, image_file):
    from lowvram.models.names import resolve_model
    from lowvram.models.task import check_inputs_before_load, model_configs, model_task

    folder = ti2v_folder(tmp_path, demo_t2v_path)
    assert model_task(resolve_model(str(folder)), model_configs(resolve_model(str(folder)))) == "ti2v"
    for model in (str(folder), "tiny-random-ti2v", "wan2.2-ti2v-5b"):
        for image in (None, str(image_file)):
            check_inputs_before_load(Job(prompt="a cat", model=model, width=64, height=64, frames=5, steps=1, image=image, out=str(tmp_path / "x.mp4")))


# ---------------------------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("option, value, limit", [
    ("--steps", 10**9, f"over the limit of {MAX_STEPS} steps"),
    ("--frames", 4 * 10**6 + 1, f"over the limit of {MAX_FRAMES} frames"),
    ("--width", 65536, f"over the limit of {MAX_SIDE} pixels"),
])
def test_absurd_sizes_are_refused_naming_the_limit(option, value, limit, tmp_path, capsys, no_loading):
    argv = [*BASE, option, str(value), "--out", str(tmp_path / "x.mp4")]
    assert f"{option} {value} is {limit}" in refused(argv, capsys)
    assert no_loading == []


ints = st.integers(-(2**40), 2**40)


@FUZZ
@given(width=ints, height=ints, frames=ints, steps=ints, fps=ints)
def test_validate_job_accepts_exactly_the_jobs_within_bounds(width, height, frames, steps, fps):
    """Property: a job is accepted iff every bound holds; a refusal names each option that broke one."""
    job = Job(prompt="a cat", width=width, height=height, frames=frames, steps=steps, fps=fps)
    broken = {
        "--width": not (16 <= width <= MAX_SIDE and width % 16 == 0),
        "--height": not (16 <= height <= MAX_SIDE and height % 16 == 0),
        "--frames": not (1 <= frames <= MAX_FRAMES and (frames - 1) % 4 == 0),
        "--steps": not (1 <= steps <= MAX_STEPS),
        "--fps": not (1 <= fps <= 240),
    }
    try:
        validate_job(job)
    except UserError as exc:
        named = {option for option in broken if f"{option} " in str(exc)}
        assert named == {option for option, bad in broken.items() if bad}, str(exc)
    else:
        assert not any(broken.values())


# ---------------------------------------------------------------------------------------------- model configs


def damaged_copy(tmp_path: Path, demo: Path, component: str, **changes) -> Path:
    folder = tmp_path / "damaged"
    shutil.copytree(demo, folder)
    path = folder / component / "config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), **changes)))
    return folder


@pytest.mark.parametrize("component, changes, named", [
    ("transformer", {"num_layers": 10**9}, "num_layers = 1000000000 is outside 1..256"),
    ("text_encoder", {"num_layers": 10**7}, "num_layers = 10000000 is outside 1..256"),
    ("vae", {"dim_mult": [1] * 100000}, "dim_mult has 100000 entries"),
])
def test_absurd_config_dimensions_are_refused_before_the_planner_runs(component, changes, named, tmp_path, demo_t2v_path):
    """A real `lowvram plan` process: before issue 17 a billion layers made it build modules for ever."""
    folder = damaged_copy(tmp_path, demo_t2v_path, component, **changes)
    code = "import sys\nfrom lowvram.cli import main\nsys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "plan", "--model", str(folder), "--vram", "8", "--ram", "32"],
                          capture_output=True, text=True, env=env(), timeout=120)
    assert done.returncode == 2 and named in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_an_absurd_sampler_config_is_refused_before_loading(tmp_path, demo_t2v_path):
    """The sampler is built from scheduler_config.json: num_train_timesteps = 4e9 allocated 16 GB at load
    (a traceback, or the OOM killer) instead of being refused with the other config limits."""
    folder = tmp_path / "damaged"
    shutil.copytree(demo_t2v_path, folder)
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), num_train_timesteps=4 * 10**9)))
    code = "import sys\nfrom lowvram.cli import main\nsys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "generate", "a cat", "--model", str(folder), *SMALL,
                           "--out", str(tmp_path / "x.mp4")], capture_output=True, text=True, env=env(), timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "scheduler/scheduler_config.json: num_train_timesteps = 4000000000 is outside 1..100000" in done.stderr
    assert "Traceback" not in done.stderr and "[load]" not in done.stderr


@pytest.mark.parametrize("component, name", [
    ("vae", "WAN21_VAE"), ("vae", "WAN22_VAE"), ("transformer", "WAN_14B"), ("transformer", "WAN_1_3B"),
    ("transformer", "WAN_I2V_14B"), ("transformer", "WAN22_TI2V_5B"), ("text_encoder", "UMT5_XXL"),
    ("image_encoder", "CLIP_VIT_H"),
])
def test_the_real_wan_configs_are_within_the_limits(component, name):
    """The limits refuse absurd numbers, never a real checkpoint's: the VAE's latent statistics have z_dim
    entries (48 in Wan2.2's; a 16-entry list limit refused TI2V-5B, found on the H200, run 16)."""
    from planner import known_configs
    from planner.config_limits import config_problems

    config = dict(getattr(known_configs, name))
    if component == "vae":  # as the checkpoint's vae/config.json has it: a mean and a std per latent channel
        config.update(latents_mean=[0.0] * config["z_dim"], latents_std=[1.0] * config["z_dim"])
    assert config_problems(component, config) == []


def test_a_config_nested_too_deep_is_refused(tmp_path, demo_t2v_path, capsys):
    folder = tmp_path / "deep"
    shutil.copytree(demo_t2v_path, folder)
    (folder / "model_index.json").write_text('{"_class_name": ' + "[" * 100000 + "]" * 100000 + "}")
    err = refused(["plan", "--model", str(folder), "--vram", "8", "--ram", "32"], capsys)
    assert "model_index.json: cannot read it as JSON" in err


@FUZZ
@given(config=st.dictionaries(st.sampled_from(["num_layers", "num_attention_heads", "ffn_dim", "in_channels", "patch_size", "foo"]),
                              st.one_of(st.integers(-(2**70), 2**70), st.lists(st.integers(-5, 100), max_size=20), st.text(max_size=3), st.none()), max_size=6))
def test_config_limits_name_exactly_the_values_out_of_range(config):
    from planner.config_limits import LIMITS, MAX_LIST, config_problems

    problems = config_problems("transformer", config)
    for key, value in config.items():
        lo_hi = LIMITS["transformer"].get(key)
        items = value if isinstance(value, list) else [value]
        bad = (isinstance(value, list) and len(value) > MAX_LIST) or (
            lo_hi is not None and value is not None
            and any(isinstance(v, bool) or not isinstance(v, int) or not lo_hi[0] <= v <= lo_hi[1] for v in items))
        assert bad == any(p.startswith(f"{key} ") for p in problems), (key, value, problems)


# ---------------------------------------------------------------------------------------------- profiles


def test_a_small_profile_nested_deep_is_a_clear_error(tmp_path, capsys, no_loading):
    deep = tmp_path / "deep.toml"
    deep.write_text('schema_version = 1\nname = "x"\nmodel = "tiny-random"\nx = ' + "[" * 500 + "]" * 500 + "\n")
    assert deep.stat().st_size < 1100
    err = refused([*BASE, "--profile", str(deep), "--out", str(tmp_path / "x.mp4")], capsys)
    assert "line 4: nested more than 16 levels deep" in err


@pytest.mark.parametrize("key, digits", [("steps", 400), ("guidance", 400), ("steps", 5000)])
def test_a_profile_number_of_hundreds_of_digits_is_a_clear_error(key, digits, tmp_path, capsys, no_loading):
    """TOML integers are unbounded: one too large for a float (or for Python's 4300-digit conversion limit) was an
    OverflowError / ValueError traceback instead of a profile error."""
    big = tmp_path / "big.toml"
    big.write_text(f'schema_version = 1\nname = "x"\nmodel = "tiny-random"\n[job]\n{key} = {"9" * digits}\n')
    err = refused([*BASE, "--profile", str(big), "--out", str(tmp_path / "x.mp4")], capsys)
    assert "profile" in err and len(err) < 1000, err


nested = st.recursive(st.one_of(st.integers(0, 9), st.text(alphabet='ab[]{}#"\'', max_size=4)),
                      lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from("ab"), inner, max_size=2), max_leaves=40)


@FUZZ
@example(depth=16, inline=True, junk="").via("the limit itself: inline tables as deep as the scan allows")
@example(depth=17, inline=False, junk="").via("one past the limit")
@given(depth=st.integers(0, 3000), inline=st.booleans(), junk=st.text(alphabet='[]{}"\'#=\\\n ab', max_size=60))
def test_profile_nesting_never_exhausts_the_stack(depth, inline, junk):
    """Any nesting, with brackets inside strings and comments around it: a profile or a ProfileError."""
    from lowvram.profiles.toml_io import MAX_DEPTH, loads
    from lowvram.profiles.validate import ProfileError

    value = ("{a=" * depth + "1" + "}" * depth) if inline else ("[" * depth + "]" * depth)
    text = f'schema_version = 1\nname = "x"\nmodel = "tiny-random"\n# {junk!r}\ndescription = {json.dumps(junk)}\nx = {value}\n'
    with pytest.raises(ProfileError) as info:  # `x` is no profile key: even a shallow value is refused, but clearly
        loads(text)
    assert ("nested more than" in str(info.value)) == (depth > MAX_DEPTH), str(info.value)


# ---------------------------------------------------------------------------------------------- resume files


@pytest.fixture(scope="module")
def resume_file(tmp_path_factory):
    _, header, tensors = cancelled_resume_file(tmp_path_factory.mktemp("resume"))
    return header, tensors


def rewrite(folder: Path, header: dict, tensors: dict) -> str:
    from safetensors.torch import save_file

    path = folder / "m.latents.safetensors"
    path.unlink(missing_ok=True)
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(path), metadata={FORMAT: json.dumps(header)})
    return str(path)


def _set(header: dict, attr: str, node: dict) -> dict:
    sched = dict(header["scheduler"], attrs=dict(header["scheduler"]["attrs"], **{attr: node}))
    return dict(header, scheduler=sched)


def _with(tensors: dict, **changes) -> dict:
    return dict(tensors, **{k.replace("__", "."): v for k, v in changes.items()})


def _zeros(*shape):
    import torch

    return torch.zeros(*shape)


# name -> (header, tensors) -> (header, tensors): one thing wrong with a real resume file of the t2v demo
MUTATIONS = {
    "17 latent channels": lambda h, t: (h, _with(t, latents=_zeros(1, 17, 2, 8, 8))),
    "prompt 33 wide": lambda h, t: (h, _with(t, cond__prompt_embeds=_zeros(1, 512, 33), cond__negative_embeds=_zeros(1, 512, 33))),
    "image embeddings for t2v": lambda h, t: (h, _with(t, cond__image_embeds=_zeros(1, 257, 32))),
    "a condition for t2v": lambda h, t: (h, _with(t, cond__condition=_zeros(1, 20, 2, 8, 8))),
    "NaN latents": lambda h, t: (h, _with(t, latents=_zeros(1, 16, 2, 8, 8) / 0)),
    "order counter": lambda h, t: (_set(h, "lower_order_nums", {"value": 2}), t),
    "step index": lambda h, t: (_set(h, "_step_index", {"value": 2}), t),
    "step index far out": lambda h, t: (_set(h, "_step_index", {"value": 10**9}), t),
    "shifted sigmas": lambda h, t: (h, _with(t, sched__sigmas=t["sched.sigmas"] * 0.5)),
    "timesteps of another schedule": lambda h, t: (h, _with(t, sched__timesteps=t["sched.timesteps"] + 1)),
    "three model outputs": lambda h, t: (_set(h, "model_outputs", {"list": h["scheduler"]["attrs"]["model_outputs"]["list"] + [{"value": None}]}), t),
    "a sample of the wrong shape": lambda h, t: (h, _with(t, sched__last_sample=_zeros(1, 16, 2, 4, 4))),
    "a billion steps": lambda h, t: (dict(h, job=dict(h["job"], steps=10**9)), t),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_resume_tensors_are_checked_against_the_model_and_the_job(name, resume_file, tmp_path, demo_t2v_path):
    import time

    header, tensors = resume_file
    load_resume_file(rewrite(tmp_path, header, tensors))  # the unchanged file loads
    bad_header, bad_tensors = MUTATIONS[name](header, tensors)
    started = time.monotonic()
    with pytest.raises(UserError, match="damaged or unsupported contents|not valid here"):
        load_resume_file(rewrite(tmp_path, bad_header, bad_tensors))
    assert time.monotonic() - started < 10  # nothing sized by the file's numbers was allocated


@FUZZ
@given(data=st.data())
def test_any_changed_sampler_value_is_refused(resume_file, tmp_path_factory, data):
    """Property: the sampler's non-tensor values are fixed by the model and the step; any other value is refused."""
    header, tensors = resume_file
    attrs = header["scheduler"]["attrs"]
    scalars = sorted(k for k, v in attrs.items() if "value" in v)
    attr = data.draw(st.sampled_from(scalars))
    old = attrs[attr]["value"]
    new = data.draw(st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=4)).filter(
        lambda v: not (type(v) is type(old) and v == old)))
    with pytest.raises(UserError):
        load_resume_file(rewrite(tmp_path_factory.mktemp("s"), _set(header, attr, {"value": new}), tensors))


@pytest.mark.parametrize("model, with_image", [("tiny-random-i2v", True), ("tiny-random-a14b", False), ("tiny-random-ti2v", True), ("tiny-random-ti2v", False)])
def test_real_resume_files_of_every_demo_family_pass_the_checks(model, with_image, tmp_path, image_file):
    """No false refusals: a run of each model family cancelled after a step gives a file that loads and finishes."""
    from lowvram.errors import CancelledError
    from lowvram.sampling.runner import generate
    from lowvram.telemetry import RunCancelled, StepFinished
    from plans import plan_with

    job = Job(prompt="a cat", model=model, width=64, height=64, frames=5, steps=3, seed=1, out=str(tmp_path / "r.mp4"),
              image=str(image_file) if with_image else None)
    cancel, events = threading.Event(), []
    with pytest.raises(CancelledError):
        generate(job, plan_with("cpu"), on_event=lambda e: events.append(e) or (isinstance(e, StepFinished) and cancel.set()), cancel=cancel)
    (cancelled,) = [e for e in events if isinstance(e, RunCancelled)]
    state = load_resume_file(cancelled.latents_path)
    assert state.checkpoint.step == 1
    assert generate(state.job, state.plan, resume=state).video_path.is_file()


@pytest.mark.parametrize("model", ["tiny-random-i2v", "tiny-random-ti2v"])
def test_a_resume_file_naming_a_demo_model_not_built_yet_is_still_checked(model, resume_file, tmp_path, monkeypatch):
    """The demo model a file names is built on first use: its tensors are checked against it before loading all
    the same (they were not, and the run crashed after loading with a conv3d traceback)."""
    header, tensors = resume_file
    monkeypatch.setenv("LOWVRAM_CACHE_DIR", str(tmp_path / "fresh-cache"))
    with pytest.raises(UserError, match="damaged or unsupported contents"):
        load_resume_file(rewrite(tmp_path, dict(header, job=dict(header["job"], model=model)), tensors))


@pytest.mark.parametrize("option", [["--model", "tiny-random-ti2v"], ["--seed", "3"], ["--lora", "x.safetensors"], ["--guidance", "9"],
                                    ["--negative-prompt", "blur"], ["--shift", "7"], ["--fps", "8"], ["--prompt-file", "p.txt"]])
def test_resume_refuses_options_it_would_ignore(option, resume_file, tmp_path, capsys, no_loading):
    """--resume continues the saved job: an option that would change it is refused by name, not silently dropped
    (a resumed run with --model/--seed/--lora/--guidance given ran the saved job and said nothing)."""
    header, tensors = resume_file
    path = rewrite(tmp_path, header, tensors)
    message = refused(["generate", "--resume", path, *option, "--out", str(tmp_path / "o.mp4")], capsys)
    assert option[0] in message and "cannot change it" in message


def test_a_resume_file_whose_output_folder_is_gone_says_to_add_out(resume_file, tmp_path, capsys, no_loading):
    """The saved job's folder was removed: the file is sound, so the message names --out, not "give a file that
    lowvram wrote" (which it is); with --out the same file is accepted."""
    header, tensors = resume_file
    path = rewrite(tmp_path, dict(header, job=dict(header["job"], out=str(tmp_path / "gone" / "v.mp4"))), tensors)
    message = refused(["generate", "--resume", path], capsys)
    assert "add --out" in message and "Give a .latents.safetensors file" not in message, message
    assert load_resume_file(path, out=str(tmp_path / "v.mp4")).job.out == str(tmp_path / "v.mp4")


@pytest.mark.parametrize("model, problem", [("wan2.1-t2v-14b", "text width is 4096"), ("Wan-AI/Wan2.2-TI2V-5B-Diffusers", "do not fit")])
def test_a_resume_file_for_a_known_model_not_downloaded_is_checked_before_the_download(model, problem, resume_file, tmp_path, monkeypatch):
    """A resume file naming a known model whose weights are not here: its tensors are checked against the configs
    lowvram ships for it, before anything downloads (they were checked only after loading, GBs later)."""
    header, tensors = resume_file
    for var in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.setenv(var, str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=f"damaged or unsupported contents.*{problem}"):
        load_resume_file(rewrite(tmp_path, dict(header, job=dict(header["job"], model=model)), tensors))
