"""TeaCache decisions, coefficients, signal and threshold search: pure logic against the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from teacache_reference import reference_decisions

from lowvram.caching.identity import ModelFacts, identify
from lowvram.caching.plan import cache_plan, preview_for_job, scheduler_timesteps
from lowvram.caching.schedule import fixed_schedule
from lowvram.caching.setting import CacheSetting
from lowvram.caching.teacache import (
    COEFFICIENTS,
    CoefficientChoice,
    TimeEmbedderWeights,
    choose_coefficients,
    decide_branch,
    forced_steps,
    rel_l1_series,
    rescale,
    schedule_from_rel_l1,
    threshold_for_speedup,
    time_signal,
)
from lowvram.errors import UserError
from lowvram.job import Job

THRESHOLDS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.6)


def synthetic_signals(steps: int, shape: tuple, seed: int) -> list[torch.Tensor]:
    """A random walk whose per-step relative change spans 0.3% .. 30%, like and beyond real embeddings."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    out = [x]
    for _ in range(steps - 1):
        scale = math.exp(torch.empty(()).uniform_(math.log(0.003), math.log(0.3), generator=g).item())
        x = x + scale * torch.randn(shape, generator=g)
        out.append(x)
    return out


def ours(signals, key, retention, threshold, branches):
    rel = rel_l1_series(torch.stack(signals))
    choice = CoefficientChoice(COEFFICIENTS[key])
    return schedule_from_rel_l1(rel, choice, retention, threshold, branches, list(range(len(signals))))


@pytest.mark.parametrize("retention", [False, True])
@pytest.mark.parametrize("key", list(COEFFICIENTS))
def test_decisions_equal_reference_on_synthetic_signals(key, retention):
    shape = (6, 24) if retention else (24,)  # e0 is [6, dim], e is [dim]
    seen = set()
    for seed in range(3):
        signals = synthetic_signals(20, shape, seed)
        for threshold in THRESHOLDS:
            for branches in (("cond", "uncond"), ("cond",)):
                schedule = ours(signals, key, retention, threshold, branches)
                coeffs = COEFFICIENTS[key].for_mode(retention)
                ref = reference_decisions(signals, coeffs, threshold, retention, len(signals), len(branches))
                assert [(c.computed, c.accumulated) for c in schedule.calls] == ref
                seen.update(c.computed for c in schedule.calls if not c.forced)
    assert seen == {True, False}, "the signals should exercise both skips and computes"


def test_rescale_is_numpy_poly1d():
    for c in COEFFICIENTS.values():
        for coeffs in (c.with_retention, c.without_retention):
            for x in (0.0, 0.013, 0.07, 0.25, 1.3):
                assert rescale(coeffs, x) == float(np.poly1d(coeffs)(x))


def test_forced_steps():
    assert forced_steps(50, True) == frozenset(range(5))
    assert forced_steps(50, False) == frozenset({0, 49})
    assert forced_steps(3, True) == frozenset({0, 1, 2})


def test_branches_decide_alike():
    signals = synthetic_signals(30, (16,), 7)
    s = ours(signals, "t2v-1.3b", False, 0.1, ("cond", "uncond"))
    for step in range(s.total_steps):
        assert s.decision(step, "cond").computed == s.decision(step, "uncond").computed
    assert 2 <= s.computed_steps < 30
    assert s.predicted_speedup == pytest.approx(60 / s.computed_calls)


@pytest.mark.parametrize("retention", [False, True])
def test_search_threshold_hits_the_target_with_the_smallest_threshold(retention):
    signals = synthetic_signals(50, (6, 16) if retention else (16,), 11)
    rel = rel_l1_series(torch.stack(signals))
    coeffs = COEFFICIENTS["t2v-1.3b"].for_mode(retention)
    forced = forced_steps(50, retention)
    for target in (1.2, 1.5, 2.0):
        th = threshold_for_speedup(rel, coeffs, retention, target)
        computed = sum(d.computed for d in decide_branch(rel, coeffs, th, forced))
        assert computed <= 50 / target
        below = sum(d.computed for d in decide_branch(rel, coeffs, th * (1 - 1e-6), forced))
        assert below > 50 / target or th == 0.0


def test_search_threshold_refuses_an_unreachable_target_naming_the_largest_reachable():
    rel = rel_l1_series(torch.stack(synthetic_signals(10, (16,), 3)))
    # 5 of 10 steps are forced; the largest threshold skips all the others: 2x at most
    with pytest.raises(UserError, match=r"cannot reach 9x.* largest reachable speed-up is 2\.00x"):
        threshold_for_speedup(rel, COEFFICIENTS["t2v-1.3b"].with_retention, True, 9.0)


T2V13 = dict(num_layers=30, num_attention_heads=12, in_channels=16)
T2V14 = dict(num_layers=40, num_attention_heads=40, in_channels=16)
I2V14 = dict(num_layers=40, num_attention_heads=40, in_channels=36, image_dim=1280)


def test_coefficients_from_the_models_identity_never_its_path():
    def choose(config, w=832, h=480, name="", override=None, **facts):
        return choose_coefficients(identify(ModelFacts(config, name=name, **facts), w, h), override)

    assert choose(T2V13).key == "t2v-1.3b" and not choose(T2V13).note
    assert choose(T2V14).key == "t2v-14b"
    assert "recognised from its configs" in choose(T2V14).reason
    # 480P and 720P share a config: the job's size decides, whatever the name or folder says.
    assert choose(I2V14, 1280, 720).key == "i2v-14b-720p" and "nearer 720p" in choose(I2V14, 1280, 720).reason
    assert choose(I2V14, 832, 480, name="Wan-AI/Wan2.1-I2V-14B-720P-Diffusers").key == "i2v-14b-480p"
    assert choose(I2V14, 720, 1280).key == "i2v-14b-720p"  # portrait
    demo = choose(dict(num_layers=2, num_attention_heads=2, in_channels=16), is_demo=True)
    assert demo.key == "t2v-1.3b" and "demo model" in demo.reason and "random weights" in demo.note
    assert choose(T2V13, override="I2V-14B-720P").key == "i2v-14b-720p"
    with pytest.raises(UserError, match="unknown"):
        choose(T2V13, override="sdxl")
    with pytest.raises(UserError, match="unknown"):
        CacheSetting("teacache", threshold=0.1, coefficients="sdxl")


def test_no_coefficients_for_wan22_or_custom_models_names_what_exists():
    two = ModelFacts(T2V14, transformer_2=T2V14, boundary_ratio=0.875)
    with pytest.raises(UserError, match=r"no coefficients for Wan2\.2 T2V-A14B.*T2V-1\.3B, T2V-14B, I2V-14B-480P, I2V-14B-720P.*--cache magcache"):
        choose_coefficients(identify(two, 832, 480))
    with pytest.raises(UserError, match="expand_timesteps"):
        choose_coefficients(identify(ModelFacts(dict(num_layers=30, num_attention_heads=24, in_channels=48), expand_timesteps=True), 1280, 704))
    with pytest.raises(UserError, match="no coefficients for this model"):
        choose_coefficients(identify(ModelFacts(dict(num_layers=3, num_attention_heads=2, in_channels=16)), 832, 480))
    forced = choose_coefficients(identify(two, 832, 480), "t2v-14b")
    assert forced.key == "t2v-14b" and "not fitted" in forced.note


def _demo_transformer():
    from diffusers import WanTransformer3DModel

    from lowvram.models.demo import _TRANSFORMER

    torch.manual_seed(0)
    return WanTransformer3DModel(in_channels=16, **_TRANSFORMER).eval()


def test_signal_is_the_checkpoints_time_embedding_in_fp32(demo_t2v_path):
    from diffusers import WanTransformer3DModel

    tr = WanTransformer3DModel.from_pretrained(demo_t2v_path, subfolder="transformer").eval()
    t = torch.tensor([999.0, 937.0, 500.0, 3.0])
    with torch.no_grad():
        temb, tproj, _, _ = tr.condition_embedder(t, torch.zeros(4, 3, tr.config.text_dim))
        e = time_signal(TimeEmbedderWeights.from_checkpoint(demo_t2v_path, 256, retention=False), t, retention=False)
        e0 = time_signal(TimeEmbedderWeights.from_checkpoint(demo_t2v_path, 256, retention=True), t, retention=True)
        # What the model computes once loaded in bf16 differs: the reason the signal is read from the checkpoint.
        temb_bf16 = tr.to(torch.bfloat16).condition_embedder(t, torch.zeros(4, 3, tr.config.text_dim, dtype=torch.bfloat16))[0]
    assert e.dtype == e0.dtype == torch.float32
    torch.testing.assert_close(e, temb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e0, tproj, rtol=1e-5, atol=1e-5)
    assert not torch.equal(temb_bf16.float(), e)


def test_preview_needs_no_model_load_and_is_the_runs_plan(demo_t2v_path):
    job = Job(prompt="x", steps=12, cache=CacheSetting("teacache", threshold=0.2, retention=False))
    preview = preview_for_job(job)
    sconf = __import__("json").loads((demo_t2v_path / "scheduler" / "scheduler_config.json").read_text())
    again = cache_plan(job.cache, ModelFacts.from_folder(demo_t2v_path, "tiny-random", True), job,
                       scheduler_timesteps(sconf, 12), demo_t2v_path)
    assert again is preview.plan  # the same inputs give the same object: the run follows the preview
    (s,) = preview.plan.schedules
    assert s.total_steps == 12 and s.branches == ("cond", "uncond") and s.method == "teacache"
    assert preview_for_job(job.with_(cache=CacheSetting())).plan is None


def test_missing_threshold_and_target_is_a_user_error(demo_t2v_path):
    job = Job(prompt="x", steps=4, cache=CacheSetting("teacache"))
    with pytest.raises(UserError, match="--cache-threshold 0.05"):
        preview_for_job(job)


def test_preview_for_job_before_anything_loads(demo_t2v_path):
    on = Job(prompt="x", steps=6, cache=CacheSetting("teacache", threshold=0.1))
    got = preview_for_job(on)
    assert got.plan is not None and got.message == got.plan.summary()
    assert got.message.startswith("TeaCache: computes ") and " of 12 transformer calls" in got.message
    assert preview_for_job(on.with_(cache=CacheSetting())).message.startswith("cache: off")
    remote = preview_for_job(on.with_(model="someone/not-downloaded-wan"))
    assert remote.plan is None and "not downloaded" in remote.message


def test_fixed_schedule_for_benchmarks():
    s = fixed_schedule([True, False, True, False], branches=("cond",))
    assert s.step_computed == (True, False, True, False) and s.predicted_speedup == 2.0
    with pytest.raises(ValueError, match="first step must compute"):
        fixed_schedule([False, True])
