"""--gpus on the command line, profiles saved on two GPUs, the sidecar's and the TUI's memory per GPU."""

from __future__ import annotations

import argparse
import json

import pytest

from lowvram.cli import main
from lowvram.cli.options import gpu_list
from lowvram.io.sidecar import per_gpu_peaks
from lowvram.profiles import load
from lowvram.profiles.apply import probe_like
from lowvram.profiles.check import check_profile, describe_check
from lowvram.telemetry import MemorySample
from planner.plan import Plan, StagePeak
from planner.probe import GIB, synthetic_probe


def test_gpu_lists_parse():
    assert gpu_list("2x24") == (2, (24.0, 24.0))
    assert gpu_list("24,16") == (2, (24.0, 16.0))
    assert gpu_list("1x11.5") == (1, (11.5,))
    assert gpu_list("2") == (2, ())
    for bad in ("two", "0", "2x0", "24,,-1", "17", "2x", "x24", "nan,24"):
        with pytest.raises(argparse.ArgumentTypeError):
            gpu_list(bad)


def test_plan_for_two_what_if_gpus(capsys):
    code = main(["plan", "--model", "wan2.2-t2v-a14b", "--gpus", "2x24", "--ram", "64", "--gpu-name", "RTX 3090",
                 "--compute-capability", "8.6", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert [g["vram_total"] for g in out["probe"]["gpus"]] == [24 * GIB, 24 * GIB]
    assert out["plan"]["parallel"] == "ulysses" or any(c["devices"] for c in out["plan"]["components"])
    assert any(line.startswith("multi-GPU options") for line in out["explanation"])


def test_gpus_and_vram_together_are_refused(capsys):
    assert main(["plan", "--model", "wan2.1-t2v-14b", "--gpus", "2x24", "--vram", "24", "--ram", "64"]) == 2
    assert "drop --vram" in capsys.readouterr().err
    assert main(["plan", "--model", "wan2.1-t2v-14b", "--gpus", "2x", "--ram", "64"]) == 2
    assert "COUNTxGiB" in capsys.readouterr().err


def test_an_unknown_gpu_size_names_the_gpus_option(capsys):
    """The first GPU's size is planned as a --vram what-if: the error must name what the user gave."""
    assert main(["plan", "--model", "wan2.1-t2v-14b", "--gpus", "2x100000", "--ram", "64"]) == 2
    err = capsys.readouterr().err
    assert "--gpus (a 100000 GB GPU): which GPU is it?" in err and "--vram" not in err
    # the card assumed from a --gpus size is said to come from --gpus too
    assert main(["plan", "--model", "wan2.1-t2v-14b", "--gpus", "2x24", "--ram", "64"]) == 0
    said = capsys.readouterr()
    assert "from --gpus (a 24 GB GPU)" in said.out + said.err and "from --vram" not in said.out + said.err


def test_generate_refuses_more_gpus_than_the_machine_has(capsys, tmp_path):
    code = main(["generate", "a cat", "--model", "tiny-random", "--gpus", "2", "--out", str(tmp_path / "x.mp4")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--gpus asks for 2 GPUs; this machine has no GPU" in err and "Traceback" not in err


def test_a_profile_saved_on_two_gpus_is_replanned_on_one(tmp_path, capsys):
    path = tmp_path / "two.toml"
    code = main(["profile", "save", str(path), "--model", "wan2.1-t2v-14b", "--gpus", "2x12", "--ram", "64",
                 "--gpu-name", "RTX 3060", "--compute-capability", "8.6"])
    assert code == 0, capsys.readouterr().err
    text = path.read_text()
    assert "gpus = 2" in text  # [saved_on]: the GPU count, for information
    profile = load(path)
    assert profile.saved_on.gpus == 2 and profile.saved_plan.gpu_count == 2
    assert "2 GPUs, the first" in profile.saved_on.describe()
    # on the machine it was saved on: as saved
    assert check_profile(profile, probe_like(profile.saved_on)).status == "fits"
    # on one GPU: re-planned, and it says why
    one = synthetic_probe(12, 64, gpu_name="RTX 3060", compute_capability=(8, 6))
    check = check_profile(profile, one)
    assert check.status == "replanned" and check.plan.gpu_count == 1
    assert any("uses 2 GPUs" in line and "this machine has 1 GPU" in line for line in check.why)
    assert "re-planned" in describe_check(check, profile)[0]


def test_old_profiles_without_gpu_keys_still_load(tmp_path):
    from pathlib import Path

    shipped = sorted((Path(__file__).parent.parent / "profiles").glob("*.toml"))[0]
    profile = load(shipped)
    assert profile.saved_on.gpus is None and profile.saved_plan.gpu_count == 1


def test_sidecar_records_each_gpus_peak():
    plan = Plan("cuda", predicted=(StagePeak("denoise", 20 * GIB, GIB, 1.0, vram_per_gpu=(20 * GIB, 18 * GIB)),))
    peaks = {"denoise": {"vram_bytes": 19 * GIB, "vram_by_gpu": {"cuda:0": 19 * GIB, "cuda:1": 17 * GIB}}}
    record = per_gpu_peaks(plan, peaks)
    assert record == {"cuda:0": {"predicted_peak_vram_bytes": 20 * GIB, "measured_peak_vram_bytes": 19 * GIB},
                      "cuda:1": {"predicted_peak_vram_bytes": 18 * GIB, "measured_peak_vram_bytes": 17 * GIB}}
    processes = [{"rank": 0, "stages": {"denoise": {"vram_bytes": 5}}}, {"rank": 1, "stages": {"denoise": {"vram_bytes": 6}}}]
    assert per_gpu_peaks(plan, {}, processes)["cuda:1"]["measured_peak_vram_bytes"] == 6
    assert per_gpu_peaks(Plan("cuda", predicted=(StagePeak("denoise", GIB, GIB),)), peaks) == {}


def test_the_memory_graph_draws_each_gpu():
    from tui.widgets.memory_graph import MemoryGraph

    graph = MemoryGraph()
    for i in range(3):
        graph.samples.append(MemorySample(t=i, device="cuda:0", vram_total=24 * GIB, vram_allocated=(10 + i) * GIB, ram_used=GIB))
        graph.samples.append(MemorySample(t=i, device="cuda:1", vram_total=16 * GIB, vram_allocated=(2 + i) * GIB, ram_used=GIB))
    text = graph.render_text(20).plain
    assert "GPU0 alloc" in text and "GPU1 alloc" in text and "VRAM resv" not in text
    assert "12.00 GiB" in text and "4.00 GiB" in text and "█=24.00G total" in text and "█=16.00G total" in text


def test_plan_with_a_step_cache_plans_for_one_process(capsys):
    """generate plans without context parallel when a step cache is on (they do not run together yet); `plan` and
    `profile save` must show the same plan, not a context-parallel one that generate would never run."""
    code = main(["plan", "--model", "wan2.1-t2v-14b", "--gpus", "2x24", "--ram", "64", "--gpu-name", "RTX 3090",
                 "--compute-capability", "8.6", "--cache", "teacache", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["plan"]["parallel"] == ""
    assert not any("context parallel" in line for line in out["explanation"])


def test_generate_gpus_on_a_machine_without_gpu_says_to_drop_it(capsys, tmp_path):
    """`--gpus 1` on a CPU-only machine: the message must not tell the user to give --gpus 1 (what they gave)."""
    code = main(["generate", "a cat", "--model", "tiny-random", "--gpus", "1", "--out", str(tmp_path / "x.mp4")])
    assert code == 2
    err = capsys.readouterr().err
    assert "this machine has no GPU" in err and "(--gpus 1)" not in err and "drop --gpus" in err


def test_the_end_of_a_context_parallel_run_says_what_its_ram_columns_count():
    """A context-parallel plan predicts the RAM of all its processes together; the first process measures its own:
    the comparison says so rather than showing a 2x gap as a wrong prediction."""
    import io

    from lowvram.cli.console import ConsoleReporter
    from lowvram.telemetry import RunFinished, StageFinished
    from planner.choose import make_plan
    from planner.probe import synthetic_probe, with_gpus
    from planner.spec import known_spec
    from lowvram.job import Job

    probe = with_gpus(synthetic_probe(24, 64, gpu_name="NVIDIA H200", compute_capability=(9, 0)), (24, 24))
    plan = make_plan(probe, known_spec("wan2.1-t2v-14b"), Job(prompt="a fox", model="wan2.1-t2v-14b")).plan
    assert plan.parallel
    out = io.StringIO()
    reporter = ConsoleReporter(stream=out, plan=plan)
    reporter(StageFinished(t=1.0, stage="denoise", seconds=1.0, peak_vram_bytes=GIB, peak_ram_bytes=GIB))
    reporter(RunFinished(t=2.0, video_path="v.mp4", sidecar_path="v.json", seconds=2.0))
    text = out.getvalue()
    assert "predicted vs measured" in text
    assert "all 2 processes" in text and "the first process" in text


def test_a_profile_saved_on_mixed_cards_keeps_each_size(tmp_path, capsys):
    """[saved_on] of a 24 GB + 12 GB machine rebuilds as 24 + 12 (it was rebuilt as 2 x 24: only the first size was
    kept), and a size list that does not match the GPU count is refused with the key named."""
    path = tmp_path / "mixed.toml"
    code = main(["profile", "save", str(path), "--model", "wan2.1-t2v-14b", "--gpus", "24,12", "--ram", "64",
                 "--gpu-name", "RTX 3090", "--compute-capability", "8.6"])
    assert code == 0, capsys.readouterr().err
    profile = load(path)
    assert profile.saved_on.gpu_vram_gib == (24.0, 12.0)
    rebuilt = probe_like(profile.saved_on)
    assert [round(g.vram_total / GIB) for g in rebuilt.gpus] == [24, 12]
    assert "2 GPUs (24 + 12 GiB)" in profile.saved_on.describe()
    bad = path.read_text().replace("gpu_vram_gib = [24.0, 12.0]", "gpu_vram_gib = [24.0, 12.0, 8.0]")
    assert bad != path.read_text()
    (tmp_path / "bad.toml").write_text(bad)
    with pytest.raises(Exception, match="gpu_vram_gib"):
        load(tmp_path / "bad.toml")
    negative = path.read_text().replace("gpu_vram_gib = [24.0, 12.0]", "gpu_vram_gib = [24.0, -12.0]")
    (tmp_path / "neg.toml").write_text(negative)
    with pytest.raises(Exception, match="out of range"):
        load(tmp_path / "neg.toml")
