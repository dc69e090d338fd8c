"""How long `lowvram plan` takes for a known model on a what-if machine: the whole command as a user runs it
(a new process: imports, specs, the planner, the explanation), no GPU and no weights needed.

    python -m lowvram.bench.plan_latency [--runs 5] [--out plan_latency.json]

Each model's command runs `--runs` times in fresh processes; the median and range of the wall time, and the
median CPU time of the process (user + system: what a busy machine does not inflate), are printed as a markdown
table. A benchmark, not a test: the figure belongs to the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.1-i2v-14b-480p", "wan2.2-t2v-a14b", "wan2.2-ti2v-5b")
MACHINE = ("--vram", "12", "--ram", "32", "--gpu-name", "RTX 4070")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_plan(model: str, runs: int) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds) of `lowvram plan --model MODEL` on the what-if machine, a fresh process per run."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    seconds, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), _children_cpu()
        done = subprocess.run([sys.executable, "-m", "lowvram", "plan", "--model", model, *MACHINE],
                              capture_output=True, text=True, env=env, timeout=300)
        seconds.append(time.perf_counter() - t0)
        cpu.append(_children_cpu() - c0)
        if done.returncode != 0:
            raise RuntimeError(f"lowvram plan --model {model} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return seconds, cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = {model: time_plan(model, args.runs) for model in MODELS}
    print("| model | wall median s | wall range s | CPU median s |\n|---|---|---|---|")
    for model, (secs, cpu) in rows.items():
        print(f"| {model} | {statistics.median(secs):.2f} | {min(secs):.2f}-{max(secs):.2f} | {statistics.median(cpu):.2f} |")
    if args.out:
        args.out.write_text(json.dumps({"machine": list(MACHINE), "runs": {m: {"wall": w, "cpu": c} for m, (w, c) in rows.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
