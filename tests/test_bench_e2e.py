"""The end-to-end and step-skipping benchmark paths on tiny stand-ins on the CPU (no timing asserts)."""

from __future__ import annotations

import pytest

from lowvram.bench import shapes

TINY = dict(shapes.WAN_COMMON, num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=2, text_dim=16, freq_dim=8)
CONFIGS = {
    "transformer": TINY,
    "text_encoder": dict(shapes.UMT5_XXL, vocab_size=100, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4),
    "vae": dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]),
    "text_tokens": 8,
}


@pytest.fixture(scope="module")
def hosts():
    from lowvram.bench.e2e import Hosts

    return Hosts("tiny", log=lambda s: None, device="cpu", configs=CONFIGS)


def test_all_on_gpu_and_planned_run_every_stage(hosts, small_job):
    from lowvram.bench.e2e import all_on_gpu, planned
    import dataclasses

    from planner.plan import StagePeak, simple_plan

    job = small_job(steps=3)
    base = all_on_gpu(hosts, "tiny", "480p", steps=5, measured_steps=3, device="cpu", job=job, log=lambda s: None)
    assert set(base["stages"]) == {"encode", "denoise", "decode"}
    assert base["measured_steps"] == 3 and "composed" in base and base["e2e_seconds"] > 0

    plan = dataclasses.replace(simple_plan("cpu", "fp32", "block_offload", text_encoder="offload"),
                               predicted=(StagePeak("denoise", 123, 0),))
    mine = planned(hosts, "tiny", "480p", 8, 64, steps=3, measured_steps=3, plan=plan, job=job, log=lambda s: None)
    assert set(mine["stages"]) == {"load", "encode", "denoise", "decode"}
    assert "composed" not in mine and mine["e2e_seconds"] > 0
    assert mine["stages"]["denoise"]["predicted_vram"] == 123


def test_summary_composes_unmeasured_steps():
    from lowvram.bench.e2e import _summary
    from planner.plan import Plan

    stages = {"encode": {"seconds": 1.0}, "denoise": {"seconds": 7.0}, "decode": {"seconds": 2.0}}
    out = _summary("x", stages, [3.0, 2.0, 2.0], 50, Plan())
    assert out["denoise_seconds"] == pytest.approx(7.0 + 47 * 2.0)
    assert out["e2e_seconds"] == pytest.approx(1.0 + 101.0 + 2.0)
    assert _summary("x", dict(stages, decode={"seconds": 0, "oom": True}), [1.0], 1, Plan())["e2e_seconds"] is None


def test_e2e_and_teacache_sections_render(hosts, small_job):
    from lowvram.bench.e2e import all_on_gpu, planned
    from lowvram.bench.report import render
    from planner.plan import simple_plan

    job = small_job(steps=2)
    base = all_on_gpu(hosts, "tiny", "480p", steps=2, measured_steps=2, device="cpu", job=job, log=lambda s: None)
    plan = simple_plan("cpu", "fp32", "leaf_offload")
    mine = planned(hosts, "tiny", "480p", 8, 64, steps=2, measured_steps=2, plan=plan, job=job, log=lambda s: None)
    mine["ratio"] = mine["e2e_seconds"] / base["e2e_seconds"]
    data = dict(kind="e2e", model="1.3b", resolution="480p", budget_gib=8, steps=2, all_on_gpu=base, lowvram=mine)
    tea = dict(kind="teacache", model="1.3b", plan="p", budget_gib=4, steps=50, no_cache_seconds=60.0, computed_steps_actual=25, cached_seconds=31.0, expected_seconds=30.0, ratio_to_expected=31 / 30, block_bytes_moved_on_skipped_calls=0, block_bytes_moved_on_computed_calls=2**30)
    text = render([data, tea])
    assert "| all_on_gpu |" in text and "| lowvram |" in text and "x1.000" in text
    assert "| 60.0 | 25 of 50 | 31.0 | 30.0 | x1.033 | yes | 0 | 1.00 GiB |" in text


def test_cache_benchmark_runs_both_caches_under_a_resident_and_an_offloaded_plan(small_job):
    from lowvram.bench.cache import cache_schedules, damp_time_embedder, run_cache
    from lowvram.bench.e2e import Hosts
    from lowvram.bench.report import render
    from planner.plan import simple_plan

    tiny = Hosts("tiny", log=lambda s: None, device="cpu", configs=dict(CONFIGS, with_text_encoder=False, transformer=dict(TINY, freq_dim=256)))
    plans = [simple_plan("cpu", "fp32"), simple_plan("cpu", "fp32", "block_offload", use_stream=False)]
    out = run_cache("tiny", plans, budget_gib=4, hosts=tiny, job=small_job(steps=12), log=lambda s: None)
    assert [r["plan"] for r in out["runs"]] == [p.summary() for p in plans]
    for run in out["runs"]:
        assert run["no_cache_seconds"] > 0 and set(run["methods"]) == {"teacache", "magcache"}
        for m in run["methods"].values():
            assert 0 < m["computed_calls"] == m["scheduled_computed_calls"] < m["calls"] == 24
            assert m["block_bytes_moved_on_skipped_calls"] == 0
            assert m["ideal_speedup"] == pytest.approx(24 / m["computed_calls"]) and isinstance(m["meets_target"], bool)
    offloaded = out["runs"][1]
    assert offloaded["no_cache_block_bytes"] > 0 and all(m["block_bytes_moved_on_computed_calls"] > 0 for m in offloaded["methods"].values())
    text = render([out])
    assert "### Step skipping: Wan2.1 TINY 480p, 12 steps" in text and text.count("| magcache |") == 2

    # The TeaCache schedule is TeaCache's own decisions on the damped embedder: mixed, and a 2x target met.
    pipe = tiny.pipe()
    damp_time_embedder(pipe.transformer)
    tea = cache_schedules(pipe.transformer, small_job(steps=12), range(999, 0, -84), "tiny")["teacache"]
    assert {c.computed for c in tea.calls if not c.forced} == {True, False} and tea.predicted_speedup >= 2.0


def test_wan22_bench_runs_a_two_expert_case_and_composes(tmp_path):
    """The Wan2.2 benchmark's case runner and its composition, on the A14B demo model on the CPU."""
    from lowvram.bench.wan22 import compose, peaks_vs_plan, render, run_lowvram_case
    from lowvram.models.demo import ensure_demo

    folder = ensure_demo("tiny-random-a14b")
    case = run_lowvram_case("a14b", folder, 0, 16, steps=6, out_dir=tmp_path, size=(64, 64, 5))
    assert [p["component"] for p in case["phases"]] == ["transformer", "transformer_2"]
    assert {"denoise:high", "denoise:low"} <= set(case["measured"])
    resident = dict(encode_seconds=1.0, decode_seconds=1.0, step_seconds=[0.5, 0.5, 0.5], vram_max_allocated=0)
    case["composed"] = compose(case, resident, 40, 0.875, 12.0)
    assert case["composed"]["steps_per_expert"]["transformer"] + case["composed"]["steps_per_expert"]["transformer_2"] == 40
    assert case["composed"]["composed_seconds"] > 0
    case["peaks"] = peaks_vs_plan(case)
    assert {r["stage"] for r in case["peaks"]} >= {"encode", "denoise:high", "denoise:low", "decode"}
    text = render(dict(model="a14b", job="64x64x5", steps=6, card_steps=40, resident=resident, resident_composed=22.0,
                       cases=[case]))
    assert "| 0 GiB / 16 GiB RAM |" in text and "denoise:low" in text
    assert case["fallbacks"] == [] and "out of memory" not in text
    # a case the runtime had to finish on a leaner plan says so (run 17's TI2V cases did, unseen in the table)
    fell = dict(case, fallbacks=[dict(stage="denoise", reason="CUDA out of memory", summary="leaner")], ran_summary="leaner")
    text = render(dict(model="a14b", job="64x64x5", steps=6, card_steps=40, resident=resident, resident_composed=22.0,
                       cases=[fell]))
    assert "out of memory in denoise, finished as:** leaner" in text
