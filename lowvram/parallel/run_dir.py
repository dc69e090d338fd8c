"""The folder a context-parallel run's launcher and processes share: what to run, and how each process ended.

`run.json`: the jobs (seeds drawn already, so every process makes the same video), the plan, the planner's
preferences (for a one-GPU fallback), --quiet, a resume file to finish. `status-<rank>.json`: each process's
outcome ("ok", "cancelled", "oom", "error"), the job it was on, where the first process kept the latents.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lowvram.io.output import write_json_atomic
from lowvram.job import Job
from planner.choose import Preferences
from planner.plan import Plan

RUN_FILE = "run.json"
OUTCOMES = ("ok", "cancelled", "oom", "error")


@dataclass(frozen=True)
class RunSpec:
    jobs: tuple[Job, ...]
    plan: Plan
    prefs: Preferences = Preferences()
    quiet: bool = False
    resume: Optional[str] = None  # a resume file the first job continues from
    vram_caps: tuple[float, ...] = ()  # `generate --gpus 2x12`: the most VRAM (GiB) each GPU may use, kept by a fallback

    def to_dict(self) -> dict:
        return {"jobs": [j.to_dict() for j in self.jobs], "plan": self.plan.to_dict(),
                "prefs": dataclasses.asdict(self.prefs), "quiet": self.quiet, "resume": self.resume,
                "vram_caps": list(self.vram_caps)}

    @classmethod
    def from_dict(cls, data: dict) -> "RunSpec":
        from lowvram.sampling.resume import job_from_dict

        return cls(tuple(job_from_dict(j) for j in data["jobs"]), Plan.from_dict(data["plan"]),
                   Preferences(**data["prefs"]), bool(data["quiet"]), data.get("resume"),
                   tuple(float(g) for g in data.get("vram_caps") or ()))


@dataclass(frozen=True)
class Status:
    rank: int
    outcome: str  # OUTCOMES
    job: int = 0  # index of the job it ended on
    latents: Optional[str] = None  # the resume file the first process kept
    message: str = ""
    exit_code: int = 0


def new_run_dir() -> Path:
    from lowvram.paths import cache_dir

    root = cache_dir() / "parallel"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=root))


def write_run(folder: Path, spec: RunSpec) -> None:
    write_json_atomic(spec.to_dict(), folder / RUN_FILE)


def read_run(folder: Path) -> RunSpec:
    return RunSpec.from_dict(json.loads((folder / RUN_FILE).read_text()))


def write_status(folder: Path, status: Status) -> None:
    write_json_atomic(dataclasses.asdict(status), folder / f"status-{status.rank}.json")


def read_statuses(folder: Path) -> list[Status]:
    """The statuses the processes wrote, by rank (a process killed before writing has none)."""
    out = []
    for path in sorted(folder.glob("status-*.json"), key=lambda p: int(p.stem.split("-")[1])):
        try:
            out.append(Status(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return out


__all__ = ["OUTCOMES", "RunSpec", "Status", "new_run_dir", "read_run", "read_statuses", "write_run", "write_status"]
