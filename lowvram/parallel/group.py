"""One process of a context-parallel run: its rank, the collectives the runner needs, diffusers' context parallel.

Outside such a run (no process group) every function answers as the single process would: rank 0, the writer,
nothing to agree on. The process group is set up from torch.distributed.run's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT): NCCL for the GPUs' tensors with gloo beside it for small CPU ones (as diffusers'
own `diffusers-cli run --context-parallel` does), gloo alone for CPU processes (the tests).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch
import torch.distributed as dist

from planner.plan import Plan


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_writer() -> bool:
    """The process that decodes, writes the video and sidecar, and keeps the latents: rank 0 (or the only one)."""
    return rank() == 0


def launched() -> bool:
    """Started by torch.distributed.run as one of several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def setup(device: str) -> None:
    """Join the group torch.distributed.run started; on a GPU plan this process works on GPU LOCAL_RANK."""
    if active():
        return
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local)
        dist.init_process_group(backend="cpu:gloo,cuda:nccl", device_id=torch.device("cuda", local))
    else:
        dist.init_process_group(backend="gloo")


def teardown() -> None:
    if active():
        dist.destroy_process_group()


def any_rank(flag: bool) -> bool:
    """True on every process when it is true on one of them (a CPU collective: cheap, once per step)."""
    if not active():
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    if active():
        any_rank(False)  # an all-reduce on the CPU side: a barrier that works the same under gloo and NCCL


@contextlib.contextmanager
def first_then_others() -> Iterator[None]:
    """The first process runs the block, then all the others together: the first one fills lowvram's caches
    (quantized weights, converted dtypes) that the others then read, and loads do not all peak at once."""
    if not active() or rank() == 0:
        try:
            yield
        finally:
            barrier()
        return
    barrier()
    yield


def gather(obj: Any) -> list:
    """Every process's `obj`, in rank order (to the writer; the others get the list too)."""
    if not active():
        return [obj]
    out: list = [None] * world()
    dist.all_gather_object(out, obj)
    return out


@contextlib.contextmanager
def _accelerator_count_for_cpu_ranks() -> Iterator[None]:
    """diffusers 0.42 picks a process's device as rank % torch.accelerator.device_count(), a division by zero in
    CPU processes (gloo): there each process is its own "device", so the count is the world size meanwhile."""
    if torch.accelerator.is_available():
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: world()
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def context_parallel_config(plan: Plan, tokens_divide: bool = True):
    """diffusers' ContextParallelConfig for the plan: ulysses over all processes, or ring. `tokens_divide`: the
    token count divides by the process count; otherwise the "anything" variants shard unequal pieces."""
    from diffusers import ContextParallelConfig

    n = plan.parallel_gpus
    if plan.parallel == "ring":
        return ContextParallelConfig(ring_degree=n, ring_anything=not tokens_divide)
    return ContextParallelConfig(ulysses_degree=n, ulysses_anything=not tokens_divide)


def enable_context_parallel(module: torch.nn.Module, plan: Plan, tokens: int) -> None:
    """diffusers' context parallelism on one denoiser (its own `_cp_plan`), once: it stays through re-placements
    and later jobs. `tokens`: the job's; when they do not divide by the process count, the "anything" variants
    shard unequal pieces (they cost a small collective per attention, so only then). Ring attention needs a
    kernel that returns its log-sum-exp: cuDNN's, in bf16."""
    if getattr(module, "_parallel_config", None) is not None:
        config = module._parallel_config.context_parallel_config
        if not tokens_divide_ok(config, tokens, plan.parallel_gpus):
            from lowvram.errors import UserError

            raise UserError(f"this job's {tokens} tokens do not divide by {plan.parallel_gpus} processes, unlike the "
                            "first job's: give every job of a batch the same size")
        return
    if world() != plan.parallel_gpus:
        raise RuntimeError(f"the plan is context parallel on {plan.parallel_gpus} processes but this process is one of "
                           f"{world()}; run it with `lowvram generate` (it starts the processes)")
    if plan.parallel == "ring":
        module.set_attention_backend("_native_cudnn")
    config = context_parallel_config(plan, tokens_divide=tokens % plan.parallel_gpus == 0)
    with _accelerator_count_for_cpu_ranks():
        module.enable_parallelism(config=config)


def tokens_divide_ok(config, tokens: int, n: int) -> bool:
    return config.ulysses_anything or config.ring_anything or tokens % n == 0


__all__ = ["active", "any_rank", "barrier", "context_parallel_config", "enable_context_parallel", "first_then_others",
           "gather", "is_writer", "launched", "rank", "setup", "teardown", "tokens_divide_ok", "world"]
