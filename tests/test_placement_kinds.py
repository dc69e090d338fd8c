"""Every placement kind runs on the demo model (CPU plans) and offloading does not change the output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from planner.plan import Plan, fit_to
from plans import TP, plan_with


def cpu_plan(**changes) -> Plan:
    return plan_with("cpu", **changes)


OFFLOAD_ONLY = {
    "partial": cpu_plan(transformer=TP(kind="partial", resident_blocks=1)),
    "block_offload": cpu_plan(transformer=TP(kind="block_offload", blocks_per_group=1)),
    "block_offload_x2": cpu_plan(transformer=TP(kind="block_offload", blocks_per_group=2, use_stream=False)),
    "leaf_offload": cpu_plan(transformer=TP(kind="leaf_offload")),
    "disk_offload": cpu_plan(transformer=TP(kind="disk_offload")),
    "text_encoder_offload": cpu_plan(text_encoder="offload"),
    "text_encoder_cpu": cpu_plan(text_encoder="cpu"),
    "vae_tiled": cpu_plan(vae="gpu_tiled"),
    "vae_cpu": cpu_plan(vae="cpu"),
    "all_streamed": cpu_plan(transformer=TP(kind="leaf_offload"), text_encoder="offload", vae="cpu"),
}


def run_stages(job, plan):
    """The runner's stages as generate() calls them; returns (latents, frames, device state)."""
    from lowvram import placement
    from lowvram.models.names import resolve_model
    from lowvram.sampling import runner
    from lowvram.telemetry import ignore

    loaded = runner.load_model(resolve_model(job.model), plan)
    try:
        placement.enter_stage(loaded.pipe, plan, "encode", image=job.image is not None)
        cond = runner.encode(loaded, job, plan)
        placement.enter_stage(loaded.pipe, plan, "denoise")
        latents, _ = runner.denoise(loaded, job, plan, cond, ignore, runner.Clock())
        placement.enter_stage(loaded.pipe, plan, "decode")
        frames = runner.decode(loaded, plan, latents)
        return latents, frames, placement.describe_device_state(loaded.pipe)
    finally:
        placement.leave_all(loaded.pipe)


@pytest.fixture(scope="module")
def reference(demo_t2v_path):
    from lowvram.job import Job

    job = Job(prompt="a cat walks in the city", model="tiny-random", width=64, height=64, frames=5, steps=2, seed=3)
    latents, frames, _ = run_stages(job, cpu_plan())
    return job, latents, frames


@pytest.mark.parametrize("name", sorted(OFFLOAD_ONLY))
def test_offload_only_plans_match_no_offload(reference, name):
    """Within 1e-6 of the largest value. Memory offload on a CPU plan is bit-exact; disk offload reads
    bit-identical weights (test_disk_offload_restores_exact_weights) into differently aligned buffers,
    for which CPU matmul kernels may sum in another order: observed 2.1e-6 on latents of magnitude 3.4."""
    job, ref_latents, ref_frames = reference
    latents, frames, _ = run_stages(job, OFFLOAD_ONLY[name])
    assert (latents - ref_latents).abs().max().item() <= 1e-6 * ref_latents.abs().max().item()
    assert np.abs(frames - ref_frames).max() <= 1e-6


def test_disk_offload_restores_exact_weights(demo_t2v_path):
    import torch

    from lowvram.models.names import resolve_model
    from lowvram.placement.quanto_offload import group_hooks
    from lowvram.sampling import runner

    ref = runner.load_model(resolve_model("tiny-random"), cpu_plan()).pipe.transformer.state_dict()
    loaded = runner.load_model(resolve_model("tiny-random"), OFFLOAD_ONLY["disk_offload"])
    transformer = loaded.pipe.transformer
    hooks = group_hooks(transformer)
    assert hooks and all(h.group.offload_to_disk_path for h in hooks)
    for hook in hooks:
        hook.group.onload_()
    for name, value in transformer.state_dict().items():
        assert torch.equal(value, ref[name]), name


def test_partial_keeps_first_blocks_unhooked(reference):
    from lowvram import placement
    from lowvram.models.names import resolve_model
    from lowvram.placement.quanto_offload import group_hooks
    from lowvram.sampling import runner

    plan = cpu_plan(transformer=TP(kind="partial", resident_blocks=1))
    loaded = runner.load_model(resolve_model("tiny-random"), plan)
    blocks = loaded.pipe.transformer.blocks
    assert len(blocks) == 2  # the demo transformer
    assert not group_hooks(blocks[0]) and group_hooks(blocks[1])
    state = placement.describe_device_state(loaded.pipe)
    assert state["resident_blocks"] == [0]
    assert state["components"]["transformer"]["offloaded"] is True


@pytest.mark.parametrize(
    "plan",
    [
        cpu_plan(transformer=TP(kind="block_offload"), text_encoder="offload", vae="gpu_tiled"),
        cpu_plan(precision="int8", transformer=TP(kind="disk_offload"), text_encoder="cpu", vae="cpu"),
        cpu_plan(precision="int8", text_encoder_precision="int8", transformer=TP(kind="partial", resident_blocks=1)),
    ],
    ids=["offload", "int8-disk", "int8-partial"],
)
def test_generate_applies_plan_and_sidecar_records_it(small_job, plan):
    from lowvram.sampling.runner import generate

    result = generate(small_job(), plan=plan)
    side = json.loads(result.sidecar_path.read_text())
    assert result.video_path.stat().st_size > 0
    assert Plan.from_dict(side["plan"]) == fit_to(plan, ("text_encoder", "transformer", "vae"))
    assert set(side["measured"]["stages"]) >= {"load", "encode", "denoise", "decode"}


def test_i2v_with_cpu_vae_and_offloaded_transformer(small_job, image_file, demo_i2v_path):
    from lowvram.sampling.runner import generate

    plan = cpu_plan(transformer=TP(kind="block_offload"), vae="cpu", text_encoder="offload")
    result = generate(small_job(model="tiny-random-i2v", image=str(image_file)), plan=plan)
    assert result.video_path.is_file()


def test_stage_targets_keep_stage_peaks_apart():
    from lowvram.placement.apply import _targets

    plan = plan_with("cuda", text_encoder="gpu", vae="gpu")
    assert _targets(plan, "encode", None)["text_encoder"] == "cuda"
    assert _targets(plan, "denoise", None)["text_encoder"] == "cpu"  # leaves before denoising
    assert _targets(plan, "decode", None)["transformer"] == "cpu"  # leaves before decoding
    assert _targets(plan, "decode", None)["vae"] == "cuda"
    cpu_side = plan_with("cuda", text_encoder="cpu", vae="cpu")
    assert _targets(cpu_side, "encode", None)["text_encoder"] == "cpu"
    assert _targets(cpu_side, "decode", None)["vae"] == "cpu"


def test_a_text_only_encode_leaves_the_vae_off_the_gpu():
    """Found on the H200 (run 19, TI2V at 8 GiB): every encode brought the VAE onto the GPU beside the text
    encoder, 1.2-2.5 GiB the planner (which counts the VAE in encode only for image conditioning) did not
    predict. The VAE arrives in encode only when the job has an image."""
    from lowvram.placement.apply import _targets

    plan = plan_with("cuda", text_encoder="gpu", vae="gpu")
    text_only = _targets(plan, "encode", None)
    assert text_only["text_encoder"] == "cuda" and text_only["vae"] == "cpu" and text_only["transformer"] == "cpu"
    with_image = _targets(plan, "encode", None, image=True)
    assert with_image["vae"] == "cuda" and with_image["text_encoder"] == "cuda"


def test_offload_settings_per_kind():
    import torch

    from lowvram.placement.offload import settings_for

    from planner.plan import ComponentPlan

    def TP(kind, **kw):  # noqa: N802 - a denoiser's plan
        return ComponentPlan("transformer", "bf16", kind, **kw)

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert settings_for(TP(kind="resident"), cuda) is None
    assert settings_for(TP(kind="block_offload", blocks_per_group=3, use_stream=True), cuda).num_blocks_per_group == 1
    assert settings_for(TP(kind="block_offload", blocks_per_group=3, use_stream=False), cuda).num_blocks_per_group == 3
    assert settings_for(TP(kind="leaf_offload", use_stream=True), cuda).use_stream is True
    assert settings_for(TP(kind="leaf_offload", use_stream=True), cpu).use_stream is False  # no streams on a CPU
    assert settings_for(TP(kind="disk_offload"), cpu).disk is True


def test_transformer_attention_is_torch_sdpa(monkeypatch, demo_t2v_path):
    """The Wan attention goes through torch's fused SDPA (diffusers' native backend), nothing hand-written."""
    import torch
    import torch.nn.functional as F

    from lowvram import placement
    from lowvram.models.names import resolve_model
    from lowvram.sampling import runner

    plan = cpu_plan()
    loaded = runner.load_model(resolve_model("tiny-random"), plan)
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    t = loaded.pipe.transformer
    cfg = t.config
    x = torch.zeros(1, cfg.in_channels, 1, 4, 4)
    with torch.no_grad():
        t(hidden_states=x, timestep=torch.tensor([1.0]), encoder_hidden_states=torch.zeros(1, 3, cfg.text_dim))
    attn_modules = [m for m in t.modules() if type(m).__name__ == "WanAttention"]
    assert len(calls) == len(attn_modules) > 0
    placement.leave_all(loaded.pipe)


def test_disk_offload_uses_a_private_folder_removed_with_the_module(demo_t2v_path):
    """Every disk-offloaded transformer gets a scratch folder of its own (never shared with another run), gone
    with the module."""
    import gc
    from pathlib import Path
    from types import SimpleNamespace

    from diffusers import WanTransformer3DModel

    from lowvram import placement

    pipe = SimpleNamespace(transformer=WanTransformer3DModel.from_pretrained(demo_t2v_path / "transformer"))
    placement.prepare(pipe, OFFLOAD_ONLY["disk_offload"])
    folder = Path(placement.state(pipe).disk_dir)
    from lowvram.io.scratch import owner_of, owner_tag

    assert owner_of(folder.name) == owner_tag() and list(folder.glob("*.safetensors"))
    del pipe
    gc.collect()
    assert not folder.exists()


@pytest.mark.parametrize("model", ["tiny-random", "tiny-random-a14b"])
def test_each_stage_window_starts_once_its_components_are_placed(small_job, model, monkeypatch):
    """A stage's measured peak is its own: the peak window of denoise (each expert's phase) and decode restarts
    after enter_stage has moved the last stage's components off, so the instant the text encoder (or the last
    expert) is still leaving is not counted as the next stage's peak. The real runner, spied on."""
    from lowvram import placement
    from lowvram.sampling.runner import generate
    from lowvram.telemetry.memory import MemorySampler

    calls: list = []
    enter, start, peaks = placement.enter_stage, MemorySampler.start_window, MemorySampler.window_peaks

    def enter_spy(pipe, plan, stage, phase=None, **kw):
        enter(pipe, plan, stage, phase, **kw)
        calls.append(("entered", stage))

    def start_spy(self):
        start(self)
        calls.append(("window",))

    def peaks_spy(self):
        calls.append(("read",))  # a window's peaks read: a stage (or phase) ends
        return peaks(self)

    monkeypatch.setattr(placement, "enter_stage", enter_spy)
    monkeypatch.setattr(MemorySampler, "start_window", start_spy)
    monkeypatch.setattr(MemorySampler, "window_peaks", peaks_spy)
    def on_event(event):
        if type(event).__name__ in ("StageFinished", "StepFinished"):
            calls.append((type(event).__name__,))

    generate(small_job(model=model, steps=4, guidance=4.0), on_event=on_event)
    for stage in ("denoise", "decode"):
        entries = [i for i, c in enumerate(calls) if c == ("entered", stage)]
        # a window opens before the stage's work (a step, or the stage's end); at an expert switch after the last
        # phase's window is read
        assert entries, str(calls)
        for i in entries:
            work = next(j for j in range(i + 1, len(calls)) if calls[j] in (("StepFinished",), ("StageFinished",)))
            assert ("window",) in calls[i + 1:work], (stage, str(calls[i:work + 1]))


def test_a_stage_at_the_gpu_memory_limit_says_so(small_job, monkeypatch):
    """When torch's CUDA allocator had to free its cache and retry during a stage (a plan at its cap: every retry
    waits for the whole GPU), the run warns with what to change and records the count with the stage's peaks.
    The allocator's counter is injected (no GPU here); the runner's reporting is real."""
    from lowvram.sampling import runner
    from lowvram.telemetry import LogMessage

    count = iter(range(0, 1000, 3))  # each reading 3 more: every stage sees 3 retries
    monkeypatch.setattr(runner, "allocator_retries", lambda: next(count))
    events: list = []
    result = runner.generate(small_job(), on_event=events.append)
    warnings = [e.message for e in events if isinstance(e, LogMessage) and "GPU memory limit" in e.message]
    assert any(m.startswith("the denoise ran at the GPU memory limit") and "retried 3 times" in m and "--vram-reserve" in m
               for m in warnings)
    assert result.stage_peaks["denoise"]["alloc_retries"] == 3


def test_no_allocator_retries_on_the_cpu(small_job):
    from lowvram.sampling.runner import allocator_retries, generate

    assert allocator_retries() == 0
    assert all("alloc_retries" not in peaks for peaks in generate(small_job()).stage_peaks.values())
