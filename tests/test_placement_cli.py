"""`lowvram generate` runs the planner's plan (or a forced one) and the sidecar records it."""

from __future__ import annotations

import json

from planner.plan import Plan
from plans import TP, plan_with

SMALL = ["--width", "64", "--height", "64", "--frames", "5", "--steps", "2"]


def test_generate_runs_the_planners_plan(tmp_path, capsys, demo_t2v_path):
    from lowvram.cli import main

    out = tmp_path / "planned.mp4"
    assert main(["generate", "a cat walks", *SMALL, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "plan: " in printed and "predicted peaks:" in printed
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["plan"]["source"] == "planner"
    assert side["predicted"]["peak_ram_bytes"] > 0  # the planner's prediction travels with the plan
    assert side["measured"]["stages"]["denoise"]["ram_bytes"] > 0


def test_force_plan_file_is_run_as_given(tmp_path, demo_t2v_path):
    from lowvram.cli import main

    forced = plan_with("cpu", precision="int8", transformer=TP("block_offload", use_stream=False),
                       text_encoder="offload", vae="gpu_tiled")
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"plan": forced.to_dict()}))  # the shape `lowvram plan --json` prints
    out = tmp_path / "forced.mp4"
    assert main(["generate", "a cat walks", *SMALL, "--out", str(out), "--force-plan", str(plan_file), "--quiet"]) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    recorded = Plan.from_dict(side["plan"])
    assert recorded.source == "forced"
    assert recorded.component("transformer") == forced.component("transformer")
    assert recorded.component("transformer").precision == "int8"


def test_bad_force_plan_is_a_user_error(tmp_path, capsys):
    from lowvram.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"device": "cpu", "transformer": {"kind": "sideways"}, "no_such_field": 1}))
    assert main(["generate", "a cat", *SMALL, "--out", str(tmp_path / "x.mp4"), "--force-plan", str(bad)]) == 2
    assert "--force-plan" in capsys.readouterr().err
    bad.write_text("[]")  # JSON, but no object: not a default plan
    assert main(["generate", "a cat", *SMALL, "--out", str(tmp_path / "x.mp4"), "--force-plan", str(bad)]) == 2
    assert "not a plan (a JSON list, not an object)" in capsys.readouterr().err
    missing = tmp_path / "missing.json"
    assert main(["generate", "a cat", *SMALL, "--out", str(tmp_path / "y.mp4"), "--force-plan", str(missing)]) == 2


def test_a_forced_fp8_fast_plan_without_the_gpu_for_it_exits_2_before_loading(tmp_path, capsys):
    from lowvram.cli import main

    plan_file = tmp_path / "fp8.json"
    plan_file.write_text(json.dumps(plan_with("cpu", precision="fp8_fast").to_dict()))
    assert main(["generate", "a cat", *SMALL, "--out", str(tmp_path / "x.mp4"), "--force-plan", str(plan_file)]) == 2
    err = capsys.readouterr().err
    assert "fp8_fast" in err and "compute capability >= 8.9" in err
    assert not any(tmp_path.glob("x*"))
