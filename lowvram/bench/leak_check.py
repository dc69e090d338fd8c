"""Leak check: N generations back to back on one loaded model (the TUI's case); does memory grow?

After every run (and a gc) it records the process RSS and, on a GPU, torch.cuda.memory_allocated /
memory_reserved. The first `warmup` runs fill allocator pools and lazy caches; growth is measured
from the end of the warm-up to the last run.

    python -m lowvram.bench.leak_check                       # demo model, CPU or the GPU if present
    python -m lowvram.bench.leak_check --model wan2.1-t2v-1.3b --width 832 --height 480 --frames 81 --steps 4
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

MIB = 1024**2


@dataclass(frozen=True)
class LeakSample:
    run: int
    seconds: float
    rss_bytes: int
    vram_allocated: int
    vram_reserved: int
    live_tensors: int  # torch tensors reachable by the gc: exact where RSS is noisy


@dataclass(frozen=True)
class LeakReport:
    samples: tuple[LeakSample, ...]
    warmup: int

    def _growth(self, field: str) -> int:
        base = getattr(self.samples[self.warmup - 1], field)
        return max(getattr(s, field) for s in self.samples[self.warmup :]) - base

    def _floor_growth(self, field: str) -> int:
        """Rise of the floor: min of the last 3 samples minus min of the 3 from the end of the warm-up.

        RSS spikes and falls back by ~10-20 MiB from run to run (allocator, ffmpeg); a leak raises the floor.
        """
        values = [getattr(s, field) for s in self.samples]
        return min(values[-3:]) - min(values[self.warmup - 1 : self.warmup + 2])

    @property
    def rss_growth(self) -> int:
        return self._floor_growth("rss_bytes")

    @property
    def rss_peak_growth(self) -> int:
        return self._growth("rss_bytes")

    @property
    def vram_growth(self) -> int:
        return self._growth("vram_allocated")

    @property
    def tensor_growth(self) -> int:
        return self._growth("live_tensors")

    def lines(self) -> list[str]:
        out = [f"{'run':>4} {'seconds':>8} {'RSS MiB':>9} {'VRAM alloc MiB':>15} {'VRAM reserved MiB':>18} {'tensors':>8}"]
        for s in self.samples:
            out.append(
                f"{s.run:>4} {s.seconds:>8.2f} {s.rss_bytes / MIB:>9.1f} {s.vram_allocated / MIB:>15.1f} "
                f"{s.vram_reserved / MIB:>18.1f} {s.live_tensors:>8}"
            )
        out.append(
            f"growth after run {self.warmup}: RSS floor {self.rss_growth / MIB:+.1f} MiB (highest sample "
            f"{self.rss_peak_growth / MIB:+.1f} MiB), VRAM allocated "
            f"{self.vram_growth / MIB:+.1f} MiB, live tensors {self.tensor_growth:+d}"
        )
        return out


def _snapshot(run: int, seconds: float) -> LeakSample:
    import psutil
    import torch

    gc.collect()
    alloc = reserved = 0
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        alloc, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    tensors = sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))  # type(): no lazy __class__
    return LeakSample(run, seconds, psutil.Process().memory_info().rss, alloc, reserved, tensors)


def leak_loop(job, plan, runs: int = 10, warmup: int = 2, loaded=None, out_dir: Optional[Path] = None, log: Callable[[str], None] = lambda _: None, faults=None) -> LeakReport:
    """Run `job` `runs` times on one LoadedModel (loaded here unless given); one sample after each run.

    `faults` (a lowvram.sampling.faults.FaultPlan) makes every run go through the OOM fallback: each run starts
    from `plan` again, so the pipeline is re-placed and falls back every time.
    """
    from lowvram.models.names import resolve_model
    from lowvram.sampling.runner import generate, load_model

    if not 1 <= warmup or runs < warmup + 3:
        raise ValueError(f"need warmup >= 1 and at least 3 runs after it, got warmup={warmup} runs={runs}")
    loaded = loaded or load_model(resolve_model(job.model), plan)
    samples = []
    with tempfile.TemporaryDirectory(prefix="lowvram-leak-") as tmp:
        folder = Path(out_dir or tmp)
        for i in range(runs):
            started = time.perf_counter()
            generate(job.with_(out=str(folder / f"run{i}.mp4")), plan, loaded=loaded, faults=faults)
            sample = _snapshot(i + 1, time.perf_counter() - started)
            samples.append(sample)
            log(f"run {sample.run}: RSS {sample.rss_bytes / MIB:.1f} MiB, VRAM allocated {sample.vram_allocated / MIB:.1f} MiB")
    return LeakReport(tuple(samples), warmup)


def main(argv=None) -> int:
    from lowvram.job import Job
    from lowvram.sampling.runner import placeholder_plan

    p = argparse.ArgumentParser(prog="python -m lowvram.bench.leak_check", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the samples here")
    p.add_argument("--inject", default=None, help="an OOM in every run (lowvram.sampling.faults syntax, e.g. denoise:1): the fallback path")
    args = p.parse_args(argv)
    job = Job(prompt="a cat walks in the city", model=args.model, width=args.width, height=args.height, frames=args.frames, steps=args.steps, seed=3)
    plan = placeholder_plan()
    print(f"plan: {plan.device} {plan.dtype}: {plan.summary()}", flush=True)
    from lowvram.sampling.faults import FaultPlan

    faults = FaultPlan.parse(args.inject) if args.inject else None
    report = leak_loop(job, plan, runs=args.runs, warmup=args.warmup, log=lambda line: print(line, flush=True), faults=faults)
    print("\n".join(report.lines()))
    if args.json:
        data = {"job": job.to_dict(), "plan": plan.to_dict(), "warmup": report.warmup, "samples": [asdict(s) for s in report.samples],
                "rss_floor_growth_bytes": report.rss_growth, "rss_peak_growth_bytes": report.rss_peak_growth, "vram_growth_bytes": report.vram_growth, "tensor_growth": report.tensor_growth}
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
