"""Run one benchmark case under a VRAM cap and record what it cost.

A case is: set up a placement (a recipe) on a fresh module, run warm-up forwards, time more forwards,
tear down. VRAM peaks come from torch's counters (exact); RAM peaks from a sampling thread (RSS).
An out-of-memory error is a result, not a crash: the case is recorded as OOM and the next one runs.
"""

from __future__ import annotations

import gc
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch

from lowvram.telemetry.memory import MemorySampler, allocator_retries

GIB = 1024**3


@dataclass
class CaseResult:
    model: str
    resolution: str
    budget_gib: Optional[float]
    recipe: str
    tokens: int
    step_seconds: Optional[float] = None  # median of the timed forwards
    step_times: list = field(default_factory=list)
    first_seconds: Optional[float] = None  # the first (warm-up) forward, setup excluded
    setup_seconds: Optional[float] = None
    peak_vram_allocated: Optional[int] = None
    peak_vram_reserved: Optional[int] = None
    peak_rss: Optional[int] = None
    predicted_peak_vram: Optional[int] = None
    oom: bool = False
    error: Optional[str] = None
    skipped: Optional[str] = None
    ratio: Optional[float] = None  # step_seconds / all-on-GPU step of the same run
    plan: Optional[str] = None
    notes: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def set_budget(budget_gib: Optional[float]) -> None:
    """Cap this process's CUDA caching allocator at budget_gib (None: the whole card)."""
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = 1.0 if budget_gib is None else min(1.0, budget_gib * GIB / total)
    torch.cuda.set_per_process_memory_fraction(fraction)


def empty_host_cache() -> None:
    """Give cached pinned host blocks back, so one case's pinned memory is not counted in the next's RSS."""
    for owner, name in ((torch._C, "_host_emptyCache"), (torch._C, "_accelerator_emptyHostCache")):
        fn = getattr(owner, name, None)
        if fn is not None:
            fn()
            return


def clean_cuda() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        empty_host_cache()


def timed(fn: Callable[[], Any], sync: bool) -> tuple[float, Any]:
    if sync:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


@dataclass
class Recipe:
    """How to place a module for one case. `setup(module)` returns the callable to time (a forward)
    and may record notes/prediction on the result; `teardown()` undoes what setup did."""

    name: str
    setup: Callable[["CaseResult"], Callable[[], Any]]
    teardown: Callable[[], None] = lambda: None


def profile_forward(forward: Callable[[], Any], path, rows: int = 40) -> dict:
    """One extra forward under torch.profiler: where the time goes (copies, syncs, hooks, kernels)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        forward()
        torch.cuda.synchronize()
    by_cpu = prof.key_averages().table(sort_by="cpu_time_total", row_limit=rows)
    by_cuda = prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows)
    with open(path, "w") as fh:
        fh.write("== by CPU time ==\n" + by_cpu + "\n\n== by CUDA time ==\n" + by_cuda + "\n")
    summary = {}
    for ev in prof.key_averages():
        if ev.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "Memcpy HtoD (Pinned -> Device)", "Memcpy HtoD (Pageable -> Device)", "cudaMemcpyAsync", "cudaHostAlloc"):
            summary[ev.key] = dict(count=ev.count, cpu_us=ev.cpu_time_total, device_us=getattr(ev, "device_time_total", getattr(ev, "cuda_time_total", 0)))
    return summary


def profile_rows_of(profile, rows: int) -> list[dict]:
    """A cProfile.Profile's top `rows` functions by cumulative time, then by own time (plain data)."""
    import pstats

    stats = pstats.Stats(profile)
    out = []
    for sort, col in (("cumulative", 3), ("tottime", 2)):
        for k in sorted(stats.stats, key=lambda k: stats.stats[k][col], reverse=True)[:rows]:
            _, calls, own, cum, _ = stats.stats[k]
            out.append(dict(sort=sort, function=f"{k[0].split('site-packages/')[-1]}:{k[1]}({k[2]})", calls=calls,
                            tottime=round(own, 3), cumtime=round(cum, 3)))
    return out


def profile_lines(rows: list[dict], cumulative: int, own: int = 0, prefix: str = "") -> list[str]:
    """Printable lines of profile_rows_of's rows: the first `cumulative` by cumulative time, `own` by own time."""
    picked = [r for r in rows if r["sort"] == "cumulative"][:cumulative] + [r for r in rows if r["sort"] == "tottime"][:own]
    return [f"{prefix}{r['cumtime']:9.2f}s cum {r['tottime']:8.2f}s own {r['calls']:7d}x {r['function']}" for r in picked]


def run_case(result: CaseResult, recipe: Recipe, warmup: int = 1, iters: int = 2, cuda: bool = True, log: Callable[[str], None] = print, profile_to=None,
             profile_first: int = 0) -> CaseResult:
    """Fill `result` by running `recipe` under `result.budget_gib`. Never raises for OOM. `profile_first`: that many
    rows of a cProfile of the first forward (compiles, first copies) in result.extra["first_profile"]."""
    if cuda:
        clean_cuda()
        set_budget(result.budget_gib)
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.reset_accumulated_memory_stats()  # alloc_retries below counts this case only
    sampler = MemorySampler(lambda sample: None, interval=0.05)
    with sampler:
        sampler.start_window()
        result.extra["rss_before"] = sampler.sample().ram_used
        forward = None
        try:
            t_setup, forward = timed(lambda: recipe.setup(result), cuda)
            result.setup_seconds = t_setup
            with torch.no_grad():
                for i in range(warmup):
                    profile = None
                    if i == 0 and profile_first:
                        import cProfile

                        profile = cProfile.Profile()
                        profile.enable()
                    t, _ = timed(forward, cuda)
                    if profile is not None:
                        profile.disable()
                        result.extra["first_profile"] = profile_rows_of(profile, profile_first)
                    if i == 0:
                        result.first_seconds = t
                for _ in range(iters):
                    t, _ = timed(forward, cuda)
                    result.step_times.append(t)
            if result.step_times:
                result.step_seconds = statistics.median(result.step_times)
            if profile_to is not None:
                with torch.no_grad():
                    result.extra["profile"] = profile_forward(forward, profile_to)
                result.notes.append(f"profiled: {getattr(profile_to, 'name', profile_to)}")
        except torch.OutOfMemoryError as exc:
            result.oom = True
            result.error = str(exc).splitlines()[0][:300]
        except Exception as exc:  # a broken recipe is a recorded failure, the matrix goes on
            result.error = f"{type(exc).__name__}: {exc}"[:500]
            result.extra["traceback"] = traceback.format_exc()[-3000:]
        finally:
            if cuda:
                result.peak_vram_allocated = torch.cuda.max_memory_allocated()
                result.peak_vram_reserved = torch.cuda.max_memory_reserved()
                # the allocator hit the cap, freed its cache (a device-wide sync) and retried: a plan at its limit
                result.extra["alloc_retries"] = allocator_retries()
            _, result.peak_rss = sampler.window_peaks()
            forward = None
            try:
                recipe.teardown()
            except Exception as exc:
                result.notes.append(f"teardown failed: {type(exc).__name__}: {exc}")
            if cuda:
                clean_cuda()
                set_budget(None)
    log(summary_line(result))
    return result


def summary_line(r: CaseResult) -> str:
    gib = lambda b: "-" if b is None else f"{b / GIB:.2f}"  # noqa: E731
    status = "OOM" if r.oom else ("ERR " + (r.error or "")[:80] if r.error else (f"skip: {r.skipped}" if r.skipped else "ok"))
    step = "-" if r.step_seconds is None else f"{r.step_seconds:.3f}s"
    budget = "uncapped" if r.budget_gib is None else f"{r.budget_gib:g}GiB"
    # setup and the first forward (a compile's cost) in the line too: a run cut short keeps them in its log
    setup = "" if r.setup_seconds is None else f" setup {r.setup_seconds:.1f}s"
    first = "" if r.first_seconds is None else f" first {r.first_seconds:.1f}s"
    retries = r.extra.get("alloc_retries") if isinstance(r.extra, dict) else None
    status += f" (allocator retries {retries})" if retries else ""
    return (f"[{r.model} {r.resolution} {budget}] {r.recipe}: step {step}{first}{setup} peak {gib(r.peak_vram_reserved)}/"
            f"{gib(r.peak_vram_allocated)} GiB rss {gib(r.peak_rss)} GiB {status}")
