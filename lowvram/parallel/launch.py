"""Start a context-parallel run: one process per GPU under torch.distributed.run, as diffusers documents it.

`lowvram generate` plans, and when the plan is context parallel calls `relaunch`: the jobs and the plan go to a
run folder (lowvram.parallel.run_dir) and the process re-executes itself as this module (`exec`: its CUDA
contexts, made while probing every GPU, are gone with it). Here torch.distributed.run's launcher (torchrun) starts
`lowvram worker RUN_DIR` once per GPU; the first process prints the progress and writes the video and sidecar,
the others are quiet (their output goes to the run folder's logs). When they are done:
- all went well: exit 0;
- a process ran out of memory: say so and finish on one GPU, re-planned for it, from the first process's
  latents when it kept them (lowvram.parallel.worker with one_gpu);
- cancelled (Ctrl-C reaches every process; they stop together at a step boundary): exit 130, latents kept;
- anything else: the first failure's message and exit code, the logs kept.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import NoReturn, Optional, Sequence

from lowvram.parallel.run_dir import RunSpec, Status, new_run_dir, read_run, read_statuses, write_run

EXIT_OOM = 3
EXIT_CANCELLED = 130


def relaunch(spec: RunSpec) -> NoReturn:
    """Hand the run to this module in place of the current process (never returns)."""
    folder = new_run_dir()
    write_run(folder, spec)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "lowvram.parallel.launch", str(folder)])


def launcher_arguments(folder: Path, processes: int) -> list[str]:
    """torch.distributed.run's arguments: one process per GPU on this machine, each `python -m lowvram worker`.
    Ctrl-C is left to the processes (they agree on it); the launcher still forwards SIGTERM/SIGHUP/SIGQUIT.
    Processes other than the first write their output to the run folder's logs."""
    quiet = ",".join(f"{r}:3" for r in range(1, processes))
    args = ["--standalone", f"--nproc-per-node={processes}", "--signals-to-handle=SIGTERM,SIGHUP,SIGQUIT",
            f"--log-dir={folder / 'logs'}"]
    if quiet:
        args.append(f"--redirects={quiet}")
    return args + ["-m", "lowvram", "worker", str(folder)]


def run_processes(folder: Path, processes: int) -> Optional[str]:
    """Run the processes; None when all exited 0, else what torch.distributed.run reported."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # OMP threads: torch.distributed.run would set 1 and say so; share the cores instead
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    try:
        run(parse_args(launcher_arguments(folder, processes)))
    except ChildFailedError as exc:
        first = min(exc.failures.items())
        return f"process {first[0]} exited with {first[1].exitcode}"
    return None


def outcome(statuses: list[Status], processes: int, failure: Optional[str]) -> str:
    """One word for the run: ok, oom (any process), cancelled (all that reported), error."""
    seen = {s.outcome for s in statuses}
    if "oom" in seen:
        return "oom"
    if failure is None and len(statuses) == processes and seen == {"ok"}:
        return "ok"
    if seen and seen <= {"cancelled", "ok"} and "cancelled" in seen:
        return "cancelled"
    return "error"


def main(argv: Sequence[str]) -> int:
    folder = Path(argv[0])
    spec = read_run(folder)
    processes = spec.plan.parallel_gpus
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the processes; inherited by them until they handle it
    try:
        failure = run_processes(folder, processes)
    except Exception as exc:  # torch.distributed.run could not start them (a port, a missing backend)
        print(f"error: could not start {processes} processes with torch.distributed.run: {exc} "
              f"(run folder: {folder}); plan for one GPU with --gpus 1", file=sys.stderr)
        return 1
    statuses = read_statuses(folder)
    result = outcome(statuses, processes, failure)
    if result == "ok":
        shutil.rmtree(folder, ignore_errors=True)
        return 0
    if result == "cancelled":
        shutil.rmtree(folder, ignore_errors=True)
        return EXIT_CANCELLED
    if result == "oom":
        oom = next(s for s in statuses if s.outcome == "oom")
        print(f"out of memory with context parallel on {processes} GPUs (process {oom.rank}: {oom.message}); "
              "continuing on one GPU", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from lowvram.cli import main as cli_main
        from lowvram.sampling.faults import ENV_VAR

        os.environ.pop(ENV_VAR, None)  # injected out-of-memory errors (tests) are for the processes that hit them

        code = cli_main(["worker", str(folder), "--one-gpu"])
        shutil.rmtree(folder, ignore_errors=True)
        return code
    failed = [s for s in statuses if s.outcome == "error"]
    message = next((s.message for s in failed if s.message), "") or failure or "no process reported"
    print(f"error: context-parallel run failed: {message} (process logs: {folder / 'logs'})", file=sys.stderr)
    return next((s.exit_code for s in failed if s.exit_code), 1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
