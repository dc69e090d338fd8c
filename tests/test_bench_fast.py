"""`lowvram bench fast` (issue 13's table): its verdicts and its composition on made-up results, and the whole
harness once on the CPU with a tiny transformer (compiled with inductor; no timing asserts)."""

from __future__ import annotations

import dataclasses

import pytest

from lowvram.bench import shapes
from lowvram.bench.fast import BF16_ONLY_TARGET, E2E_TARGET, FAST_TARGETS, FastSetup, e2e, fit_fast, run_fast
from lowvram.bench.report import fast_rows, fast_section, render
from planner.plan import simple_plan

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def case(kind, res, budget, step, ratio, predicted=None, plan=None, recipe=None):
    p = plan or simple_plan("cuda", "fp8_fast", "resident", compile=True)
    return dict(kind=kind, resolution=res, budget_gib=budget, recipe=recipe or kind, step_seconds=step, ratio=ratio,
                predicted_step_seconds=predicted, plan=p.summary(), plan_dict=p.to_dict(), warmup_extra_seconds=40.0)


def made_up() -> dict:
    floor = 3.0
    return {"kind": "fast", "environment": {"gpu": "NVIDIA H200", "torchao": "0.18.0"}, "models": {"14b": {
        "floor": {"480p": {"step_seconds": floor}},
        "warm_compile_seconds": 4.0,
        "warm_compile_by_level": {"fp8_fast": 9.0},
        "resident": {"bf16": {"step_seconds": 2.55, "warmup_extra_seconds": 35.0},
                     "fp8_fast": {"step_seconds": 2.1, "warmup_extra_seconds": 41.0}},
        "errors": {"fp8_fast": 0.021, "int8_fast": 0.012},
        "ffn": {"bf16": {"seconds": 0.01}, "fp8_fast": {"seconds": 0.0068, "factor": 0.68, "error": 0.03},
                "int8_fast": {"seconds": 0.011, "factor": 1.1, "error": 0.01}},
        "cases": [case("planner", "480p", 24, 2.16, 0.72, predicted=2.0),
                  case("bf16_only", "480p", 24, 2.7, 0.90, predicted=2.0),  # 35% off the prediction
                  case("planner", "480p", 12, 2.7, 0.90, predicted=2.6)],
        "upstream": [dict(recipe="block_stream", ratio=1.11), dict(recipe="block_stream_compile", ratio=0.88)],
    }}}


def test_table_verdicts():
    rows = {(r["resolution"], r["budget_gib"]): r for r in fast_rows(made_up())}
    at24, at12 = rows[("480p", 24)], rows[("480p", 12)]
    assert at24["checks"] == {"target": True, "bf16_only": True, "beats_upstream": True, "prediction": True,
                              "prediction_bf16_only": False}
    assert at24["best_upstream"]["recipe"] == "block_stream_compile"
    assert at12["checks"]["target"] is False and at12["checks"]["beats_upstream"] is False  # 0.90 > 0.85, > 0.88
    assert at12["checks"]["bf16_only"] is None  # not measured: no verdict
    text = fast_section(made_up(), "lowvram bench fast")
    assert "x0.720 (<= 0.75: met)" in text and "x0.900 (<= 0.85: MISSED)" in text
    assert "fp8_fast 2.10%" in text and "int8_fast x1.10" in text
    assert render([made_up()]).startswith("### Compile and fp8/int8 matmuls")


def test_end_to_end_is_composed_from_the_measured_steps():
    data = made_up()
    out = e2e(data, 64.0)
    forwards = 100
    encode_decode = out["encode_decode_predicted_seconds"]
    # the compile counted is the level's cold one (41 s, resident fp8_fast), not the plan case's own warm-up (40 s),
    # which reused graphs compiled earlier in the process
    assert out["plan_seconds"] == pytest.approx(forwards * 2.16 + 41.0 + encode_decode)
    assert out["compile_seconds"] == 41.0 and out["quantize_seconds"] == 0.0
    # a first run quantizes too, when the run measured it; a second run loads the quantized cache
    data["models"]["14b"]["quantize_seconds"] = {"fp8_fast": 3.0}
    assert e2e(data, 64.0)["plan_seconds"] == pytest.approx(out["plan_seconds"] + 3.0)
    assert e2e(data, 64.0)["second_run"]["plan_seconds"] == pytest.approx(out["second_run"]["plan_seconds"])
    # a second run pays the level's warm compile (9 s) instead
    assert out["second_run"]["plan_seconds"] == pytest.approx(forwards * 2.16 + 9.0 + encode_decode)
    assert out["second_run"]["ratio"] == pytest.approx(out["second_run"]["plan_seconds"] / out["floor_seconds"])
    assert out["floor_seconds"] == pytest.approx(forwards * 3.0 + encode_decode)
    assert out["ratio"] == pytest.approx(out["plan_seconds"] / out["floor_seconds"]) and out["target"] == E2E_TARGET
    assert "composed" in out["note"]


def test_refit_reads_the_constants_from_a_run():
    fit = fit_fast(made_up())
    assert fit["COMPILE_COMPUTE_FACTOR[resident]"]["14b"] == pytest.approx(0.85)
    assert fit["FAST_LINEAR_FACTOR"] == {"fp8_fast": {"14b": 0.68}, "int8_fast": {"14b": 1.1}}
    assert fit["FAST_LEVEL_ERROR"] == {"fp8_fast": 0.021, "int8_fast": 0.012}
    assert fit["COMPILE_SECONDS_COLD"] == {"bf16": 35.0, "fp8_fast": 41.0} and fit["COMPILE_SECONDS_WARM"] == {"bf16": 4.0, "fp8_fast": 9.0}


def test_the_table_is_the_issues():
    assert FAST_TARGETS == {("14b", "480p", 24): 0.75, ("14b", "480p", 12): 0.85, ("14b", "720p", 24): 0.85,
                            ("1.3b", "480p", 8): 0.80, ("1.3b", "480p", 4): 0.90}
    assert BF16_ONLY_TARGET == 0.95


TINY = dict(shapes.WAN_COMMON, num_attention_heads=2, attention_head_dim=16, ffn_dim=64, num_layers=2, text_dim=16, freq_dim=8)


@pytest.mark.slow
def test_the_harness_runs_on_the_cpu_with_a_tiny_transformer():
    """Every step of the harness on the CPU: floor, compiled, int8_fast in place, the FFN, forced plans at two
    budgets, an upstream recipe; the table renders. (fp8 needs a GPU; CPU timings mean nothing.)"""

    def plans(model, res, budget, prefs):
        level = "bf16" if prefs == "bf16_only" else "int8_fast"
        kind = "partial" if budget < 8 else "resident"
        return simple_plan("cpu", level, kind, resident_blocks=1 if kind == "partial" else 0, compile=True,
                           components=("transformer",))

    setup = FastSetup(models=("1.3b",), configs={"1.3b": TINY}, cases=(("1.3b", "480p", 8), ("1.3b", "480p", 4)),
                      levels=("int8_fast",), device="cpu", iters={"1.3b": 1}, floor_iters={"1.3b": 1}, plan_fn=plans,
                      text_tokens=8, text_dim=16, shapes={"480p": (32, 32, 5)}, upstream=("block_stream",),
                      ffn_models=("1.3b",))
    data = run_fast(setup, log=lambda s: None)
    m = data["models"]["1.3b"]
    assert m["floor"]["480p"]["step_seconds"] > 0 and m["resident"]["bf16"]["step_seconds"] > 0
    assert m["resident"]["bf16"]["error_vs_eager_bf16"] < 1e-2  # compiled bf16 = eager up to rounding
    assert m["warm_compile_seconds"] is not None and m["warm_compile_by_level"]["int8_fast"] is not None
    assert 0 < m["errors"]["int8_fast"] < 0.05
    assert m["ffn"]["int8_fast"]["factor"] > 0
    assert {(c["kind"], c["budget_gib"]) for c in m["cases"]} == {("planner", 8), ("bf16_only", 8), ("planner", 4), ("bf16_only", 4)}
    assert all(c["error"] is None and not c["oom"] for c in m["cases"] + m["upstream"])
    assert [u["recipe"] for u in m["upstream"]] == ["block_stream"]
    assert "1.3b 480p @ 8 GiB" in fast_section(data)


def test_table_only_measures_the_cases_and_leaves_the_extras_to_another_process():
    """--table-only (a second GPU's process): the floor, the compiled levels and every case, but no warm-compile run,
    no quanto fp8 error and no FFN factors."""

    def plans(model, res, budget, prefs):
        return simple_plan("cpu", "bf16" if prefs == "bf16_only" else "int8_fast", "resident", compile=True,
                           components=("transformer",))

    setup = FastSetup(models=("1.3b",), configs={"1.3b": TINY}, cases=(("1.3b", "480p", 8),), levels=("int8_fast", "fp8_fast"),
                      device="cpu", iters={"1.3b": 1}, floor_iters={"1.3b": 1}, plan_fn=plans, text_tokens=8, text_dim=16,
                      shapes={"480p": (32, 32, 5)}, upstream=(), ffn_models=("1.3b",), extras=False)
    import copy

    saved: list = []
    m = run_fast(setup, log=lambda s: None, save=lambda d: saved.append(copy.deepcopy(d)))["models"]["1.3b"]
    assert "warm_compile_seconds" not in m and "warm_compile_by_level" not in m and "ffn" not in m
    # every save holds what was measured so far (run 19 lost a cut-short run's cases: only the end wrote them)
    assert saved[0]["models"]["1.3b"]["floor"]["480p"]["step_seconds"] > 0 and not saved[0]["models"]["1.3b"]["cases"]
    assert set(m["errors"]) == {"int8_fast"}  # the planner's level only: no fp8_fast, no quanto fp8
    assert {c["kind"] for c in m["cases"]} == {"planner", "bf16_only"} and m["resident"]["int8_fast"]["step_seconds"] > 0
    # --kinds bf16_only: that plan alone per row
    only = run_fast(dataclasses.replace(setup, kinds=("bf16_only",), profile_first=("bf16_only",)), log=lambda s: None)["models"]["1.3b"]
    assert [c["kind"] for c in only["cases"]] == ["bf16_only"]
    # --profile-first: where the plan's first forward spent its time
    profile = only["cases"][0]["extra"]["first_profile"]
    assert profile and {r["sort"] for r in profile} == {"cumulative", "tottime"}
    assert "first_profile" not in m["cases"][0]["extra"]
    # ... and no fast level is quantized or compiled for it (a bf16-only process skips that GPU time)
    assert set(only["resident"]) == {"bf16"} and not only["errors"] and "quantize_seconds" not in only
    assert m["quantize_seconds"]["int8_fast"] > 0


def test_options_that_select_no_row_exit_2_naming_the_rows(capsys):
    """`bench fast` options are checked before any GPU work: a selection with no row says which rows exist."""
    from lowvram.cli import main

    assert main(["bench", "fast", "--models", "1.3b", "--budgets", "24"]) == 2
    err = capsys.readouterr().err
    assert "no row of the table matches --models 1.3b" in err and "1.3b 480p @ 8 GiB" in err and "CUDA" not in err
    assert main(["bench", "fast", "--models", "7b"]) == 2
    assert "--models: 7b unknown" in capsys.readouterr().err
    assert main(["bench", "fast", "--models", "14b", "--kinds", "fastest"]) == 2
    assert "--kinds: fastest; use planner and/or bf16_only" in capsys.readouterr().err


def test_bench_wan22_checks_its_cases_then_needs_a_gpu(capsys):
    """A malformed --cases exits 2 naming it; well-formed ones on a machine without CUDA exit 2 saying so (no
    traceback from torch)."""
    import torch

    from lowvram.cli import main

    assert main(["bench", "wan22", "--cases", "12", "--folder", "/tmp/x"]) == 2
    assert "--cases: '12' is not VRAM:RAM" in capsys.readouterr().err
    assert main(["bench", "wan22", "--cases", "12:-1", "--folder", "/tmp/x"]) == 2
    assert "must be positive" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "wan22", "--cases", "12:32", "--folder", "/tmp/x"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_fp8_compile_runs_on_the_cpu_with_a_tiny_transformer(monkeypatch):
    """`lowvram bench fp8-compile` on the CPU (fp8 through torch's CPU _scaled_mm, torchao's hardware check
    lifted): both compiles, the fp8 one profiled, both quantizing paths, errors against bf16; no timing asserts."""
    from torchao.quantization import quant_api

    from lowvram.bench.fp8_compile import run_fp8_compile
    from lowvram.placement import fast_quant

    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularities: None)
    monkeypatch.setattr(fast_quant, "check_device", lambda level, device: None)
    monkeypatch.setitem(shapes.RESOLUTIONS, "480p", (32, 32, 5))
    data = run_fp8_compile("1.3b", "480p", layers=2, iters=1, device="cpu", config=dict(TINY, text_dim=4096),
                           tries=({"triton.autotune_pointwise": False},))
    assert data["block_params"] > 0 and data["quantize_cpu_params_per_second"] > 0 and data["quantize_gpu_params_per_second"] > 0
    r = data["compiled"]
    assert r["step_seconds"] > 0 and r["compile_seconds"] >= 0 and r["level"] == "fp8_fast"
    assert 0 < r["error_vs_eager_bf16"] < 0.05 and data["bf16_compiled"]["error_vs_eager_bf16"] < 1e-2
    assert r["profile"] and all(row["cumtime"] >= 0 for row in r["profile"])  # where the compile's time went
    (tried,) = data["tries"]  # one more cold compile with the option in effect
    assert tried["options"] == {"triton.autotune_pointwise": False} and tried["step_seconds"] > 0
    assert tried["error_vs_eager_bf16"] == pytest.approx(r["error_vs_eager_bf16"], rel=0.2)


def test_bench_fp8_compile_reads_its_tries_and_refuses_unknown_inductor_names(capsys):
    from lowvram.bench.fp8_compile import parse_options
    from lowvram.cli import main

    assert parse_options("triton.autotune_pointwise=False; max_autotune_gemm_backends=ATEN,TRITON;compile_threads=4") == {
        "triton.autotune_pointwise": False, "max_autotune_gemm_backends": "ATEN,TRITON", "compile_threads": 4}
    assert parse_options("") == {}
    with pytest.raises(ValueError, match="key=value"):
        parse_options("autotune")
    # before any GPU work: exit 2 naming the problem
    assert main(["bench", "fp8-compile", "--try", "triton.autotune_pointwse=False"]) == 2
    assert "triton.autotune_pointwse is not an inductor config name" in capsys.readouterr().err
    assert main(["bench", "fp8-compile", "--try", "oops"]) == 2
    assert "key=value" in capsys.readouterr().err
