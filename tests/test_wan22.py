"""Wan2.2 end to end on the demo models: two experts planned per phase and switched at the boundary, the idle
expert waiting where the plan says, TI2V's sizes, and the bad inputs refused before anything loads."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from lowvram.cli import main
from lowvram.job import Job
from lowvram.models.specs import spec_for_model
from planner.choose import NoPlanFits, make_plan
from planner.fallback import ladder
from planner.plan import config_key
from planner.probe import GIB, synthetic_probe
from planner.schedule import expert_steps, flow_timesteps
from planner.spec import known_spec
from plans import TP, plan_with


def a14b_job(**changes) -> Job:
    base = dict(prompt="a cat", model="wan2.2-t2v-a14b", width=832, height=480, frames=81, steps=40, guidance=4.0,
                guidance_2=3.0)
    return Job(**{**base, **changes})


# ------------------------------------------------------------------------------------ the planner


@pytest.mark.parametrize("vram, ram", [(24, 64), (24, 32), (16, 32), (12, 32)])
def test_a14b_plans_per_expert_phase_within_budgets(vram, ram):
    probe = synthetic_probe(vram, ram, gpu_name="NVIDIA GeForce RTX 4090", compute_capability=(8, 9))
    result = make_plan(probe, known_spec("wan2.2-t2v-a14b"), a14b_job())
    plan = result.plan
    assert [c.name for c in plan.denoisers] == ["transformer", "transformer_2"]
    phases = [s for s in plan.predicted if s.stage == "denoise"]
    assert [s.phase for s in phases] == ["high", "low"]
    budget_vram, budget_ram = (vram - 1.3) * GIB, (ram - 2) * GIB
    assert plan.peak_vram_bytes <= budget_vram and plan.peak_ram_bytes <= budget_ram
    # the plan explains where the idle expert waits, and never assumes both pinned when that does not fit
    text = "\n".join(result.explanation)
    assert "idle expert waits" in text and "high-noise for" in text
    twin_key = config_key(dataclasses.replace(plan, components=tuple(
        dataclasses.replace(c, idle="pinned") if c.role == "denoiser" else c for c in plan.components)))
    pinned_twin = [c for c in result.candidates if config_key(c.plan) == twin_key]
    if plan.denoisers[0].idle == "mmap" and pinned_twin and not pinned_twin[0].fits:
        assert "over RAM" in pinned_twin[0].rejected_reason


def test_steps_split_at_the_boundary_as_the_scheduler_does():
    from diffusers import UniPCMultistepScheduler

    for steps, shift in ((40, 12.0), (8, 3.0), (50, 5.0)):
        s = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
        s.set_timesteps(steps)
        assert flow_timesteps(steps, shift) == [int(t) for t in s.timesteps]
        high, low = expert_steps(steps, shift, 0.875)
        assert high == sum(1 for t in s.timesteps if t >= 875) and high + low == steps


def test_phase_peaks_hold_one_expert_and_the_switch_is_counted():
    spec = known_spec("wan2.2-t2v-a14b")
    probe = synthetic_probe(24, 64, gpu_name="NVIDIA GeForce RTX 4090", compute_capability=(8, 9))
    plan = make_plan(probe, spec, a14b_job()).plan
    one = make_plan(probe, known_spec("wan2.1-t2v-14b"), a14b_job(model="wan2.1-t2v-14b", guidance_2=None)).plan
    high = next(s for s in plan.predicted if s.phase == "high")
    single = next(s for s in one.predicted if s.stage == "denoise")
    # at the boundary the active expert leaves first: a phase holds one expert, like the one-transformer model
    assert high.vram_bytes == pytest.approx(single.vram_bytes, rel=0.02)


def test_fallback_leans_both_experts_together():
    plan = plan_with("cuda", components=("text_encoder", "transformer", "transformer_2", "vae"))
    first = ladder(plan, "denoise", num_blocks=40)[0]
    a, b = first.denoisers
    assert (a.placement, a.resident_blocks) == (b.placement, b.resident_blocks) == ("partial", 20)


def test_ram_short_machine_refuses_with_what_would_work():
    probe = synthetic_probe(6, 8, gpu_name="NVIDIA GeForce RTX 3060", compute_capability=(8, 6))
    with pytest.raises(NoPlanFits, match="It would work with"):
        make_plan(probe, known_spec("wan2.2-t2v-a14b"), a14b_job())


def test_known_and_folder_specs_agree_on_the_wan22_shape(demo_t2v_path):
    a14b = known_spec("wan2.2-t2v-a14b")
    ti2v = known_spec("wan2.2-ti2v-5b")
    assert a14b.two_experts and a14b.boundary_ratio == 0.875 and a14b.task == "t2v"
    assert known_spec("wan2.2-i2v-a14b").task == "i2v" and known_spec("wan2.2-i2v-a14b").image_encoder is None
    assert ti2v.task == "ti2v" and ti2v.expand_timesteps and ti2v.spatial_multiple == 32
    assert ti2v.tokens(1280, 704, 121) == 31 * 22 * 40
    assert 4.9e9 < ti2v.transformer.params < 5.1e9
    demo = spec_for_model("tiny-random-a14b")
    assert demo.family == "wan2.2-t2v-a14b" and [c.name for c in demo.denoisers] == ["transformer", "transformer_2"]


def test_job_defaults_come_from_the_model_card():
    from lowvram.models.defaults import job_defaults

    a14b = job_defaults("wan2.2-t2v-a14b")
    assert (a14b["steps"], a14b["guidance"], a14b["guidance_2"], a14b["fps"]) == (40, 4.0, 3.0, 16)
    ti2v = job_defaults("wan2.2-ti2v-5b")
    assert (ti2v["width"], ti2v["height"], ti2v["frames"], ti2v["fps"]) == (1280, 704, 121, 24)
    assert job_defaults("tiny-random-ti2v")["height"] % 32 == 0
    # the two Wan2.1 I2V checkpoints share their configs: the 720P one's size comes from its name
    assert (job_defaults("wan2.1-i2v-14b-720p")["width"], job_defaults("wan2.1-i2v-14b-720p")["height"]) == (1280, 720)
    assert (job_defaults("Wan-AI/Wan2.1-I2V-14B-720P-Diffusers")["width"],) == (1280,)
    assert (job_defaults("wan2.1-i2v-14b-480p")["width"], job_defaults("wan2.1-i2v-14b-480p")["height"]) == (832, 480)


# ------------------------------------------------------------------------------------ the runtime


def test_idle_expert_in_its_file_is_hooked_only_for_its_phase(small_job, cpu_plan):
    """Experts streamed with idle="mmap": hooks attached at the phase start and removed at its end; the output
    equals the resident run's."""
    from lowvram import placement
    from lowvram.models.names import resolve_model
    from lowvram.placement.quanto_offload import group_hooks
    from lowvram.sampling.runner import generate, load_model

    job = small_job(model="tiny-random-a14b", steps=6, guidance=4.0, guidance_2=2.0)
    names = ("text_encoder", "transformer", "transformer_2", "vae")
    streamed = plan_with("cpu", transformer=TP("block_offload"), components=names)
    streamed = streamed.__class__(**{**streamed.__dict__, "components": tuple(
        c.__class__(**{**c.__dict__, "idle": "mmap"}) if c.role == "denoiser" else c for c in streamed.components)})
    loaded = load_model(resolve_model("tiny-random-a14b"), streamed)
    st = placement.state(loaded.pipe)
    assert st.deferred == {"transformer", "transformer_2"} and not group_hooks(loaded.pipe.transformer)
    seen = []
    placement_enter = placement.enter_stage

    def spy(pipe, plan, stage, phase=None, **kw):
        placement_enter(pipe, plan, stage, phase, **kw)
        if stage == "denoise":
            seen.append((phase, bool(group_hooks(pipe.transformer)), bool(group_hooks(pipe.transformer_2))))

    import lowvram.sampling.runner as runner

    runner.placement.enter_stage, saved = spy, runner.placement.enter_stage
    try:
        ours = generate(job, plan=streamed, loaded=loaded).latents
    finally:
        runner.placement.enter_stage = saved
    assert seen == [("transformer", True, False), ("transformer_2", False, True)]
    assert not group_hooks(loaded.pipe.transformer) and not group_hooks(loaded.pipe.transformer_2)
    resident = generate(job.with_(out=job.out.replace("out.mp4", "res.mp4")), plan=cpu_plan).latents
    assert torch.allclose(ours, resident, atol=1e-6)


def test_sidecar_and_console_tell_the_expert_story(tmp_path, capsys):
    out = tmp_path / "v.mp4"
    assert main(["generate", "a fox", "--model", "tiny-random-a14b", "--steps", "6", "--width", "64", "--height", "64",
                 "--frames", "5", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "high-noise expert runs from step 1" in err and "low-noise expert takes over at step" in err
    side = json.loads(out.with_suffix(".json").read_text())
    experts = side["experts"]
    assert experts["boundary_ratio"] == 0.875 and 0 < experts["switch_step"] < 6
    assert set(experts["phases"]) == {"high", "low"}
    assert all(p["measured"]["seconds"] > 0 and p["predicted"]["phase"] in ("high", "low") for p in experts["phases"].values())
    assert set(side["measured"]["stages"]) >= {"denoise", "denoise:high", "denoise:low"}


def test_ti2v_runs_text_only_and_with_a_first_frame(tmp_path, image_file):
    import imageio.v3 as iio

    for image in (None, image_file):
        out = tmp_path / f"ti2v-{bool(image)}.mp4"
        args = ["generate", "a fox", "--model", "tiny-random-ti2v", "--steps", "3", "--width", "64", "--height", "64",
                "--frames", "5", "--out", str(out), "--quiet"]
        assert main(args + (["--image", str(image)] if image else [])) == 0
        assert iio.imread(out).shape == (5, 64, 64, 3)


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("args, words", [
    (["--model", "tiny-random-ti2v", "--width", "80"], ["multiple of 32", "use 64 or 96"]),
    (["--model", "tiny-random-a14b", "--image", "IMAGE"], ["text-to-video model", "drop --image"]),
    (["--model", "tiny-random-a14b-i2v"], ["image-to-video model", "--image PATH"]),
    (["--model", "tiny-random", "--guidance-2", "2"], ["--guidance-2", "one transformer"]),
])
def test_bad_input_exits_2_before_loading(args, words, image_file, capsys, monkeypatch):
    import lowvram.models.loading as loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    args = [str(image_file) if a == "IMAGE" else a for a in args]
    assert main(["generate", "a fox", "--frames", "5", "--steps", "2", *args]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


def test_incomplete_two_expert_folder_and_bad_boundary_exit_2(tmp_path, capsys):
    from lowvram.models.demo import ensure_demo

    folder = tmp_path / "a14b"
    shutil.copytree(ensure_demo("tiny-random-a14b"), folder)
    shutil.rmtree(folder / "transformer_2")
    assert main(["plan", "--model", str(folder)]) == 2
    assert "transformer_2/ is missing" in capsys.readouterr().err
    shutil.copytree(ensure_demo("tiny-random-a14b") / "transformer_2", folder / "transformer_2")
    for f in (folder / "transformer_2").glob("*.safetensors"):
        f.unlink()
    assert main(["generate", "a fox", "--model", str(folder), "--frames", "5", "--steps", "2", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "no weights (.safetensors)" in capsys.readouterr().err
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(dict(index, boundary_ratio=1.5)))
    assert main(["plan", "--model", str(folder)]) == 2
    assert "boundary_ratio 1.5 must be a number between 0 and 1" in capsys.readouterr().err
