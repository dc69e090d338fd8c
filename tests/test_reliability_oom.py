"""OOM fallback with resume, on the CPU demo model: real torch.OutOfMemoryError instances injected by
lowvram.sampling.faults at encode, denoise step k and decode; each run must finish on a leaner plan with the
same latents as an uninterrupted run of that final plan."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from lowvram.errors import UserError
from lowvram.sampling.faults import FaultPlan, OomAt, inject_oom
from lowvram.sampling.recovery import OutOfMemoryExhausted
from lowvram.sampling.resume import load_resume_file
from lowvram.sampling.runner import generate
from lowvram.telemetry import PlanSwitched, RunFailed
from planner.fallback import ladder, leaner_plan
from planner.plan import Plan
from plans import TP, plan_with


@pytest.fixture
def plan(cpu_plan):
    return cpu_plan


@pytest.fixture(scope="module")
def loaded():
    """One demo pipeline for the module (the TUI's case: loaded once, many runs)."""
    from lowvram.models.names import resolve_model
    from lowvram.sampling.runner import load_model

    return load_model(resolve_model("tiny-random"), plan_with("cpu"))


@pytest.fixture
def run(loaded):
    """generate() on the shared pipeline; the runner re-places it when the plan differs (a fallback leaves it leaner)."""

    def go(job, plan, **kw):
        return generate(job, plan, loaded=loaded, **kw)

    return go


@pytest.fixture(scope="module")
def clean_latents(loaded, tmp_path_factory):
    """Final latents of an uninterrupted run, computed once per (job, plan) for the module."""
    cache = {}

    def get(job, plan):
        key = (job.with_(out=None), plan)
        if key not in cache:
            out = tmp_path_factory.mktemp("clean") / "clean.mp4"
            cache[key] = generate(job.with_(out=str(out)), plan, loaded=loaded).latents
        return cache[key]

    return get


def switches(result):
    return [e for e in result.events if isinstance(e, PlanSwitched)]


# ---------------------------------------------------------------- the ladder (pure)


def test_decode_ladder_leans_the_vae_first():
    p = plan_with("cuda")
    vae = [q.component("vae") for q in ladder(p, "decode")[:3]]
    assert [(c.precision, c.placement) for c in vae] == [("fp32", "gpu_tiled"), ("bf16", "gpu_tiled"), ("fp32", "cpu")]
    assert leaner_plan(p, "decode").source == "fallback"
    assert "VAE gpu -> gpu_tiled" in leaner_plan(p, "decode").reasons[-1]


def test_denoise_ladder_for_a_40_block_transformer():
    steps = ladder(plan_with("cuda"), "denoise", num_blocks=40)
    t = [q.component("transformer") for q in steps[:9]]
    kinds = [(c.placement, c.resident_blocks, c.precision) for c in t]
    assert kinds == [
        ("partial", 20, "bf16"),
        ("partial", 10, "bf16"),
        ("partial", 5, "bf16"),
        ("partial", 2, "bf16"),
        ("partial", 1, "bf16"),
        ("block_offload", 0, "bf16"),
        ("leaf_offload", 0, "bf16"),
        ("leaf_offload", 0, "int8"),
        ("leaf_offload", 0, "int8"),  # then the text encoder leans
    ]
    assert steps[8].component("text_encoder").placement == "offload"
    last = steps[-1]
    assert (last.component("text_encoder").placement, last.component("vae").placement,
            last.component("transformer").precision) == ("cpu", "cpu", "int8")
    assert leaner_plan(last, "denoise", 40) is None


def test_ladder_drops_stale_predictions_and_keeps_reasons():
    from planner.plan import StagePeak

    p = dataclasses.replace(plan_with("cuda"), predicted=(StagePeak("denoise", 10, 10),), reasons=("chosen",))
    q = leaner_plan(p, "encode")
    assert q.predicted == () and q.reasons[0] == "chosen" and q.component("text_encoder").placement == "offload"


def test_fault_plan_parsing():
    assert FaultPlan.parse("denoise:3, decode").ooms == (OomAt("denoise", 3), OomAt("decode"))
    for bad in ("paint", "denoise:x", "decode:2", "denoise:-1"):
        with pytest.raises(UserError):
            FaultPlan.parse(bad)


# ---------------------------------------------------------------- injected OOMs, end to end


def test_oom_at_encode_switches_text_encoder_and_matches(run, clean_latents, small_job, plan, tmp_path):
    job = small_job(steps=3)
    hit = run(job, plan, faults=FaultPlan.parse("encode"))
    (sw,) = switches(hit)
    assert sw.stage == "encode" and "text encoder gpu -> offload" in sw.reason
    assert hit.plan.component("text_encoder").placement == "offload" and hit.video_path.is_file()
    assert torch.equal(hit.latents, clean_latents(job, hit.plan))


@pytest.mark.parametrize("k", [2])
def test_oom_at_denoise_step_k_resumes_with_history(run, clean_latents, small_job, plan, tmp_path, k):
    """UniPC is multistep: the retry must continue from step k with the kept scheduler history."""
    job = small_job(steps=4)
    hit = run(job, plan, faults=FaultPlan.parse(f"denoise:{k}"))
    (sw,) = switches(hit)
    assert sw.stage == "denoise" and hit.plan.component("transformer").placement != "resident"
    steps_run = [e.step for e in hit.events if type(e).__name__ == "StepFinished"]
    assert steps_run == [0, 1, 2, 3]  # step k ran once, after the switch; no step ran twice
    assert torch.equal(hit.latents, clean_latents(job, hit.plan))


def test_resuming_without_scheduler_history_would_differ(loaded, small_job, plan):
    """The control for the test above: dropping UniPC's history at step 2 changes the result."""
    from lowvram.sampling.resume import make_checkpoint
    from lowvram.sampling.runner import Clock, denoise, encode

    job = small_job(steps=4)
    cond = encode(loaded, job, plan)
    kept = []
    full, _ = denoise(loaded, job, plan, cond, lambda e: None, Clock(), on_checkpoint=lambda s, x, sch: kept.append(make_checkpoint(s, x, sch)))
    with_history, _ = denoise(loaded, job, plan, cond, lambda e: None, Clock(), resume=kept[1])
    loaded.pipe.scheduler.set_timesteps(job.steps)
    fresh = make_checkpoint(2, kept[1].latents, loaded.pipe.scheduler)  # same latents, history forgotten
    fresh.scheduler["attrs"]["_step_index"] = {"value": 2}
    fresh.scheduler["attrs"]["_begin_index"] = {"value": 0}
    without, _ = denoise(loaded, job, plan, cond, lambda e: None, Clock(), resume=fresh)
    assert torch.equal(full, with_history)
    assert not torch.allclose(full, without, atol=1e-6)


def test_oom_at_decode_retries_tiled(run, clean_latents, small_job, plan, tmp_path):
    job = small_job()
    hit = run(job, plan, faults=FaultPlan.parse("decode"))
    (sw,) = switches(hit)
    assert sw.stage == "decode" and hit.plan.component("vae").placement == "gpu_tiled" and hit.video_path.is_file()
    recorded = Plan.from_dict(json.loads(hit.sidecar_path.read_text())["plan"])  # the sidecar has the plan used
    assert recorded.component("vae").placement == "gpu_tiled"
    assert torch.equal(hit.latents, clean_latents(job, hit.plan))


def test_second_oom_at_decode_decodes_in_bf16_tiled(run, clean_latents, small_job, plan, loaded):
    """The rung before the CPU: the VAE cast to bf16, tiled; the frames stay close to the fp32 decode's."""
    from lowvram.sampling.runner import decode

    job = small_job()
    hit = run(job, plan, faults=FaultPlan.parse("decode,decode"))
    assert [s.stage for s in switches(hit)] == ["decode", "decode"]
    vae = hit.plan.component("vae")
    assert (vae.precision, vae.placement) == ("bf16", "gpu_tiled") and hit.video_path.is_file()
    assert loaded.pipe.vae.dtype == torch.bfloat16
    assert torch.equal(hit.latents, clean_latents(job, hit.plan))
    sidecar = json.loads(hit.sidecar_path.read_text())
    assert Plan.from_dict(sidecar["plan"]).component("vae").precision == "bf16"
    bf16_frames = decode(loaded, hit.plan, hit.latents)
    loaded.pipe.vae.to(torch.float32)
    fp32_frames = decode(loaded, hit.plan, hit.latents)
    assert bf16_frames.dtype == fp32_frames.dtype and abs(bf16_frames - fp32_frames).max() < 0.05


def test_context_manager_installs_faults_and_env_var_is_read(run, small_job, plan, tmp_path, monkeypatch):
    from lowvram.sampling.faults import resolve

    with inject_oom("encode"):
        a = run(small_job(out=str(tmp_path / "a.mp4")), plan)
    assert [s.stage for s in switches(a)] == ["encode"]
    monkeypatch.setenv("LOWVRAM_INJECT_OOM", "denoise:3")  # the CLI test below runs one through the CLI
    assert resolve() == FaultPlan((OomAt("denoise", 3),))
    assert resolve(FaultPlan()) == FaultPlan()  # an explicit argument wins


# ---------------------------------------------------------------- leanest plan fails: keep latents, resume later

LEANEST = plan_with("cpu", precision="int8", transformer=TP("leaf_offload"), text_encoder="cpu", vae="cpu")


@pytest.mark.parametrize("where, stage, step", [("denoise:2", "denoise", 2), ("decode", "decode", 4)])
def test_leanest_plan_oom_keeps_latents_and_resume_finishes(clean_latents, small_job, tmp_path, where, stage, step):
    """Fresh pipelines for the failing and the resumed run, as after a restart of lowvram."""
    job = small_job(steps=4)
    events = []
    with pytest.raises(OutOfMemoryExhausted) as info:
        generate(job, LEANEST, on_event=events.append, faults=FaultPlan.parse(where))
    err = info.value
    assert err.exit_code == 3 and err.latents_path is not None and "--resume" in str(err)
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*partial*"))
    (failed,) = [e for e in events if isinstance(e, RunFailed)]
    assert failed.stage == stage and failed.latents_path == str(err.latents_path)

    state = load_resume_file(str(err.latents_path))
    assert state.checkpoint.step == step and state.stage == ("decode" if step == 4 else "denoise")
    assert state.plan == LEANEST and state.job == job
    resumed = generate(state.job.with_(out=str(tmp_path / "resumed.mp4")), state.plan, resume=state)
    assert resumed.video_path.is_file()
    assert torch.equal(resumed.latents, clean_latents(job, LEANEST))


# ---------------------------------------------------------------- the retry loop itself, and the CLI


def test_recovery_treats_allocator_runtime_errors_as_oom_and_nothing_else(plan):
    from lowvram.sampling.recovery import Recovery, is_oom

    assert is_oom(torch.OutOfMemoryError("x")) and is_oom(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not is_oom(RuntimeError("mat2 is on cpu")) and not is_oom(ValueError("out of memory"))
    events, calls = [], []

    def attempt(p):
        calls.append(p)
        if len(calls) == 1:
            raise RuntimeError("CUDNN_STATUS_ALLOC_FAILED")
        return "done"

    rec = Recovery(plan, events.append, lambda: 0.0)
    assert rec.run("decode", attempt) == "done"
    assert [c.component("vae").placement for c in calls] == ["gpu", "gpu_tiled"] and len(events) == 1
    with pytest.raises(RuntimeError, match="mat2"):
        rec.run("decode", lambda p: (_ for _ in ()).throw(RuntimeError("mat2 is on cpu")))


def test_cli_prints_the_switch_and_exits_3_with_a_resume_hint(demo_t2v_path, tmp_path, monkeypatch, capsys):
    from lowvram.cli import main

    args = ["generate", "a dog", "--width", "64", "--height", "64", "--frames", "5", "--steps", "2"]
    monkeypatch.setenv("LOWVRAM_INJECT_OOM", "denoise:1")
    assert main([*args, "--out", str(tmp_path / "a.mp4")]) == 0
    err = capsys.readouterr().err
    assert "plan switched during denoise" in err and (tmp_path / "a.mp4").is_file()

    monkeypatch.setenv("LOWVRAM_INJECT_OOM", ",".join(["decode"] * 40))  # more OOMs than rungs on the ladder
    assert main([*args, "--out", str(tmp_path / "b.mp4")]) == 3
    err = capsys.readouterr().err
    kept = tmp_path / "b.latents.safetensors"
    assert "even with the leanest plan" in err and f"lowvram generate --resume {kept}" in err and "Traceback" not in err
    assert kept.is_file() and not (tmp_path / "b.mp4").exists()


def test_a_sampler_state_that_cannot_be_copied_restarts_denoising_instead(plan):
    """Checkpointing must never break a run: without a checkpoint the retry starts denoising over."""
    import numpy as np

    from lowvram.sampling.recovery import Recovery
    from lowvram.telemetry import LogMessage

    class Odd:
        def __init__(self):
            self.table = np.zeros(3)  # numpy state: not supported by the checkpoint format

    events = []
    rec = Recovery(plan, events.append, lambda: 0.0)
    rec.keep(1, torch.zeros(2), Odd())
    assert rec.checkpoint is None and any(isinstance(e, LogMessage) and "no resume checkpoints" in e.message for e in events)


def test_latents_that_cannot_be_written_are_reported_not_raised(plan, small_job, tmp_path, monkeypatch):
    """On cancel or OOM the resume file is written inside the error path: a full disk must not replace
    the run's own error with a traceback (safetensors raises SafetensorError, not OSError)."""
    import safetensors.torch
    from safetensors import SafetensorError

    from lowvram.sampling.recovery import Recovery
    from lowvram.telemetry import LogMessage

    def full_disk(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    class Sampler:
        def __init__(self):
            self.step_index = 1

    events = []
    rec = Recovery(plan, events.append, lambda: 0.0)
    rec.cond = {"prompt_embeds": torch.zeros(1, 3, 4)}
    rec.keep(1, torch.zeros(1, 4, 2, 8, 8), Sampler())
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    assert rec.save(small_job(), tmp_path / "a.mp4", "cancelled") is None
    assert any(isinstance(e, LogMessage) and e.level == "error" and "No space left" in e.message for e in events)
    assert list(tmp_path.iterdir()) == []
