"""The benchmark harness's pure parts and its recipes on a tiny transformer on the CPU (no timing asserts)."""

from __future__ import annotations

import pytest
import torch

from lowvram.bench import report, shapes
from lowvram.bench.build import (
    HostCopy,
    build_transformer,
    transformer_inputs,
    transformer_on_meta,
)
from lowvram.bench.measure import CaseResult, Recipe, run_case
from lowvram.bench.recipes import group_offload, make_recipe, model_offload, resident

TINY = dict(shapes.WAN_COMMON, num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=2, text_dim=16, freq_dim=8)


def test_matrix_is_issue_8s():
    assert [(c.model, c.resolution, c.budget_gib) for c in shapes.MATRIX] == [
        ("1.3b", "480p", 4), ("1.3b", "480p", 8), ("1.3b", "480p", 24),
        ("14b", "480p", 8), ("14b", "480p", 12), ("14b", "480p", 16), ("14b", "480p", 24), ("14b", "720p", 24),
    ]
    assert [c.budget_gib for c in shapes.cases_for("14b", resolutions=("480p",))] == [8, 12, 16, 24]
    assert shapes.cases_for("14b", budgets=(24,), resolutions=("720p",)) == [shapes.BenchCase("14b", "720p", 24)]
    with pytest.raises(ValueError, match="unknown model"):
        shapes.cases_for("7b")


def test_token_counts_match_reference():
    assert shapes.latent_shape(480, 832, 81) == (1, 16, 21, 60, 104)
    assert shapes.tokens(480, 832, 81) == 32760
    assert shapes.tokens(720, 1280, 81) == 75600


def test_meta_shapes_have_the_real_sizes():
    small = transformer_on_meta("1.3b")
    big = transformer_on_meta("14b")
    assert sum(p.numel() for p in small.parameters()) == pytest.approx(1.42e9, rel=0.02)
    assert sum(p.numel() for p in big.parameters()) == pytest.approx(14.3e9, rel=0.02)
    # bf16 except what diffusers keeps in fp32 on load
    dtypes = {n: p.dtype for n, p in small.named_parameters()}
    assert dtypes["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    assert dtypes["scale_shift_table"] == torch.float32
    assert dtypes["condition_embedder.time_embedder.linear_1.weight"] == torch.float32


def _tiny_host():
    model = build_transformer("tiny", device="cpu", dtype=torch.float32, config=TINY)
    host = HostCopy.of(model, lambda: transformer_on_meta("tiny", TINY, torch.float32))
    inputs = transformer_inputs(32, 32, 5, device="cpu", dtype=torch.float32, text_tokens=8, text_dim=16)
    with torch.no_grad():
        ref = model(**inputs.kwargs())[0]
    return host, inputs, ref


def test_host_copy_gives_fresh_modules_sharing_storage():
    host, inputs, ref = _tiny_host()
    a = host.fresh()
    assert a.blocks[0].attn1.to_q.weight.data_ptr() == host.tensors["blocks.0.attn1.to_q.weight"].data_ptr()
    assert torch.isfinite(a.rope.freqs_cos).all()  # the rotary tables were rebuilt, not left empty
    with torch.no_grad():
        assert torch.equal(a(**inputs.kwargs())[0], ref)


@pytest.mark.parametrize("make", [
    lambda h, i: resident(h, i, device="cpu"),
    lambda h, i: group_offload(h, i, "block_level", device="cpu"),
    lambda h, i: group_offload(h, i, "leaf_level", device="cpu"),
    lambda h, i: model_offload(h, i, device="cpu"),
])
def test_recipes_run_and_match_on_cpu(make):
    host, inputs, ref = _tiny_host()
    recipe = make(host, inputs)
    outs = []
    orig_setup = recipe.setup

    def setup(result):
        fwd = orig_setup(result)
        return lambda: outs.append(fwd()[0]) or outs[-1]

    r = run_case(CaseResult("tiny", "tiny", None, recipe.name, 10), Recipe(recipe.name, setup, recipe.teardown), warmup=1, iters=2, cuda=False, log=lambda s: None)
    assert r.error is None and not r.oom, r.extra.get("traceback")
    assert len(r.step_times) == 2 and r.step_seconds is not None and r.peak_rss > 0
    assert len(outs) == 3 and all(torch.allclose(o, ref, atol=1e-6) for o in outs)
    # the host copy is untouched by the recipe (the next case starts from the same weights)
    with torch.no_grad():
        assert torch.equal(host.fresh()(**inputs.kwargs())[0], ref)


def test_run_case_records_oom_and_errors_without_raising():
    def oom_setup(result):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    r = run_case(CaseResult("m", "480p", 4, "x", 1), Recipe("x", oom_setup), cuda=False, log=lambda s: None)
    assert r.oom and r.step_seconds is None and "out of memory" in r.error

    torn = []
    r = run_case(CaseResult("m", "480p", 4, "y", 1), Recipe("y", lambda res: 1 / 0, lambda: torn.append(1)), cuda=False, log=lambda s: None)
    assert not r.oom and r.error.startswith("ZeroDivisionError") and torn == [1]


def test_unknown_recipe_is_refused():
    host, inputs, _ = _tiny_host()
    with pytest.raises(ValueError, match="unknown recipe"):
        make_recipe("magic", host, inputs, model="1.3b", resolution="480p", budget_gib=8, ram_gib=64, device="cpu")


GIB = 1024**3


def _case(**kw):
    base = dict(model="14b", resolution="480p", budget_gib=24, recipe="lowvram", tokens=32760, step_seconds=2.95, ratio=2.95 / 2.89, peak_vram_reserved=int(20 * GIB), peak_vram_allocated=int(19 * GIB), predicted_peak_vram=int(19 * GIB), peak_rss=int(40 * GIB), oom=False, error=None, skipped=None, notes=[], plan="transformer bf16, 20 blocks resident")
    base.update(kw)
    return base


def test_target_verdicts():
    assert report.target_verdict(_case()) == "ratio <= 1.03: met; pred ±10%: reserved met, allocated met; peak <= budget: met"
    slow = report.target_verdict(_case(ratio=1.10, predicted_peak_vram=int(15 * GIB)))
    assert "ratio <= 1.03: MISSED" in slow and "pred ±10%: reserved MISSED, allocated MISSED" in slow
    assert "reserved MISSED, allocated met" in report.target_verdict(_case(predicted_peak_vram=int(18 * GIB)))
    assert report.target_verdict(_case(budget_gib=16)).startswith("pred")  # no ratio target at 16 GiB
    assert "zero OOM: MISSED" in report.target_verdict(_case(oom=True, step_seconds=None, ratio=None))
    assert report.target_verdict(_case(recipe="block_stream")) == ""


def test_matrix_table_rows():
    data = {
        "model": "14b", "params": 14.3e9, "weights_bytes": 26.6 * GIB, "block_bytes": 0.66 * GIB,
        "environment": {"gpu": "NVIDIA H100", "torch": "2.11"},
        "floor": {"480p": _case(recipe="all_on_gpu", budget_gib=None, ratio=None, step_seconds=2.89, predicted_peak_vram=None)},
        "cases": [_case(), _case(recipe="model_offload", oom=True, step_seconds=None, ratio=None, predicted_peak_vram=None), _case(recipe="mmgp_p4", skipped="mmgp is not installed", step_seconds=None, ratio=None)],
        "block_times": {"480p": {"tokens": 32760, "mean_block_seconds": 0.07, "non_block_seconds": 0.01, "per_block_seconds": [0.07] * 40}},
        "activation_peaks": [{"tokens": 32760, "shape": [480, 832, 81], "peak_minus_resident_bytes": 3 * GIB}],
    }
    text = report.model_section(data, command="lowvram bench matrix --model 14b")
    lines = text.splitlines()
    assert "| 480p | uncapped | all_on_gpu | 2.890 | x1.000 |" in text
    assert any(l.startswith("| 480p | 24 | lowvram | 2.950 | x1.021 | 20.00 / 19.00 | 19.00 (+5.3% / +0.0%) | 40.00 | ok |") for l in lines)
    assert any("| model_offload |" in l and "| OOM |" in l for l in lines)
    assert any("| mmgp_p4 |" in l and "skipped: mmgp is not installed" in l for l in lines)
    assert "`lowvram bench matrix --model 14b`" in text
    assert "| 32760 | 0.0700 | 0.0100 | 40 |" in text
    assert "- 480p @ 24 GiB: transformer bf16, 20 blocks resident" in text


@pytest.mark.parametrize("placement", [("resident", 0), ("block_offload", 0), ("leaf_offload", 0), ("partial", 1)])
def test_lowvram_recipe_applies_a_plan_through_placement(placement):
    from lowvram.bench.recipes import lowvram
    from planner.plan import simple_plan

    kind, k = placement
    host, inputs, ref = _tiny_host()
    plan = simple_plan("cpu", "fp32", kind, resident_blocks=k)
    recipe = lowvram(host, inputs, "1.3b", "480p", 8, 64, plan=plan)
    r = run_case(CaseResult("tiny", "tiny", None, "lowvram", 10), recipe, warmup=1, iters=1, cuda=False, log=lambda s: None)
    assert r.error is None, r.extra.get("traceback")
    assert r.plan == plan.summary() and r.step_seconds is not None


def test_forced_plan_carries_the_planners_prediction():
    from lowvram.bench.recipes import forced_plan

    plan = forced_plan("int8:block_offload", "14b", "480p", 24, 64, device="cuda")
    t = plan.component("transformer")
    assert t.precision == "int8" and t.placement == "block_offload"
    denoise = next(s for s in plan.predicted if s.stage == "denoise")
    assert 0 < denoise.vram_bytes < 24 * GIB
    with pytest.raises(ValueError, match="QUANT:KIND"):
        forced_plan("int8", "14b", "480p", 24, 64)


def test_fit_recovers_the_constants_that_made_the_data():
    """lowvram.bench.fit turns measurements into planner constants: on data made from known constants
    it must give those constants back."""
    from lowvram.bench.fit import activation_fit, leaf_fit, streamed_block_seconds

    a, b = 3.5, 1.25
    points = [(t, d, f, t * (a * d + b * f)) for t, d, f in [(32760, 1536, 8960), (75600, 5120, 13824), (8190, 1536, 8960)]]
    assert activation_fit(points) == pytest.approx((a, b), rel=1e-9)

    n, floor, block, h2d = 40, 2.0, 0.5 * GIB, 20 * GIB  # compute 50 ms/block, copy 25 ms/block
    fixed, hook = 1e-3, 2e-4
    step = n * (max(floor / n, block / h2d) + fixed)
    assert streamed_block_seconds(step, floor, n, block, h2d) == pytest.approx(fixed)
    leaves = [400, 1200]
    cases = [(n * (max(f / n, block / h2d) + 0.3 * min(f / n, block / h2d)) + k * hook, f, n, block, k) for f, k in zip((2.0, 0.5), leaves)]
    assert leaf_fit(cases, h2d) == pytest.approx((0.3, hook), rel=1e-6)
