"""Regional compile and the fast levels under context parallelism, in CPU processes (gloo).

Each process compiles its own blocks beneath diffusers' context-parallel hooks (lowvram.placement.compile): one
block graph serves every block, both CFG branches and every step, and the latents are those of one process running
the same compiled plan, bit for bit (ulysses moves whole heads: each process computes the same arithmetic on its
share), within float32 rounding of the eager run. diffusers' split hands the first block a slice of the whole
sequence (a view with the whole sequence's strides) and the others dense tensors: compiled as they come, that is a
second graph (a recompile), so the compiled forward copies a non-dense input first.

What only a GPU run checks: NCCL's collectives inside the compiled graph, fp8_fast (torchao refuses fp8 off a GPU
of compute capability >= 8.9; int8_fast runs here), the compile time and the speed.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from lowvram.job import Job
from plans import plan_with
from test_compile import compiled, no_recompiles, rel

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


def job(out: str) -> Job:
    return Job(prompt="a cat walks in the city", model="tiny-random", width=64, height=64, frames=5, steps=3, seed=3,
               out=out)


def parallel(plan, processes: int = 2):
    return replace(plan, parallel="ulysses", parallel_gpus=processes)


# --- the compiled forward keeps one graph whatever its input's strides ----------------------------------------


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(self.proj(hidden_states)) + hidden_states


class Stack(torch.nn.Module):
    _repeated_blocks = ("Block",)

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(), Block()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def test_a_slice_of_the_sequence_and_a_dense_input_share_one_graph():
    """What diffusers' context-parallel split gives the first block: a chunk of the whole sequence, whose batch
    stride is the whole sequence's; the next block gets a dense tensor of the same shape."""
    from lowvram.placement.compile import apply_compile

    torch.manual_seed(0)
    stack = Stack().eval()
    whole = torch.randn(1, 6, 8)
    piece = whole.chunk(2, dim=1)[1]
    assert piece.stride()[0] == 48 and piece.is_contiguous()  # contiguous by torch's rule, not dense
    with torch.no_grad():
        eager = stack(piece)
        assert apply_compile(stack, True, "fp32") == 2
        with no_recompiles() as counters:
            out = stack(piece)
            again = stack(piece.clone())  # a dense input: the same graph
    assert counters["stats"]["unique_graphs"] == 1
    assert torch.allclose(out, eager, rtol=1e-5, atol=1e-6) and torch.equal(out, again)


# --- two gloo processes, in-process runs --------------------------------------------------------------------


def _rank(rank: int, world: int, store: str, out: str, precision: str) -> None:
    import torch.distributed as dist

    from lowvram.placement.compile import compile_failed, is_compiled
    from lowvram.sampling import runner

    torch.set_num_threads(1)  # two processes on the test machine's cores
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        plan = parallel(compiled(plan_with("cpu", precision=precision)), world)
        with no_recompiles() as counters:
            result = runner.generate(job(f"{out}.{rank}.mp4"), plan)
            graphs = counters["stats"]["unique_graphs"]
        transformer = result.loaded.pipe.transformer
        torch.save({"latents": result.latents, "graphs": graphs, "compiled": is_compiled(transformer),
                    "failed": compile_failed(transformer)}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_compiled_context_parallel_gives_the_one_process_latents_with_one_graph(tmp_path, demo_t2v_path):
    out = str(tmp_path / "rank")
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), out, "fp32"), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    for r in ranks:
        assert r["compiled"] and r["failed"] is None
        assert r["graphs"] == 1  # 2 blocks x 2 CFG branches x 3 steps, block 0's split input included: one graph
    from lowvram.sampling import runner

    with no_recompiles():
        one = runner.generate(job(str(tmp_path / "one.mp4")), compiled(plan_with("cpu"))).latents
    eager = runner.generate(job(str(tmp_path / "eager.mp4")), plan_with("cpu")).latents
    assert torch.equal(ranks[0]["latents"], one)
    assert rel(ranks[0]["latents"], eager) < 1e-4  # inductor reorders the float32 arithmetic, no more


# --- through `lowvram generate`: int8_fast compiled, two processes ---------------------------------------------


def _plan_file(folder: Path, precision: str, processes: int) -> Path:
    plan = compiled(plan_with("cpu", precision=precision))
    if processes > 1:
        plan = parallel(plan, processes)
    path = folder / f"plan-{precision}-{processes}.json"
    path.write_text(json.dumps(plan.to_dict()))
    return path


@pytest.mark.slow
def test_lowvram_generate_runs_int8_fast_compiled_in_two_processes(tmp_path, demo_t2v_path):
    """The whole CLI path (planless --force-plan, torch.distributed.run, the workers' load, placement, quantize,
    compile, context parallel): the first process's latents are one process's at the same compiled int8_fast plan,
    and no process recompiled (dynamo logs every recompile with TORCH_LOGS=recompiles)."""
    from lowvram.io.sidecar import latents_record
    from lowvram.sampling import runner
    from lowvram.sampling.resume import job_from_dict
    from planner import constants as C
    from test_parallel_launch import lowvram

    (tmp_path / "videos").mkdir()
    video = tmp_path / "videos" / "cp.mp4"
    done = lowvram("generate", "a cat walks in the city", "--model", "tiny-random", "--width", "64", "--height", "64",
                   "--frames", "5", "--steps", "3", "--seed", "3", "--force-plan", str(_plan_file(tmp_path, "int8_fast", 2)),
                   "--out", str(video), env={"TORCH_LOGS": "recompiles"})
    assert done.returncode == 0, done.stderr[-4000:]
    logs = done.stdout + done.stderr
    assert "starting 2 processes" in logs
    assert "Recompiling" not in logs and "compiling its blocks failed" not in logs
    sidecar = json.loads(video.with_suffix(".json").read_text())
    assert (sidecar["plan"]["parallel"], sidecar["plan"]["parallel_gpus"]) == ("ulysses", 2)
    t = next(c for c in sidecar["plan"]["components"] if c["name"] == "transformer")
    assert (t["precision"], t["compile"]) == ("int8_fast", True)

    # the one-process references, in this process, of the job as generate filled it in (its defaults applied)
    same = job_from_dict(sidecar["settings"])
    one = runner.generate(same.with_(out=str(tmp_path / "one.mp4")), compiled(plan_with("cpu", precision="int8_fast")))
    assert sidecar["latents"] == latents_record(one.latents)  # bit for bit
    eager = runner.generate(same.with_(out=str(tmp_path / "eager.mp4")), plan_with("cpu")).latents
    assert rel(one.latents, eager) < 2 * C.FAST_ERROR_BOUND  # the level's error over three steps, as on one process
