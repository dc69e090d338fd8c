"""Regional compile (lowvram.placement.compile) on the demo models, on the CPU with inductor.

Each test turns torch's recompile check on (`torch._dynamo.config.error_on_recompile`: any recompile raises)
and counts the graphs dynamo captured: one block graph serves every block, both CFG branches, every step,
both experts of a Wan2.2 A14B model and a resumed run. The compiled output equals the eager one within
float32 rounding (inductor fuses and reorders the same arithmetic).
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from planner.plan import ComponentPlan, fit_to
from plans import TP, plan_with

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@contextmanager
def no_recompiles():
    """Raise on any recompile; yields the dynamo counters (reset on entry)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    old = torch._dynamo.config.error_on_recompile
    torch._dynamo.config.error_on_recompile = True
    try:
        yield counters
    finally:
        torch._dynamo.config.error_on_recompile = old


def compiled(plan, **changes):
    """The plan with its denoisers compiled (and `changes` applied to them)."""
    from dataclasses import replace

    return replace(plan, components=tuple(replace(c, compile=True, **changes) if c.role == "denoiser" else c
                                          for c in plan.components))


def denoised(job, plan):
    from test_placement_kinds import run_stages

    latents, _, state = run_stages(job, plan)
    return latents, state


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def t2v_job(demo_t2v_path):
    from lowvram.job import Job

    return Job(prompt="a cat walks in the city", model="tiny-random", width=64, height=64, frames=5, steps=3, seed=3)


@pytest.fixture(scope="module")
def eager_latents(t2v_job):
    return denoised(t2v_job, plan_with("cpu"))[0]


def test_compile_resident_equals_eager_one_graph_for_all_blocks_steps_and_branches(t2v_job, eager_latents):
    with no_recompiles() as counters:
        latents, state = denoised(t2v_job, compiled(plan_with("cpu")))
    assert state["components"]["transformer"]["compiled"]
    # 2 blocks x 3 steps x 2 branches = 12 block calls, one graph
    assert counters["stats"]["unique_graphs"] == 1
    assert rel(latents, eager_latents) < 1e-4


@pytest.mark.parametrize("kind", [TP("partial", resident_blocks=1), TP("block_offload"), TP("disk_offload")],
                         ids=["partial", "block_offload", "disk_offload"])
def test_compile_under_offload_equals_eager_without_recompiles(t2v_job, eager_latents, kind):
    plan = compiled(plan_with("cpu", transformer=kind))
    with no_recompiles() as counters:
        latents, state = denoised(t2v_job, plan)
    assert state["components"]["transformer"]["compiled"] and state["components"]["transformer"]["offloaded"]
    assert counters["stats"]["unique_graphs"] == 1  # the hooks run eagerly around the compiled block
    assert rel(latents, eager_latents) < 1e-4


def test_compile_refused_under_leaf_offload():
    with pytest.raises(ValueError, match="leaf_offload"):
        ComponentPlan("transformer", "bf16", "leaf_offload", compile=True)


def test_two_experts_and_a_resumed_run_share_one_graph(tmp_path):
    """Wan2.2 A14B's two experts (one block shape), then the same job cancelled and resumed: no recompile."""
    import threading

    from lowvram.errors import CancelledError
    from lowvram.job import Job
    from lowvram.sampling import runner
    from lowvram.sampling.resume import load_resume_file
    from lowvram.telemetry import StepFinished

    from lowvram.models.demo import ensure_demo

    ensure_demo("tiny-random-a14b")
    # each expert's hooks attached only for its own phase (idle in its weights file): they wrap the compiled blocks
    plan = fit_to(plan_with("cpu", transformer=TP("block_offload")), ("text_encoder", "transformer", "transformer_2", "vae"))
    plan = compiled(plan, idle="mmap")
    job = Job(prompt="a cat", model="tiny-random-a14b", width=64, height=64, frames=5, steps=4, seed=2,
              out=str(tmp_path / "a.mp4"))
    with no_recompiles() as counters:
        full = runner.generate(job, plan)
        experts = {e.expert for e in full.events if isinstance(e, StepFinished)}
        assert experts == {"transformer", "transformer_2"}
        cancel = threading.Event()

        def stop_after_two(event):
            if isinstance(event, StepFinished) and event.step == 1:
                cancel.set()

        with pytest.raises(CancelledError):
            runner.generate(job.with_(out=str(tmp_path / "b.mp4")), plan, on_event=stop_after_two, cancel=cancel)
        resume = load_resume_file(str(tmp_path / "b.latents.safetensors"), out=str(tmp_path / "c.mp4"))
        resumed = runner.generate(resume.job, plan, resume=resume)
    assert counters["stats"]["unique_graphs"] == 1
    assert rel(resumed.latents, full.latents) < 1e-5


def test_a_failing_compiler_falls_back_to_eager_and_says_so(small_job, monkeypatch):
    """No usable C++ compiler (a user's machine without one): the blocks run eagerly, the run finishes with the
    eager result and its log says what happened."""
    import torch._inductor.config as inductor_config

    from lowvram.sampling import runner
    from lowvram.telemetry import LogMessage

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "/nonexistent/g++"))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)  # a cached graph would need no compiler
    torch._dynamo.reset()
    job = small_job()
    eager = runner.generate(job.with_(out=job.out.replace(".mp4", "-eager.mp4")), plan_with("cpu"))
    result = runner.generate(job, compiled(plan_with("cpu")))
    warnings = [e.message for e in result.events if isinstance(e, LogMessage) and "compiling its blocks failed" in e.message]
    assert warnings and "--no-compile" in warnings[0]
    assert torch.equal(result.latents, eager.latents)
