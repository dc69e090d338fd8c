"""One process of a context-parallel run (`lowvram worker RUN_DIR`, started by lowvram.parallel.launch), or the
one-GPU run that finishes it after an out-of-memory (`--one-gpu`).

Every process runs the same jobs with the same plan (the runner's context parallel hooks split each step's tokens
across them); the first one prints, decodes, writes the video and sidecar, and keeps the latents when a run stops.
Each writes how it ended to the run folder (lowvram.parallel.run_dir) for the launcher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from lowvram.errors import CancelledError, UserError
from lowvram.parallel import group
from lowvram.parallel.run_dir import RunSpec, Status, read_run, read_statuses, write_status
from lowvram.telemetry import RunCancelled, RunFailed, ignore


class _KeptLatents:
    """An event sink that remembers where the run kept its latents (RunCancelled / RunFailed say so)."""

    def __init__(self, forward) -> None:
        self.forward = forward
        self.path: Optional[str] = None

    def __call__(self, event) -> None:
        if isinstance(event, (RunCancelled, RunFailed)) and event.latents_path:
            self.path = event.latents_path
        self.forward(event)


def _one_gpu_start(folder: Path, spec: RunSpec) -> tuple[int, Optional[str]]:
    """Where a one-GPU finish starts: the job the processes stopped on, from the first process's latents if kept."""
    statuses = read_statuses(folder)
    start = max((s.job for s in statuses), default=0)
    first = next((s for s in statuses if s.rank == 0), None)
    if first is not None and first.latents:
        return start, first.latents
    return start, spec.resume if start == 0 else None


def one_gpu_probe(spec: RunSpec, probe):
    """The machine a one-GPU finish plans for: `probe`'s first GPU, within the VRAM `generate --gpus` allowed it."""
    from planner.probe import capped_gpus

    probe = probe.first_gpus(1)
    return capped_gpus(probe, spec.vram_caps[:1]) if spec.vram_caps and probe.has_gpu else probe


def one_gpu_plan(spec: RunSpec, job, say=print):
    """The planner's plan for this machine's first GPU alone (or its CPU), announced."""
    from lowvram.planning import plan_for_job
    from planner.choose import stage_table
    from planner.probe import probe_hardware

    result = plan_for_job(job, probe=one_gpu_probe(spec, probe_hardware()), prefs=spec.prefs, inputs=False)
    say(f"plan: {result.plan.summary()}")
    for line in stage_table(result.plan):
        say(line)
    return result.plan


def run(folder: Path, one_gpu: bool = False) -> int:
    from lowvram.cli.console import ConsoleReporter
    from lowvram.cli.interrupt import cancel_on_interrupt
    from lowvram.sampling.recovery import OutOfMemoryExhausted
    from lowvram.sampling.resume import load_resume_file
    from lowvram.sampling.runner import generate

    spec = read_run(folder)
    start, resume_path, plan = 0, spec.resume, spec.plan
    if one_gpu:
        start, resume_path = _one_gpu_start(folder, spec)
        plan = one_gpu_plan(spec, spec.jobs[start], print if not spec.quiet else (lambda _line: None))
    else:
        group.setup(plan.device)
    rank, writer = group.rank(), group.is_writer()
    sink = _KeptLatents(ConsoleReporter(quiet=spec.quiet, plan=plan) if writer else ignore)
    index = start

    def ended(outcome: str, message: str = "", code: int = 0) -> None:
        if not one_gpu:
            write_status(folder, Status(rank, outcome, index, sink.path if writer else None, message, code))

    try:
        with cancel_on_interrupt() as cancel:
            loaded = None
            for index in range(start, len(spec.jobs)):
                resume = load_resume_file(resume_path) if index == start and resume_path else None
                result = generate(spec.jobs[index], plan, on_event=sink, cancel=cancel, loaded=loaded, resume=resume)
                loaded, plan = result.loaded, result.plan
                if resume is not None and one_gpu and resume_path != spec.resume:
                    Path(resume_path).unlink(missing_ok=True)  # the processes' latents, used up (not the user's file)
                if writer:
                    print(result.video_path, flush=True)
    except OutOfMemoryExhausted as exc:
        ended("oom", exc.detail, exc.exit_code)
        if one_gpu:
            raise
        return exc.exit_code  # the launcher finishes on one GPU
    except CancelledError:
        ended("cancelled")
        if one_gpu:
            raise
        return 0  # every process stopped at the same step: nothing for torch.distributed.run to tear down
    except KeyboardInterrupt:  # aborted now: the others may be waiting on this one, so exit non-zero
        ended("error", "interrupted", 130)
        raise
    except UserError as exc:
        ended("error", str(exc), exc.exit_code)
        raise
    except Exception as exc:
        ended("error", f"{type(exc).__name__}: {exc}", 1)
        raise
    finally:
        group.teardown()
    ended("ok")
    return 0


__all__ = ["one_gpu_plan", "one_gpu_probe", "run"]
