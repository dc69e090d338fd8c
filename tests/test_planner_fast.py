"""The planner with regional compile and fp8 / int8 matmuls: what it chooses on an RTX 4090 and an RTX 3090 (what-if
probes, the way a new user's `lowvram plan` sees them), why, and how its time model reproduces the anchors."""

from __future__ import annotations

import dataclasses

import pytest

from lowvram.job import Job
from planner import constants as C
from lowvram.placement.compile_records import compile_key, record_compile
from lowvram.placement.compile_records import warm_compiles
from planner.calibration import Calibration, load_calibration, save_calibration
from planner.choose import Preferences, make_plan
from planner.estimate import forward_seconds
from planner.plan import ComponentPlan, Plan, simple_plan
from planner.probe import GIB, synthetic_probe
from planner.spec import known_spec
from planner.timing import throughput_for

RTX4090 = dict(gpu_name="NVIDIA GeForce RTX 4090", compute_capability=(8, 9))
RTX3090 = dict(gpu_name="NVIDIA GeForce RTX 3090", compute_capability=(8, 6))
H200 = dict(gpu_name="NVIDIA H200", compute_capability=(9, 0))
MODEL = {"14b": "wan2.1-t2v-14b", "1.3b": "wan2.1-t2v-1.3b"}


def job(model: str, steps: int = 50, width: int = 832, height: int = 480) -> Job:
    return Job(prompt="a cat", model=MODEL[model], width=width, height=height, steps=steps)


def plan_for(model: str, vram: float, gpu: dict, prefs: Preferences = Preferences(), **job_changes):
    return make_plan(synthetic_probe(vram, 64, **gpu), known_spec(MODEL[model]), job(model, **job_changes), prefs)


def denoise_vram(plan: Plan) -> int:
    return max(s.vram_bytes for s in plan.predicted if s.stage == "denoise")


# (model, VRAM GiB, GPU) -> (precision, placement, compiled) the planner chooses for a first run (50 steps with CFG;
# quantizing and a cold compile counted). fp8_fast's cold compile costs what bf16's does (~12 s; run 22, H200:
# 9.4 s, once torchao's coordinate-descent tuning is off), so on an RTX 4090 a first run already goes fp8_fast:
# its matmuls save more than quantizing the weights costs. The RTX 3090 has no fp8 and int8_fast is unmeasured.
CHOICES = {
    ("14b", 24, "4090"): ("fp8_fast", "resident", True),
    ("14b", 12, "4090"): ("fp8_fast", "partial", True),
    ("1.3b", 8, "4090"): ("fp8_fast", "resident", True),
    ("1.3b", 4, "4090"): ("fp8_fast", "partial", True),
    ("14b", 24, "3090"): ("bf16", "partial", True),
    ("14b", 12, "3090"): ("bf16", "partial", True),
    ("1.3b", 8, "3090"): ("bf16", "resident", True),
    ("1.3b", 4, "3090"): ("bf16", "partial", True),
}
# The same jobs again on an RTX 4090: the fast weights in lowvram's cache, the compile warm in inductor's.
SECOND_RUN = {
    ("14b", 24): ("fp8_fast", "resident", True),
    ("14b", 12): ("fp8_fast", "partial", True),
    ("1.3b", 8): ("fp8_fast", "resident", True),
    ("1.3b", 4): ("fp8_fast", "partial", True),
}


@pytest.mark.parametrize("case", sorted(CHOICES), ids=lambda c: f"{c[0]}-{c[1]}GiB-rtx{c[2]}")
def test_the_choice_on_an_rtx_4090_and_an_rtx_3090(case):
    model, vram, gpu = case
    result = plan_for(model, vram, RTX4090 if gpu == "4090" else RTX3090)
    t = result.plan.component("transformer")
    assert (t.precision, t.placement, t.compile) == CHOICES[case]
    budget = (vram * GIB) - Preferences().vram_reserve
    if t.placement == "partial":  # the VRAM that is there is used: resident blocks up to the budget
        assert denoise_vram(result.plan) >= 0.9 * budget
    text = "\n".join(result.explanation)
    for part in ("why: precision", "why: placement", "why: compile"):
        assert part in text
    if gpu == "3090":
        assert "fp8_fast needs compute capability >= 8.9 (this GPU: 8.6)" in text
        assert "int8_fast is not measured faster than bf16" in text
    elif t.precision == "fp8_fast":
        assert f"per-forward error {C.FAST_LEVEL_ERROR['fp8_fast']:.1%} vs bf16 on the test model (bound 5.0%" in text
        assert "10.5% on the 14B's shapes with random weights (quanto fp8, allowed by default: 12.7%)" in text
    else:  # the tie (it says by how little fp8_fast would have been faster) or fp8_fast is slower over the job
        assert "precision bf16: fp8_fast was lower precision, faster by only" in text or \
            "precision bf16: fp8_fast was slower by" in text


def second_run(model: str, vram: float):
    spec = known_spec(MODEL[model])
    spec = dataclasses.replace(spec, quantized_cached=tuple((d.name, level) for d in spec.denoisers
                                                            for level in ("fp8_fast", "int8_fast")))
    return make_plan(synthetic_probe(vram, 64, **RTX4090), spec, job(model), Preferences(),
                     warm_precisions=("bf16", "fp8_fast"))


@pytest.mark.parametrize("case", sorted(SECOND_RUN), ids=lambda c: f"{c[0]}-{c[1]}GiB")
def test_the_choice_on_an_rtx_4090_for_a_second_run(case):
    result = second_run(*case)
    t = result.plan.component("transformer")
    assert (t.precision, t.placement, t.compile) == SECOND_RUN[case]
    if t.precision == "fp8_fast":
        assert any("from inductor's cache" in r for r in result.plan.reasons)


def test_lowvram_plan_explains_the_choice_in_words(capsys):
    from lowvram.cli import main

    assert main(["plan", "--model", "wan2.1-t2v-14b", "--vram", "12", "--ram", "64", "--gpu-name", "RTX 4090",
                 "--compute-capability", "8.9"]) == 0
    out = capsys.readouterr().out
    assert "transformer fp8_fast" in out and "compiled" in out
    assert "why: placement:" in out and "blocks resident, the rest streamed" in out and "hides behind the compute" in out
    assert "why: compile: the 40 blocks are compiled once" in out


def test_leaf_offload_is_never_compiled_and_fast_levels_only_compiled():
    result = plan_for("14b", 12, RTX4090)
    for c in result.candidates:
        d = c.plan.component("transformer")
        assert not (d.compile and d.placement == "leaf_offload")
        assert d.compile or not d.fast


def test_prefer_quality_keeps_fast_matmuls_out():
    result = plan_for("14b", 24, RTX4090, Preferences(prefer="quality"))
    assert not any(c.plan.component("transformer").fast for c in result.candidates)
    assert not result.plan.component("transformer").fast
    assert "--prefer quality (no fp8/int8 matmuls" in "\n".join(result.plan.reasons)


def test_the_error_bound_rules_fast_levels_out():
    result = plan_for("14b", 24, RTX4090, Preferences(max_error=C.FAST_LEVEL_ERROR["fp8_fast"] / 2))
    assert result.plan.component("transformer").precision == "bf16"
    fp8 = [c for c in result.candidates if c.plan.component("transformer").precision == "fp8_fast"]
    assert fp8 and all(c.ruled_out and "above the bound" in c.rejected_reason for c in fp8)


def test_compile_only_when_the_job_amortizes_it():
    few = plan_for("1.3b", 8, RTX3090, steps=4)
    assert not few.plan.component("transformer").compile
    assert any(r.startswith("compile: not worth it for 8 forwards") for r in few.plan.reasons)
    many = plan_for("1.3b", 8, RTX3090, steps=50)
    assert many.plan.component("transformer").compile
    # the compile time is in the plan: the denoise stage of the compiled plan carries it
    eager = dataclasses.replace(many.plan.component("transformer"), compile=False)
    twin = next(c.plan for c in many.candidates if c.plan.component("transformer") == eager
                and c.plan.components[0] == many.plan.components[0] and c.plan.components[-1] == many.plan.components[-1])
    tp = throughput_for(synthetic_probe(8, 64, **RTX3090))
    spec, tokens = known_spec(MODEL["1.3b"]), known_spec(MODEL["1.3b"]).tokens(832, 480, 81)
    per_forward = forward_seconds(twin, eager, spec, tokens, tp) - forward_seconds(many.plan, many.plan.component("transformer"), spec, tokens, tp)
    gain = 100 * per_forward - C.COMPILE_SECONDS_COLD[many.plan.component("transformer").precision]
    assert twin.stage_seconds("denoise") - many.plan.stage_seconds("denoise") == pytest.approx(gain)


def test_a_warm_compile_cache_makes_compile_pay_sooner():
    """The 14B at 24 GiB on a 4090: the plan is fp8_fast compiled on a first run (quantizing and a cold compile to
    pay) and with its weights cached, and a warm compile (inductor's cache) takes the table's difference off its
    denoise stage and says so."""
    from planner.estimate import quantize_seconds

    spec = known_spec(MODEL["14b"])
    cached = dataclasses.replace(spec, quantized_cached=(("transformer", "fp8_fast"),))
    probe = synthetic_probe(24, 64, **RTX4090)
    first = make_plan(probe, spec, job("14b"), Preferences())
    assert first.plan.component("transformer").precision == "fp8_fast"
    cold = make_plan(probe, cached, job("14b"), Preferences(), warm_precisions=("bf16",))
    quantizing = quantize_seconds(spec, first.plan.denoisers)
    assert quantizing > 0 and first.plan.predicted_seconds == pytest.approx(cold.plan.predicted_seconds + quantizing)
    warm = make_plan(probe, cached, job("14b"), Preferences(), warm_precisions=("bf16", "fp8_fast"))
    for result in (cold, warm):
        assert result.plan.component("transformer").precision == "fp8_fast" and result.plan.component("transformer").compile
    assert any("from inductor's cache" in r for r in warm.plan.reasons)
    assert not any("from inductor's cache" in r for r in cold.plan.reasons)
    saved = cold.plan.stage_seconds("denoise") - warm.plan.stage_seconds("denoise")
    assert saved == pytest.approx(C.COMPILE_SECONDS_COLD["fp8_fast"] - C.COMPILE_SECONDS_WARM["fp8_fast"]) and saved > 0


def test_compile_records_mark_a_job_warm(tmp_path):
    spec = known_spec(MODEL["14b"])
    tokens = spec.tokens(832, 480, 81)
    path = tmp_path / "records.json"
    assert warm_compiles(spec, tokens, "NVIDIA H200", path) == ()
    d = spec.dims
    record_compile(compile_key(d.dim, d.ffn_dim, d.heads, d.has_image_branch, "fp8_fast", tokens, "NVIDIA H200"), 41.5, path)
    assert warm_compiles(spec, tokens, "NVIDIA H200", path) == ("fp8_fast",)
    assert warm_compiles(spec, tokens, "NVIDIA GeForce RTX 4090", path) == ()  # another GPU compiles anew
    assert warm_compiles(spec, spec.tokens(1280, 720, 81), "NVIDIA H200", path) == ()  # other shapes too


@pytest.mark.parametrize("factor, chosen", [(0.6, "int8_fast"), (1.2, "bf16")])
def test_a_calibration_decides_int8_on_ampere(tmp_path, factor, chosen):
    """int8_fast stays out until measured faster than bf16 on the user's GPU (`lowvram calibrate`)."""
    cal = Calibration(gpu_name=RTX3090["gpu_name"], created="2026-11-29", gpu_flops=71e12 * C.MATMUL_EFFICIENCY,
                      h2d_pinned=25e9, h2d_pageable=4.7e9, cpu_flops=2e11, tokens=32760, block_seconds=0.02,
                      compile_factor=0.85, int8_linear_factor=factor)
    path = save_calibration(cal, tmp_path / "calibration.json")
    assert load_calibration(path) == cal
    result = make_plan(synthetic_probe(24, 64, **RTX3090), known_spec(MODEL["14b"]), job("14b"), Preferences(), load_calibration(path))
    assert result.plan.component("transformer").precision == chosen
    if factor >= 1:
        int8 = [c for c in result.candidates if c.plan.component("transformer").precision == "int8_fast"]
        assert all("measured slower than bf16 here" in c.rejected_reason for c in int8)


def test_a_version_1_calibration_still_reads(tmp_path):
    import json

    old = dict(gpu_name="NVIDIA H200", created="2026-10-01", gpu_flops=5e14, h2d_pinned=5.5e10, h2d_pageable=1e10,
               cpu_flops=2e11, tokens=32760, block_seconds=0.02, version=1)
    (tmp_path / "c.json").write_text(json.dumps(old))
    cal = load_calibration(tmp_path / "c.json")
    assert cal is not None and cal.compile_factor == 0.0 and cal.fp8_linear_factor == 0.0
    tp = throughput_for(synthetic_probe(24, 64, **H200), cal)
    assert tp.compile_factor("resident") == C.COMPILE_COMPUTE_FACTOR["resident"]  # not measured: the default


@pytest.mark.parametrize("model, compiled, fp8", [("1.3b", 0.83, 0.78), ("14b", 0.86, 0.72)])
def test_the_time_model_reproduces_the_h200_anchors(model, compiled, fp8):
    """REFERENCE.md: regional compile x0.83 / x0.86, fp8 + compile x0.78 / x0.72 of the eager bf16 step."""
    spec = known_spec(MODEL[model])
    tokens = spec.tokens(832, 480, 81)
    tp = throughput_for(synthetic_probe(141, 256, **H200))

    def step(precision: str, compile: bool) -> float:
        cp = ComponentPlan("transformer", precision, "resident", compile=compile)
        return forward_seconds(Plan("cuda", (cp,)), cp, spec, tokens, tp)

    eager = step("bf16", False)
    assert step("bf16", True) / eager == pytest.approx(compiled, rel=0.03)
    assert step("fp8_fast", True) / eager == pytest.approx(fp8, rel=0.05)
    assert step("fp8_fast", False) / eager > 1.0  # fast only compiled


def test_h200_at_12_gib_uses_its_vram_and_beats_leaf_offload():
    """The issue's case: leaf offload used 5.9 of 12 GiB. Now resident blocks fill the budget and streaming the
    rest is predicted faster than every leaf-offload plan, at fp8_fast compiled: on a first run (quantizing and a
    cold compile to pay for) and on a later one (fp8 weights and compiled blocks cached)."""
    spec = known_spec(MODEL["14b"])
    later = dataclasses.replace(spec, quantized_cached=(("transformer", "fp8_fast"),))
    for spec_, warm, precision in ((spec, (), "fp8_fast"), (later, ("fp8_fast", "bf16"), "fp8_fast")):
        result = make_plan(synthetic_probe(12, 64, **H200), spec_, job("14b"), Preferences(), warm_precisions=warm)
        t = result.plan.component("transformer")
        assert t.placement == "partial" and t.precision == precision
        assert denoise_vram(result.plan) >= 0.9 * (12 * GIB - Preferences().vram_reserve)
        leaf = [c.plan.predicted_seconds for c in result.candidates
                if c.fits and c.plan.component("transformer").placement == "leaf_offload"]
        assert leaf and result.plan.predicted_seconds < min(leaf)


def test_compile_in_the_plan_and_its_description():
    plan = simple_plan("cuda", "fp8_fast", "partial", resident_blocks=3, compile=True)
    t = plan.component("transformer")
    assert t.describe() == "fp8_fast 3 blocks resident, the rest streamed with streams, compiled"
    # a plan written before compile existed reads as not compiled
    data = plan.to_dict()
    for c in data["components"]:
        del c["compile"]
    assert not Plan.from_dict(data).component("transformer").compile
    with pytest.raises(ValueError, match="compile applies to the denoisers"):
        ComponentPlan("vae", "fp32", "gpu", compile=True)
    with pytest.raises(ValueError, match="for the denoisers only"):
        ComponentPlan("text_encoder", "fp8_fast", "gpu")
    with pytest.raises(TypeError, match="compile must be a bool"):
        ComponentPlan("transformer", "bf16", "resident", compile="yes")


def test_the_oom_ladder_keeps_compile_until_leaf_offload():
    from planner.fallback import ladder

    for precision in ("bf16", "fp8_fast"):
        rungs = [r.component("transformer") for r in ladder(simple_plan("cuda", precision, "resident", compile=True), "denoise", 40)]
        kinds = [(t.placement, t.compile) for t in rungs if t.precision == precision]
        assert kinds[0] == ("partial", True) and ("block_offload", True) in kinds
        assert ("leaf_offload", False) in kinds and ("leaf_offload", True) not in kinds
