"""Step skipping in real runs of the demo model: what the run does is the preview, equal to the reference
algorithms under every precision, per expert for a two-expert model; calibration; telemetry; cleanup."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import pytest
import torch
from cache_support import smooth_copy, two_expert_copy
from magcache_reference import reference_decisions as magcache_reference
from teacache_reference import reference_decisions as teacache_reference

from lowvram.caching import plan as cache_plans
from lowvram.caching import session as cache_sessions
from lowvram.caching.hook import CACHE_BLOCK_HOOK, get_cache
from lowvram.caching.magcache.calibrate import calibration_path, load_calibrated
from lowvram.caching.setting import CacheSetting
from lowvram.caching.teacache import COEFFICIENTS
from lowvram.errors import CancelledError
from lowvram.telemetry import CacheScheduled, EventLog, StepFinished, TransformerCall
from planner.plan import Plan, simple_plan


def bf16_on_cpu(precision: str) -> Plan:
    """A CPU plan whose denoiser and text encoder compute in bfloat16 (weights rounded as on a GPU)."""
    plan = simple_plan("cpu", precision)
    return dataclasses.replace(plan, components=tuple(
        dataclasses.replace(c, compute_dtype="bfloat16") if c.role in ("denoiser", "text_encoder") else c
        for c in plan.components))

STEPS = 10


@pytest.fixture(scope="module")
def smooth(demo_t2v_path, tmp_path_factory) -> Path:
    return smooth_copy(demo_t2v_path, tmp_path_factory.mktemp("smooth") / "tiny-smooth")


def load(folder: Path, plan: Plan):
    from lowvram.models.names import resolve_model
    from lowvram.sampling.runner import load_model

    return load_model(resolve_model(str(folder)), plan)


PLANS = {
    "fp32": simple_plan("cpu", "fp32"),
    "bf16": bf16_on_cpu("bf16"),
    "int8": bf16_on_cpu("int8"),
    "fp8": bf16_on_cpu("fp8"),
}


class LiveCapture:
    """What the model does per call: how many blocks ran."""

    def __init__(self, tr):
        self.forwards, self.handles = [], []
        self.handles.append(tr.condition_embedder.register_forward_hook(lambda *a: self.forwards.append(0)))
        for b in tr.blocks:
            self.handles.append(b.ffn.register_forward_pre_hook(self._block))

    def _block(self, module, args):
        self.forwards[-1] += 1

    def close(self):
        for h in self.handles:
            h.remove()


def run_job(loaded, job, cancel=None, on_event=None):
    from lowvram.sampling.runner import generate

    log = EventLog(forward=on_event or (lambda e: None))
    live = LiveCapture(loaded.pipe.transformer)
    try:
        result = generate(job, on_event=log, cancel=cancel, loaded=loaded)
    finally:
        live.close()
    return result, log, live


@pytest.fixture
def spy_plans(monkeypatch):
    """The plan object each run follows (the real one, recorded)."""
    seen = []
    real = cache_sessions.plan_for_run
    monkeypatch.setattr(cache_sessions, "plan_for_run", lambda *a: seen.append(real(*a)) or seen[-1])
    return seen


def fp32_signals(folder: Path, timesteps) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The reference's signal: the checkpoint's time path in fp32, (e, e0) per timestep."""
    from diffusers import WanTransformer3DModel

    tr = WanTransformer3DModel.from_pretrained(folder, subfolder="transformer", torch_dtype=torch.float32)
    with torch.no_grad():
        out = []
        for t in timesteps:
            temb, tproj, _, _ = tr.condition_embedder(torch.tensor([float(t)]), torch.zeros(1, 2, tr.config.text_dim))
            out.append((temb[0], tproj[0]))
    return out


@pytest.mark.parametrize("precision", list(PLANS))
def test_teacache_follows_the_reference_under_every_precision(smooth, small_job, spy_plans, precision):
    loaded = load(smooth, PLANS[precision])
    tr = loaded.pipe.transformer
    signals = None
    for retention, threshold, guidance in ((False, 0.2, 5.0), (True, 0.05, 5.0), (False, 0.1, 1.0)):
        job = small_job(model=str(smooth), steps=STEPS, guidance=guidance, cache=CacheSetting("teacache", threshold=threshold, retention=retention))
        preview = cache_plans.preview_for_job(job).plan
        result, log, live = run_job(loaded, job)

        assert spy_plans[-1] is preview  # the previewed plan is the object the run followed
        (schedule,) = preview.schedules
        non_forced = {c.computed for c in schedule.calls if not c.forced}
        assert non_forced == {True, False}, preview.summary()
        calls = log.of(TransformerCall)
        assert [(c.step, c.branch, c.computed) for c in calls] == [(d.step, d.branch, d.computed) for d in schedule.calls]
        assert live.forwards == [len(tr.blocks) if d.computed else 0 for d in schedule.calls]

        # The reference loop over the fp32 signal of the checkpoint, at the run's own timesteps.
        if signals is None:
            signals = fp32_signals(smooth, schedule.timesteps)
        per_step = [s[1] if retention else s[0] for s in signals]
        coeffs = COEFFICIENTS[schedule.params["coefficients"]].for_mode(retention)
        ref = teacache_reference(per_step, coeffs, threshold, retention, STEPS, len(schedule.branches))
        assert [computed for computed, _ in ref] == [c.computed for c in calls]
        assert [acc for _, acc in ref] == pytest.approx([c.accumulated for c in calls], rel=1e-4, abs=1e-6)
        assert get_cache(tr) is None  # the run removed its hooks

    sidecar = json.loads(result.sidecar_path.read_text())
    assert sidecar["cache"]["setting"]["method"] == "teacache" and sidecar["cache"]["measured"]["calls_differing_from_schedule"] == []
    assert sidecar["cache"]["components"][0]["params"]["coefficients"] == "t2v-1.3b"


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_quantized_time_weights_would_decide_otherwise_the_run_does_not(smooth, small_job, precision):
    """A signal from the loaded model's own (rounded) time weights changes decisions at some thresholds
    (the issue: 2-8 of 60 calls); at such a threshold the run still decides as the fp32 checkpoint says."""
    import numpy as np

    from lowvram.caching.teacache import (
        TimeEmbedderWeights,
        decide_branch,
        forced_steps,
        rel_l1_series,
        time_signal,
    )

    loaded = load(smooth, PLANS[precision])
    ce = loaded.pipe.transformer.condition_embedder
    dense = lambda w: w.dequantize() if hasattr(w, "dequantize") else w  # noqa: E731
    rounded = TimeEmbedderWeights(256, dense(ce.time_embedder.linear_1.weight), ce.time_embedder.linear_1.bias,
                                  dense(ce.time_embedder.linear_2.weight), ce.time_embedder.linear_2.bias)
    job = small_job(model=str(smooth), steps=STEPS, cache=CacheSetting("teacache", threshold=0.1, retention=False))
    (schedule,) = cache_plans.preview_for_job(job).plan.schedules
    coeffs, forced = COEFFICIENTS["t2v-1.3b"].without_retention, forced_steps(STEPS, False)
    theirs = rel_l1_series(time_signal(rounded, schedule.timesteps, False))
    exact = [(s[0]) for s in fp32_signals(smooth, schedule.timesteps)]
    ours = rel_l1_series(torch.stack(exact))
    differing = [th for th in np.round(np.linspace(0.01, 0.5, 200), 4)
                 if [d.computed for d in decide_branch(theirs, coeffs, th, forced)] != [d.computed for d in decide_branch(ours, coeffs, th, forced)]]
    assert differing, "the demo's rounded time weights should change some decisions"
    threshold = float(differing[0])
    _, log, _ = run_job(loaded, job.with_(cache=CacheSetting("teacache", threshold=threshold, retention=False)))
    ref = teacache_reference(exact, coeffs, threshold, False, STEPS, 2)
    assert [c.computed for c in log.of(TransformerCall)] == [computed for computed, _ in ref]


def test_speedup_target_searches_the_threshold(smooth, small_job):
    loaded = load(smooth, PLANS["fp32"])
    job = small_job(model=str(smooth), steps=STEPS, cache=CacheSetting("teacache", speedup=2.0, retention=False))
    result, log, live = run_job(loaded, job)
    (announced,) = log.of(CacheScheduled)
    assert announced.total_calls / announced.computed_calls >= 2.0
    assert sum(1 for f in live.forwards if f) == announced.computed_calls
    steps = log.of(StepFinished)
    assert steps[0].remaining_calls == 2 * (STEPS - 1)
    assert steps[0].remaining_computed_calls == sum(announced.computed[2:])
    assert steps[-1].remaining_calls == steps[-1].remaining_computed_calls == 0


def test_magcache_calibrates_then_follows_the_reference(smooth, small_job, spy_plans):
    from lowvram.caching.identity import ModelFacts, identify

    loaded = load(smooth, PLANS["fp32"])
    tr = loaded.pipe.transformer
    key = identify(ModelFacts.from_folder(smooth, is_demo=True), 64, 64).key
    calibration_path(key).unlink(missing_ok=True)
    with pytest.raises(Exception, match="--cache magcache --cache-calibrate"):
        cache_plans.preview_for_job(small_job(model=str(smooth), cache=CacheSetting("magcache")))

    # Calibration: every call computes; the ratios are diffusers' formula over the residuals the blocks made.
    residuals = {"cond": [], "uncond": []}
    handles = [tr.blocks[0].register_forward_pre_hook(lambda m, a: residuals.setdefault("_in", []).append(a[0].clone())),
               tr.blocks[-1].register_forward_hook(lambda m, a, out: residuals.setdefault("_out", []).append(out.clone()))]
    job = small_job(model=str(smooth), steps=STEPS, cache=CacheSetting("magcache", calibrate=True))
    try:
        _, log, live = run_job(loaded, job)
    finally:
        for h in handles:
            h.remove()
    assert live.forwards == [len(tr.blocks)] * (2 * STEPS)
    saved = load_calibrated(key)
    assert saved is not None and saved["steps"] == STEPS and len(saved["ratios"]) == 2 * (STEPS - 1)
    res = [o - i for i, o in zip(residuals["_in"], residuals["_out"])]
    expected = []
    for call in range(2, 2 * STEPS):
        cur, prev = res[call].float().norm(dim=-1), res[call - 2].float().norm(dim=-1)
        expected.append(round((cur / (prev + 1e-8)).mean().item(), 5))
    assert saved["ratios"] == pytest.approx(expected, abs=1e-5)
    assert any("calibrated over 10 steps and saved" in e.message for e in log.events if hasattr(e, "message"))

    # A later run uses them: decisions are the reference's over the calibrated ratios.
    for threshold, k in ((0.05, 2), (0.3, 3)):
        job = small_job(model=str(smooth), steps=STEPS, cache=CacheSetting("magcache", threshold=threshold, max_skips=k, retention_ratio=0.2))
        preview = cache_plans.preview_for_job(job).plan
        result, log, live = run_job(loaded, job)
        assert spy_plans[-1] is preview
        assert "calibrated on this machine" in preview.reason
        calls = log.of(TransformerCall)
        ref = magcache_reference(saved["ratios"], STEPS, threshold, k, 0.2, split_steps=None)
        assert [not c.computed for c in calls] == [skip for skip, _ in ref]
        assert [c.accumulated for c in calls] == pytest.approx([e for _, e in ref], abs=1e-9)
        assert all(c.ratio is not None for c in calls)
        assert live.forwards == [len(tr.blocks) if c.computed else 0 for c in calls]
    assert {True, False} <= {c.computed for c in calls}
    sidecar = json.loads(result.sidecar_path.read_text())
    assert sidecar["cache"]["components"][0]["params"]["ratios_source"].startswith("calibrated on this machine")


def test_cancelled_run_leaves_no_hooks_and_no_state(smooth, small_job):
    loaded = load(smooth, PLANS["fp32"])
    tr = loaded.pipe.transformer
    cancel = threading.Event()

    def cancel_after_step_3(event):
        if isinstance(event, StepFinished) and event.step == 3:
            cancel.set()

    job = small_job(model=str(smooth), steps=STEPS, cache=CacheSetting("teacache", threshold=0.2, retention=False))
    with pytest.raises(CancelledError):
        run_job(loaded, job, cancel=cancel, on_event=cancel_after_step_3)
    assert get_cache(tr) is None
    assert all(b._diffusers_hook.get_hook(CACHE_BLOCK_HOOK) is None for b in tr.blocks if hasattr(b, "_diffusers_hook"))
    assert tr.blocks[0]._diffusers_hook is not None  # the run did register block hooks
    _, log, live = run_job(loaded, small_job(model=str(smooth), steps=3))  # no cache: every call computes
    assert live.forwards == [len(tr.blocks)] * 6 and not log.of(TransformerCall)
    assert [(s.computed_calls, s.skipped_calls, s.remaining_computed_calls) for s in log.of(StepFinished)] == [(2, 0, 4), (2, 0, 2), (2, 0, 0)]


# ---------------------------------------------------------------------------------------------- two experts


@pytest.fixture(scope="module")
def two_experts(smooth, tmp_path_factory) -> Path:
    return two_expert_copy(smooth, tmp_path_factory.mktemp("experts") / "tiny-two-experts")


def expert_loop(folder: Path, job, sink):
    """The sampling loop a two-expert runner runs (diffusers' WanPipeline rule: `transformer` while
    t >= boundary_ratio * num_train_timesteps, `transformer_2` below), with the cache API as the lead will call it."""
    from diffusers import WanPipeline

    from lowvram.caching.session import cache_session
    from lowvram.models.loading import read_checkpoint_info
    from lowvram.models.names import ModelRef
    from lowvram.sampling.runner import Clock, LoadedModel

    pipe = WanPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    loaded = LoadedModel(ModelRef(str(folder), "local", str(folder)), pipe, read_checkpoint_info(folder), PLANS["fp32"])
    pipe.scheduler.set_timesteps(job.steps)
    timesteps = pipe.scheduler.timesteps
    boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 2, 8, 8, generator=g)
    text = {b: torch.randn(1, 4, pipe.transformer.config.text_dim, generator=g) for b in ("cond", "uncond")}
    used = []
    live = {name: LiveCapture(getattr(pipe, name)) for name in ("transformer", "transformer_2")}
    with torch.no_grad(), cache_session(loaded, job, timesteps, sink, Clock()) as cache:
        for i, t in enumerate(timesteps):
            name = "transformer" if t >= boundary else "transformer_2"
            model = cache.attach(name, getattr(pipe, name))
            used.append(name)
            for branch in ("cond", "uncond"):
                with model.cache_context(branch, step_index=i):
                    model(hidden_states=latents, timestep=t.expand(1), encoder_hidden_states=text[branch], return_dict=False)
            cache.step_done(i)
    for capture in live.values():
        capture.close()
    assert get_cache(pipe.transformer) is None and get_cache(pipe.transformer_2) is None
    return used, {name: c.forwards for name, c in live.items()}, timesteps


def test_two_experts_calibrate_and_follow_the_reference_per_expert(two_experts, small_job):
    from lowvram.caching.identity import ModelFacts, identify

    key = identify(ModelFacts.from_folder(two_experts, is_demo=True), 64, 64).key
    calibration_path(key).unlink(missing_ok=True)
    steps = 12
    log = EventLog()
    used, forwards, timesteps = expert_loop(two_experts, small_job(model=str(two_experts), steps=steps, cache=CacheSetting("magcache", calibrate=True)), log)
    split = used.count("transformer")
    assert 0 < split < steps and used == ["transformer"] * split + ["transformer_2"] * (steps - split)
    saved = load_calibrated(key)
    assert saved["split_step"] == split and len(saved["ratios"]) == 2 * (steps - 1)

    for threshold, retention in ((0.5, 0.1), (0.05, 0.0)):
        log = EventLog()
        job = small_job(model=str(two_experts), steps=steps, cache=CacheSetting("magcache", threshold=threshold, max_skips=2, retention_ratio=retention))
        used, forwards, _ = expert_loop(two_experts, job, log)
        high, low = log.of(CacheScheduled)
        assert (high.component, high.first_step, high.total_steps) == ("transformer", 0, split)
        assert (low.component, low.first_step, low.total_steps) == ("transformer_2", split, steps - split)
        calls = log.of(TransformerCall)
        assert [c.component for c in calls] == ["transformer"] * 2 * split + ["transformer_2"] * 2 * (steps - split)
        ref = magcache_reference(saved["ratios"], steps, threshold, 2, retention, split_steps=split, mode="t2v")
        ref_computed = [not skip for skip, _ in ref]
        for k in (0, 1, 2 * split, 2 * split + 1):  # a skip needs a residual of the same expert (the reference would fail)
            ref_computed[k] = True
        assert [c.computed for c in calls] == ref_computed
        layers = len(calls) and 2  # the demo's 2 blocks
        assert forwards["transformer"] == [layers if c.computed else 0 for c in calls if c.component == "transformer"]
        assert forwards["transformer_2"] == [layers if c.computed else 0 for c in calls if c.component == "transformer_2"]
    assert {c.computed for c in calls if c.component == "transformer_2"} == {True, False}
