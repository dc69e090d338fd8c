"""`lowvram bench multigpu` on the CPU with tiny shapes: every part runs its real code path (processes, diffusers'
context parallel over gloo, lowvram's placement of the planner's kinds of plans) and reports what the GPU run will.
The numbers mean nothing here; that the parts run, compare and report does."""

from __future__ import annotations

import dataclasses

import pytest

from lowvram.bench.multigpu import Setup, on_cpu, run_a14b, run_cp, run_smoke, run_split, table
from lowvram.models.demo import _TRANSFORMER
from planner.plan import ComponentPlan, Plan

TINY = Setup(device="cpu", config=dict(_TRANSFORMER, in_channels=16), resolution=(64, 64, 5), warmup=1, iters=1,
             isolate=False)  # one-process parts run in the test's process (the two-process ones still spawn)


@pytest.mark.slow
def test_context_parallel_part_matches_one_process():
    data = run_cp(TINY)
    assert data["one_gpu"]["forward_seconds"] > 0 and data["context_parallel"]["kind"] == "ulysses"
    assert data["context_parallel"]["vs_one_gpu"]["max_abs_diff"] < 1e-5
    assert data["ratio"] > 0 and "| 14B 720p, context parallel (eager) |" in table({"cp720": data})


@pytest.mark.slow
def test_compiled_context_parallel_part_compiles_as_the_runtime_does():
    """--compile compiles with lowvram's regional compile under diffusers' context parallel (two gloo processes),
    as `lowvram generate` does: it runs, and its output is one process's within float32 compile rounding."""
    data = run_cp(dataclasses.replace(TINY, compile=True))
    compiled = data["context_parallel_compiled"]
    assert "error" not in compiled, compiled
    assert compiled["forward_seconds"] > 0 and compiled["vs_one_gpu"]["max_abs_diff"] < 1e-4


def test_the_fast_level_under_context_parallel_is_a_result_even_where_it_cannot_run():
    """--fast on the CPU (float32 weights, no fp8 matmul): the part records why, the table says so, the rest stands."""
    from dataclasses import replace

    data = run_cp(replace(TINY, fast="fp8_fast"))
    fast = data["context_parallel_fast"]
    assert fast["level"] == "fp8_fast" and "error" in fast and data["context_parallel"]["forward_seconds"] > 0
    assert "| 14B 720p, context parallel + fp8_fast + regional compile |" in table({"cp720": data})


def test_plan_parts_run_the_planners_kinds_of_plans():
    one = Plan("cuda", (ComponentPlan("transformer", "bf16", "partial", resident_blocks=1),))
    two = Plan("cuda", (ComponentPlan("transformer", "bf16", "resident", devices=("cuda:0", "cuda:1"), split=(1,)),))
    split = run_split(TINY, plans=(on_cpu(one), on_cpu(two)))  # (a context-parallel plan: the part above and the smoke)
    assert split["one_gpu"]["plan"] == "everything on the CPU (fp32)"  # a CPU plan says so; its transformer is partial
    assert "blocks 0-0 on cpu:0, blocks 1+ on cpu:1" in split["two_gpus"]["plan"]
    # the same weights and inputs: the same output norm whichever way it ran
    assert split["one_gpu"]["output_norm"] == pytest.approx(split["two_gpus"]["output_norm"], rel=1e-5)
    apart = Plan("cuda", (ComponentPlan("transformer", "bf16", "resident", devices=("cuda:0",)),
                          ComponentPlan("transformer_2", "bf16", "partial", resident_blocks=1, devices=("cuda:1",))))
    a14b = run_a14b(TINY, plan=on_cpu(apart))
    assert a14b["measured"]["vs_resident"]["max_abs_diff"] < 1e-5 and a14b["ratio"] > 0
    assert sum(a14b["steps"].values()) == 40 and a14b["transformer_calls"] == 80
    text = table({"split480": split, "a14b": a14b})
    assert "12 GiB caps" in text and "one expert per 24 GiB GPU" in text


@pytest.mark.slow
def test_smoke_runs_every_way_on_two_devices(tmp_path):
    data = run_smoke(dataclasses.replace(TINY), tmp_path)
    assert data["ok"], data
    assert data["ulysses"]["bit_equal"]  # ulysses over gloo: the one-process latents, bit for bit
    assert data["split"]["vs_one_gpu"]["max_abs_diff"] < 1e-4 and data["a14b_apart"]["vs_one_gpu"]["max_abs_diff"] < 1e-4
    assert (tmp_path / "ulysses.mp4").exists() and not list(tmp_path.glob("rank*"))
    assert "smoke ulysses" in table({"smoke": data})
