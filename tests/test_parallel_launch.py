"""Context parallelism in CPU processes (gloo): `lowvram generate` with a context-parallel plan starts one process
per "GPU" under torch.distributed.run, diffusers' ContextParallelConfig (ulysses) splits each step's tokens, the
first process writes the one video and sidecar, the others are quiet; the latents are the one-process run's, bit for
bit. An out-of-memory finishes on one GPU. What only a GPU run checks: NCCL, ring attention (cuDNN), speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from lowvram.parallel.launch import launcher_arguments, outcome
from lowvram.parallel.run_dir import RunSpec, Status, read_run, write_run
from lowvram.job import Job
from planner.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = [{"name": "text_encoder", "precision": "fp32", "placement": "cpu", "compute_dtype": "float32"},
              {"name": "transformer", "precision": "fp32", "placement": "resident", "compute_dtype": "float32"},
              {"name": "vae", "precision": "fp32", "placement": "cpu"}]


def plan_file(folder: Path, processes: int) -> Path:
    data = {"device": "cpu", "components": COMPONENTS}
    if processes > 1:
        data.update(parallel="ulysses", parallel_gpus=processes)
    path = folder / f"plan-{processes}.json"
    path.write_text(json.dumps(data))
    return path


def lowvram(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "lowvram", *args], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=600)


def generate(tmp_path: Path, processes: int, name: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return lowvram("generate", "a cat walks in the city", "--model", "tiny-random", "--width", "64", "--height", "64",
                   "--frames", "5", "--steps", "3", "--seed", "3", "--force-plan", str(plan_file(tmp_path, processes)),
                   "--out", str(tmp_path / "videos" / f"{name}.mp4"), env=env)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, demo_t2v_path) -> dict:
    folder = tmp_path_factory.mktemp("one")
    (folder / "videos").mkdir()
    done = generate(folder, 1, "one")
    assert done.returncode == 0, done.stderr
    return json.loads((folder / "videos" / "one.json").read_text())


@pytest.mark.slow
def test_two_cpu_processes_write_one_video_with_the_one_process_latents(tmp_path, one_process):
    (tmp_path / "videos").mkdir()
    done = generate(tmp_path, 2, "cp")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["cp.json", "cp.mp4"]
    paths = [line for line in done.stdout.splitlines() if line.endswith(".mp4")]
    assert paths == [str(tmp_path / "videos" / "cp.mp4")]  # printed once: by the first process
    assert "starting 2 processes" in done.stdout + done.stderr
    assert done.stderr.count("[denoise] done") == 1  # only the first process reports
    sidecar = json.loads((tmp_path / "videos" / "cp.json").read_text())
    assert (sidecar["plan"]["parallel"], sidecar["plan"]["parallel_gpus"]) == ("ulysses", 2)
    assert [p["rank"] for p in sidecar["processes"]] == [0, 1]
    assert all("denoise" in p["stages"] for p in sidecar["processes"])
    assert sidecar["latents"] == one_process["latents"]  # diffusers' ulysses split: the same numbers, bit for bit
    from lowvram.paths import cache_dir

    assert not list((cache_dir() / "parallel").glob("run-*"))  # the run folder is gone


@pytest.mark.slow
def test_out_of_memory_in_the_processes_finishes_on_one_gpu(tmp_path, one_process):
    (tmp_path / "videos").mkdir()
    done = generate(tmp_path, 2, "oom", env={"LOWVRAM_INJECT_OOM": "denoise:1"})
    assert done.returncode == 0, done.stderr
    assert "continuing on one GPU" in done.stderr
    sidecar = json.loads((tmp_path / "videos" / "oom.json").read_text())
    assert sidecar["plan"]["parallel"] == "" and sidecar["plan"]["device"] == "cpu"
    assert sidecar["latents"] == one_process["latents"]  # resumed from the first process's step-1 latents
    assert (tmp_path / "videos" / "oom.latents.safetensors").exists() is False


def test_a_context_parallel_plan_is_refused_with_a_step_cache(tmp_path):
    done = lowvram("generate", "a cat", "--model", "tiny-random", "--force-plan", str(plan_file(tmp_path, 2)),
                   "--cache", "teacache", "--cache-threshold", "0.1", "--out", str(tmp_path / "x.mp4"))
    assert done.returncode == 2 and "step cache" in done.stderr and "Traceback" not in done.stderr


def test_the_run_folder_round_trips(tmp_path):
    plan = Plan.from_dict({"device": "cpu", "components": COMPONENTS, "parallel": "ulysses", "parallel_gpus": 2})
    spec = RunSpec((Job(prompt="a", seed=7), Job(prompt="b", seed=8)), plan, quiet=True)
    write_run(tmp_path, spec)
    assert read_run(tmp_path) == spec
    args = launcher_arguments(tmp_path, 3)
    assert "--nproc-per-node=3" in args and "--redirects=1:3,2:3" in args  # the others' output goes to the logs
    assert args[-4:] == ["-m", "lowvram", "worker", str(tmp_path)]


def test_how_a_run_ended():
    ok, cancelled, oom = (Status(r, "ok") for r in range(2)), Status(0, "cancelled"), Status(1, "oom")
    assert outcome(list(ok), 2, None) == "ok"
    assert outcome([Status(0, "ok")], 2, "process 1 exited with -9") == "error"  # one never reported
    assert outcome([cancelled, Status(1, "cancelled")], 2, None) == "cancelled"
    assert outcome([Status(0, "error"), oom], 2, "process 1 exited with 3") == "oom"


# --- the collectives, in two gloo processes -----------------------------------------------------------------


def _collectives(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from lowvram.parallel import group

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    seen = []
    with group.first_then_others():
        seen.append(("loaded", rank, Path(out + ".first").exists()))
        if rank == 0:
            Path(out + ".first").write_text("0")
    stop = group.any_rank(rank == 1)  # a cancel in one process stops all
    gathered = group.gather({"rank": rank})
    torch.save({"seen": seen, "stop": stop, "gathered": gathered, "writer": group.is_writer()}, f"{out}.{rank}")
    group.teardown()


def test_the_processes_agree(tmp_path):
    out = str(tmp_path / "result")
    mp.spawn(_collectives, args=(2, str(tmp_path / "store"), out), nprocs=2, join=True)
    first, second = (torch.load(f"{out}.{r}") for r in range(2))
    assert first["stop"] and second["stop"]
    assert first["gathered"] == second["gathered"] == [{"rank": 0}, {"rank": 1}]
    assert first["writer"] and not second["writer"]
    assert first["seen"] == [("loaded", 0, False)] and second["seen"] == [("loaded", 1, True)]  # the first went first


def test_the_one_gpu_finish_keeps_the_vram_generate_allowed(tmp_path):
    """`generate --gpus 2x12` on two 24 GiB cards, then an OOM: the one-GPU finish plans for at most 12 GiB too."""
    from lowvram.parallel.worker import one_gpu_probe
    from planner.probe import GIB, synthetic_probe, with_gpus

    plan = Plan.from_dict({"device": "cpu", "components": COMPONENTS, "parallel": "ulysses", "parallel_gpus": 2})
    write_run(tmp_path, RunSpec((Job(prompt="a", seed=7),), plan, vram_caps=(12.0, 12.0)))
    spec = read_run(tmp_path)
    machine = with_gpus(synthetic_probe(24, 64), (24, 24))
    probe = one_gpu_probe(spec, machine)
    assert probe.gpu_count == 1 and probe.vram_free == 12 * GIB
    uncapped = one_gpu_probe(RunSpec((Job(prompt="a", seed=7),), plan), machine)
    assert uncapped.gpu_count == 1 and uncapped.vram_free == 24 * GIB
