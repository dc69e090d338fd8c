"""`lowvram probe`, `lowvram plan` and `lowvram calibrate` as a user runs them (exit codes, output)."""

from __future__ import annotations

import json

import pytest

from lowvram.cli import main
from planner.calibration import Calibration, load_calibration, save_calibration
from planner.probe import GIB, synthetic_probe
from planner.timing import throughput_for


def test_probe_prints_the_machine(capsys):
    assert main(["probe"]) == 0
    out = capsys.readouterr().out
    assert "RAM:" in out and "GiB available" in out and "disk free" in out


def test_probe_json_is_bytes(capsys):
    assert main(["probe", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ram_total"] >= data["ram_available"] > 0
    assert {"gpu_name", "compute_capability", "vram_free", "vram_total", "swap_total", "disk_free", "os"} <= set(data)


def test_plan_what_if_14b_on_a_24_gb_card(capsys):
    code = main(["plan", "--model", "wan2.1-t2v-14b", "--vram", "24", "--ram", "64", "--gpu-name", "NVIDIA GeForce RTX 4090",
                 "--compute-capability", "8.9"])
    out = capsys.readouterr().out
    assert code == 0
    assert "chosen: text encoder" in out and "transformer bf16" in out and "rejected" in out and "over VRAM by" in out
    assert "32,760 tokens" in out and "what-if" in out


@pytest.mark.parametrize("name, cc", [("NVIDIA GeForce RTX 4090", "8.9"), ("RTX 4060 Ti", "8.9"), ("RTX 3090", "8.6"),
                                       ("NVIDIA H200", "9.0"), ("A100", "8.0")])
def test_a_named_card_brings_its_compute_capability(name, cc, capsys):
    """--gpu-name alone used to assume 8.6 for every card: an RTX 4090 what-if never got fast fp8."""
    assert main(["plan", "--model", "wan2.1-t2v-1.3b", "--vram", "24", "--ram", "64", "--gpu-name", name]) == 0
    assert f"{name} (compute capability {cc})" in capsys.readouterr().out


@pytest.mark.parametrize("short, what_if", [("--ram", ["--vram", "0", "--ram", "16"]), ("--vram", ["--vram", "4", "--ram", "64"])])
def test_the_amount_a_no_fit_error_asks_for_is_enough(short, what_if, capsys):
    """The need is rounded up: giving the printed amount plans (32.52 GiB was printed where 32.521 was needed)."""
    import re

    model = ["plan", "--model", "wan2.2-t2v-a14b"]
    assert main([*model, *what_if]) == 2
    err = capsys.readouterr().err
    kind = "of available RAM" if short == "--ram" else "free VRAM"
    need = re.search(r"at least ([0-9.]+) GiB " + kind, err)
    assert need, err
    given = list(what_if)
    given[given.index(short) + 1] = need.group(1)
    assert main([*model, *given, "--gpu-name", "RTX 4090"]) == 0, capsys.readouterr().err


def test_plan_json(capsys):
    code = main(["plan", "--model", "wan2.1-t2v-1.3b", "--vram", "24", "--ram", "32", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    plan = data["plan"]
    (transformer,) = [c for c in plan["components"] if c["name"] == "transformer"]
    assert plan["device"] == "cuda" and transformer["placement"] == "resident" and transformer["precision"] == "bf16"
    assert [s["stage"] for s in plan["predicted"]] == ["load", "encode", "denoise", "decode"]
    assert data["probe"]["vram_total"] == 24 * GIB and data["explanation"]


def test_plan_job_options_change_the_plan(capsys):
    assert main(["plan", "--model", "wan2.1-t2v-14b", "--vram", "12", "--ram", "64", "--width", "1280", "--height", "720", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["job"]["width"] == 1280 and "75,600 tokens" in "\n".join(data["explanation"])


def test_plan_impossible_budget_exits_2_with_the_shortfall(capsys):
    code = main(["plan", "--model", "wan2.1-t2v-14b", "--vram", "2", "--ram", "8"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no plan fits" in err and "It would work with" in err and "GiB" in err


def test_plan_demo_model_on_the_cpu(capsys):
    assert main(["plan", "--model", "tiny-random", "--vram", "0", "--ram", "8"]) == 0
    assert "everything on the CPU (fp32)" in capsys.readouterr().out


def test_plan_unknown_model_exits_2(capsys):
    assert main(["plan", "--model", "no-such-model"]) == 2
    assert "not a known model name" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--vram", "nan"), ("--ram", "inf"), ("--ram", "-1"), ("--vram-cap", "nan"),
                                         ("--ram-reserve", "-2"), ("--vram-reserve", "x")])
def test_plan_bad_gib_options_exit_2_naming_the_option(flag, value, capsys):
    assert main(["plan", flag, value]) == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: {value!r} is not a number of GiB" in err and "Traceback" not in err


def test_plan_and_profile_save_refuse_an_invalid_job(tmp_path, capsys):
    assert main(["plan", "--width", "-16", "--frames", "6"]) == 2
    err = capsys.readouterr().err
    assert "--width -16 must be a positive multiple of 16" in err and "--frames 6 must be of the form 4k+1" in err
    out = tmp_path / "p.toml"
    assert main(["profile", "save", str(out), "--steps", "0"]) == 2
    assert "--steps 0 must be at least 1" in capsys.readouterr().err and not out.exists()


def test_calibrate_without_a_gpu_exits_2(capsys):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["calibrate"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_calibration_round_trip_and_use(tmp_path):
    cal = Calibration(gpu_name="NVIDIA GeForce RTX 4090", created="2026-11-21", gpu_flops=1.0e14, h2d_pinned=2.2e10,
                      h2d_pageable=6.0e9, cpu_flops=5.0e11, tokens=32760, block_seconds=0.02)
    path = save_calibration(cal, tmp_path / "calibration.json")
    assert load_calibration(path) == cal
    same = synthetic_probe(24, 64, gpu_name="NVIDIA GeForce RTX 4090", compute_capability=(8, 9))
    other = synthetic_probe(24, 64, gpu_name="NVIDIA GeForce RTX 3090")
    assert throughput_for(same, cal).h2d_pinned == 2.2e10 and throughput_for(same, cal).source.startswith("calibrated")
    assert throughput_for(other, cal).source.startswith("defaults")
    path.write_text("{not json")
    assert load_calibration(path) is None
    for corrupt in ("[1, 2]", json.dumps(dict(cal.to_dict(), gpu_flops="fast")), json.dumps(dict(cal.to_dict(), tokens=True))):
        path.write_text(corrupt)
        assert load_calibration(path) is None, corrupt



def test_output_into_a_closed_pipe_stops_quietly():
    """`lowvram plan | head -1`: the reader goes away; no traceback, exit 141 as after a SIGPIPE."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    lowvram = [sys.executable, "-c", "import sys; from lowvram.cli import main; sys.exit(main())"]
    proc = subprocess.run(lowvram + ["plan", "--vram", "12", "--ram", "32"], stdout=write, stderr=subprocess.PIPE,
                          text=True, timeout=120)
    os.close(write)
    assert proc.returncode == 141 and "Traceback" not in proc.stderr, proc.stderr
