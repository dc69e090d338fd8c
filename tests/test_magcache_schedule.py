"""MagCache decisions: pure logic against a transcription of MagCache4Wan2.1 / MagCache4Wan2.2, for every
published model, step counts other than the published one, guidance on and off, both expert modes."""

from __future__ import annotations

import numpy as np
import pytest
from magcache_reference import init_ratios, reference_decisions
from magcache_reference import nearest_interp as reference_interp

from lowvram.caching.magcache.ratios import PUBLISHED
from lowvram.caching.magcache.schedule import (
    MagCacheParams,
    Retention,
    build_schedules,
    call_ratios,
    decide_run,
    nearest_interp,
    split_step_of,
)
from lowvram.caching.setting import MAX_THRESHOLD
from lowvram.errors import UserError

WAN21 = [k for k in PUBLISHED if k.startswith("wan2.1")]
SINGLE_WAN22 = ["wan2.2-ti2v-5b-t2v", "wan2.2-ti2v-5b-i2v"]
TWO_EXPERTS = {"wan2.2-t2v-a14b": "t2v", "wan2.2-i2v-a14b": "i2v"}


def params(key: str, mode: str = "single", **changes) -> MagCacheParams:
    r = PUBLISHED[key]
    base = dict(ratios=r.ratios, max_skips=r.max_skips, retention_ratio=r.retention_ratio, mode=mode, source=r.source,
                default_threshold=r.threshold, label=r.label)
    base.update(changes)
    return MagCacheParams(**base)


def first_calls_forced(ref, branches, split=None):
    """The one rule lowvram adds: a skip needs an earlier computed call of the same branch on the same expert
    (the reference would add None there and crash). Applied to the reference's output."""
    out = list(ref)
    for lo in (0,) if split is None else (0, split):
        for k in range(branches):
            i = lo * branches + k
            if i < len(out):
                out[i] = (False, out[i][1])
    return out


def ours(key, steps, threshold, branches=("cond", "uncond"), mode="single", split=None, **changes):
    components = ("transformer", "transformer_2") if split is not None else ("transformer",)
    schedules = build_schedules(params(key, mode, **changes), threshold, None, list(range(steps)), branches, split, components)
    return [c for s in schedules for c in s.calls], schedules


@pytest.mark.parametrize("key", WAN21)
@pytest.mark.parametrize("steps", [50, 40, 30, 43, 8])
@pytest.mark.parametrize("branches", [("cond", "uncond"), ("cond",)])
def test_wan21_decisions_equal_the_reference(key, steps, branches):
    r = PUBLISHED[key]
    seen = set()
    for threshold in (0.02, 0.06, r.threshold, 0.5):
        for k in (1, 2, r.max_skips):
            for ratio in (0.1, 0.2, 0.25):
                calls, _ = ours(key, steps, threshold, branches, max_skips=k, retention_ratio=ratio)
                ref = reference_decisions(r.ratios, steps, threshold, k, ratio, wan21=True, branches=len(branches))
                ref = first_calls_forced(ref, len(branches))
                assert [(not c.computed, c.accumulated) for c in calls] == [(s, pytest.approx(e, abs=1e-12)) for s, e in ref]
                seen.update(c.computed for c in calls if not c.forced)
    assert seen == {True, False}


@pytest.mark.parametrize("key", SINGLE_WAN22)
@pytest.mark.parametrize("steps", [50, 30, 20])
def test_ti2v_decisions_equal_the_reference(key, steps):
    r = PUBLISHED[key]
    for threshold in (0.03, r.threshold, 0.2):
        calls, _ = ours(key, steps, threshold)
        ref = first_calls_forced(reference_decisions(r.ratios, steps, threshold, r.max_skips, r.retention_ratio, split_steps=None), 2)
        assert [not c.computed for c in calls] == [s for s, _ in ref]


@pytest.mark.parametrize("key", list(TWO_EXPERTS))
@pytest.mark.parametrize("steps, split", [(40, 26), (40, 14), (30, 20), (24, 3), (20, 10)])
@pytest.mark.parametrize("branches", [("cond", "uncond"), ("cond",)])
def test_two_expert_decisions_equal_the_reference_and_split_per_expert(key, steps, split, branches):
    r = PUBLISHED[key]
    mode = TWO_EXPERTS[key]
    for threshold in (0.02, r.threshold, 0.3):
        for ratio in (0.1, r.retention_ratio):
            calls, schedules = ours(key, steps, threshold, branches, mode, split, retention_ratio=ratio)
            ref = reference_decisions(r.ratios, steps, threshold, r.max_skips, ratio, split_steps=split, mode=mode, branches=len(branches))
            ref = first_calls_forced(ref, len(branches), split)
            assert [not c.computed for c in calls] == [s for s, _ in ref]
            high, low = schedules
            assert (high.component, high.first_step, high.total_steps) == ("transformer", 0, split)
            assert (low.component, low.first_step, low.total_steps) == ("transformer_2", split, steps - split)
            assert all(c.step < split for c in high.calls) and all(c.step >= split for c in low.calls)
    if mode == "i2v":  # I2V-A14B: the high-noise expert computes every call
        assert all(c.computed for c in high.calls)


def test_interpolation_is_the_references_in_float64_not_diffusers_float32():
    import torch
    from diffusers.hooks.mag_cache import nearest_interp as diffusers_interp

    src = np.arange(50)
    for n in range(1, 200):
        assert nearest_interp(list(src), n) == list(reference_interp(src, n))
    # diffusers rounds a float32 grid: for 43 steps from 50 it picks other indices than the reference.
    assert list(diffusers_interp(torch.arange(50), 43).numpy()) != list(reference_interp(src, 43))
    for key in PUBLISHED:
        for steps in (50, 43, 30):
            assert call_ratios(PUBLISHED[key].ratios, steps, 2) == list(init_ratios(PUBLISHED[key].ratios, steps))


def test_published_arrays_and_their_sources():
    for key, r in PUBLISHED.items():
        assert len(r.ratios) == 2 * (r.steps - 1) and r.steps in (40, 50)
        assert all(0.5 < x < 1.1 for x in r.ratios)
        assert "Zehong-Ma/MagCache @ df81cb181776" in r.source and "magcache_generate.py line" in r.source
    assert PUBLISHED["wan2.2-t2v-a14b"].ratios[50:52] == (0.65523, 0.65252)  # the expert switch
    assert (PUBLISHED["wan2.1-t2v-14b"].threshold, PUBLISHED["wan2.1-t2v-14b"].max_skips) == (0.24, 6)


def test_retention_rules_in_calls():
    single = Retention(0.2)
    assert [single.retained(c, 100, None) for c in (19, 20)] == [True, False]
    t2v, i2v = Retention(0.4, "t2v"), Retention(0.1, "i2v")
    # T2V-A14B, 40 steps, 26 high-noise: retain int(52*0.4)=20 calls, then calls 52..52+28*0.4=63.2
    assert [c for c in range(80) if t2v.retained(c, 80, 52)] == list(range(20)) + list(range(52, 64))
    # I2V-A14B: the whole high-noise expert and int(52 + 28*0.1)=54
    assert [c for c in range(80) if i2v.retained(c, 80, 52)] == list(range(54))


def test_speedup_target_and_the_largest_reachable():
    key = "wan2.1-t2v-1.3b"
    calls_at = lambda th: sum(c.computed for c in ours(key, 50, th)[0])  # noqa: E731
    for target in (1.5, 2.0):
        schedules = build_schedules(params(key), None, target, list(range(50)), ("cond", "uncond"))
        computed = sum(s.computed_calls for s in schedules)
        assert 100 / computed >= target
        th = schedules[0].threshold
        assert calls_at(th * (1 - 1e-6)) > 100 / target or th == 0.0  # the smallest threshold that does it
    best = 100 / calls_at(MAX_THRESHOLD)  # K=4 and 10 retained steps bound the skips
    with pytest.raises(UserError, match=f"largest reachable speed-up is {int(best * 100) / 100:.2f}x") as err:
        build_schedules(params(key), None, best + 0.5, list(range(50)), ("cond", "uncond"))
    assert "--magcache-k" in str(err.value)


def test_default_threshold_and_numbers_per_call():
    _, (s,) = ours("wan2.1-t2v-14b", 50, None)
    assert s.threshold == 0.24 and s.params["max_skips"] == 6 and "line 910" in s.params["ratios_source"]
    skipped = [c for c in s.calls if not c.computed]
    assert skipped and all(c.accumulated < 0.24 and 1 <= c.skips <= 6 and c.ratio is not None for c in skipped)
    again = decide_run(call_ratios(PUBLISHED["wan2.1-t2v-14b"].ratios, 50, 2), ("cond", "uncond"), 0.24, 6, Retention(0.2))
    assert [c.computed for c in again] == [c.computed for c in s.calls]


def test_split_step_from_the_runs_timesteps():
    ts = [999, 990, 950, 875, 874, 500, 10]
    assert split_step_of(ts, 0.875) == 4 and split_step_of(ts, None) is None
    _, schedules = ours("wan2.2-t2v-a14b", 7, 0.06, mode="t2v", split=7)
    assert [s.component for s in schedules] == ["transformer"]  # every step on the high-noise expert
