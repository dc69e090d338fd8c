"""TeaCache decisions, coefficients, signal and threshold search: pure logic against the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from teacache_reference import reference_decisions

from lowvram.caching.teacache import (
    COEFFICIENTS,
    CoefficientChoice,
    TimeEmbedderWeights,
    choose_coefficients,
    decide_branch,
    forced_steps,
    preview,
    preview_checkpoint,
    rel_l1_series,
    rescale,
    schedule_from_rel_l1,
    search_threshold,
    time_signal,
)
from lowvram.errors import UserError
from lowvram.job import Job, TeaCacheSetting

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


def test_branches_decide_alike_and_summary():
    signals = synthetic_signals(30, (16,), 7)
    s = ours(signals, "t2v-1.3b", False, 0.1, ("cond", "uncond"))
    for step in range(s.total_steps):
        assert s.decision(step, "cond").computed == s.decision(step, "uncond").computed
    assert 2 <= s.computed_steps < 30
    assert s.predicted_speedup == pytest.approx(60 / s.computed_calls)
    assert s.summary().startswith(f"TeaCache: computes {s.computed_steps} of 30 steps, predicted ")


@pytest.mark.parametrize("retention", [False, True])
def test_search_threshold_hits_the_target_with_the_smallest_threshold(retention):
    signals = synthetic_signals(50, (6, 16) if retention else (16,), 11)
    rel = rel_l1_series(torch.stack(signals))
    coeffs = COEFFICIENTS["t2v-1.3b"].for_mode(retention)
    forced = forced_steps(50, retention)
    for target in (1.2, 1.5, 2.0):
        th = search_threshold(rel, coeffs, retention, target)
        computed = sum(d.computed for d in decide_branch(rel, coeffs, th, forced))
        assert computed <= 50 / target
        below = sum(d.computed for d in decide_branch(rel, coeffs, th * (1 - 1e-6), forced))
        assert below > 50 / target or th == 0.0


def test_search_threshold_refuses_an_unreachable_target():
    rel = rel_l1_series(torch.stack(synthetic_signals(10, (16,), 3)))
    with pytest.raises(UserError, match="cannot reach 9x"):
        search_threshold(rel, COEFFICIENTS["t2v-1.3b"].with_retention, True, 9.0)  # 5 of 10 steps are forced


def test_choose_coefficients_from_config_and_name():
    t2v13 = dict(num_layers=30, num_attention_heads=12, in_channels=16)
    t2v14 = dict(num_layers=40, num_attention_heads=40, in_channels=16)
    i2v = dict(num_layers=40, num_attention_heads=40, in_channels=36, image_dim=1280)
    assert choose_coefficients(t2v13).key == "t2v-1.3b" and not choose_coefficients(t2v13).note
    assert choose_coefficients(t2v14).key == "t2v-14b"
    assert choose_coefficients(i2v, "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers").key == "i2v-14b-720p"
    assert choose_coefficients(i2v, "wan2.1-i2v-14b-480p").key == "i2v-14b-480p"
    unnamed = choose_coefficients(i2v, "/models/my-wan")
    assert unnamed.key == "i2v-14b-480p" and "720P" in unnamed.note
    demo = choose_coefficients(dict(num_layers=2, num_attention_heads=2, attention_head_dim=12, in_channels=16))
    assert demo.key == "t2v-1.3b" and "no TeaCache coefficients" in demo.note
    assert choose_coefficients(t2v13, override="I2V-14B-720P").key == "i2v-14b-720p"
    with pytest.raises(UserError, match="unknown"):
        choose_coefficients(t2v13, override="sdxl")
    with pytest.raises(UserError, match="unknown"):
        TeaCacheSetting(enabled=True, threshold=0.1, coefficients="sdxl")


def _demo_transformer():
    from diffusers import WanTransformer3DModel

    from lowvram.models.demo import _TRANSFORMER

    torch.manual_seed(0)
    return WanTransformer3DModel(in_channels=16, **_TRANSFORMER).eval()


def test_signal_is_the_models_own_time_embedding_in_fp32():
    tr = _demo_transformer()
    t = torch.tensor([999.0, 937.0, 500.0, 3.0])
    with torch.no_grad():
        temb, tproj, _, _ = tr.condition_embedder(t, torch.zeros(4, 3, tr.config.text_dim))
        weights = TimeEmbedderWeights.from_transformer(tr)
        e = time_signal(weights, t, retention=False)
        e0 = time_signal(weights, t, retention=True)
    assert e.dtype == e0.dtype == torch.float32
    torch.testing.assert_close(e, temb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e0, tproj, rtol=1e-5, atol=1e-5)
    # A bf16 copy of the model gives the same fp32 signal up to bf16 weight rounding, not bf16 activations.
    e_bf16 = time_signal(TimeEmbedderWeights.from_transformer(tr.to(torch.bfloat16)), t, retention=False)
    assert e_bf16.dtype == torch.float32


def test_preview_from_checkpoint_needs_no_model_load(demo_t2v_path):
    from lowvram.models.loading import load_pipeline
    from lowvram.models.names import resolve_model

    job = Job(prompt="x", steps=12, teacache=TeaCacheSetting(enabled=True, threshold=0.2, retention=False))
    lazy = preview_checkpoint(demo_t2v_path, job)
    pipe, info = load_pipeline(resolve_model("tiny-random"), dtypes={"default": "float32"})
    loaded = preview(info.transformer_config, job, pipe.scheduler, TimeEmbedderWeights.from_transformer(pipe.transformer))
    assert lazy == loaded
    assert lazy.total_steps == 12 and lazy.branches == ("cond", "uncond")
    assert preview_checkpoint(demo_t2v_path, job.with_(teacache=TeaCacheSetting())) is None


def test_missing_threshold_and_target_is_a_user_error(demo_t2v_path):
    job = Job(prompt="x", steps=4, teacache=TeaCacheSetting(enabled=True))
    with pytest.raises(UserError, match="--teacache 0.05"):
        preview_checkpoint(demo_t2v_path, job)


def test_preview_for_job_before_anything_loads(demo_t2v_path):
    from lowvram.caching.teacache import preview_for_job

    on = Job(prompt="x", steps=6, teacache=TeaCacheSetting(enabled=True, threshold=0.1))
    got = preview_for_job(on)
    assert got.schedule is not None and got.message == got.schedule.summary()
    assert got.message.startswith("TeaCache: computes ") and " of 6 steps" in got.message
    assert preview_for_job(on.with_(teacache=TeaCacheSetting())).message == "TeaCache: off"
    remote = preview_for_job(on.with_(model="someone/not-downloaded-wan"))
    assert remote.schedule is None and "not downloaded" in remote.message


def test_fixed_schedule_for_benchmarks():
    from lowvram.caching.teacache import fixed_schedule

    s = fixed_schedule([True, False, True, False], branches=("cond",))
    assert s.step_computed == (True, False, True, False) and s.predicted_speedup == 2.0
    assert s.summary() == "TeaCache: computes 2 of 4 steps, predicted 2.0x (fixed decisions)"
    with pytest.raises(ValueError, match="first step must compute"):
        fixed_schedule([False, True])
