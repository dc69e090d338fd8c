"""From a profile to what runs: a Job and planner Preferences, with command-line options winning.

`apply_profile(args_or_job, profile)` is the one entry point of `plan`, `generate` and `tui`:
- with an argparse Namespace, options left at None were not given, so the profile fills them;
- with a Job (the TUI's form), the profile's settings replace the job's; prompt, image, seed and out stay.
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Optional, Union

from lowvram.errors import UserError
from lowvram.job import Job, TeaCacheSetting
from lowvram.profiles.schema import (
    JobDefaults,
    MachineFingerprint,
    PlannerPrefs,
    Profile,
)
from planner.choose import Preferences
from planner.plan import Plan
from planner.probe import GIB, HardwareProbe

JOB_FIELDS = tuple(f.name for f in fields(JobDefaults) if f.name != "teacache")
# Command-line flags of the planner preferences (GiB on the command line and in the file, bytes in Preferences).
PREF_FLAGS = {"min_precision": "min_precision", "prefer": "prefer", "vram_reserve": "vram_reserve_gib",
              "ram_reserve": "ram_reserve_gib", "vram_cap": "vram_cap_gib", "ram_cap": "ram_cap_gib"}


def to_preferences(prefs: PlannerPrefs) -> Preferences:
    """The planner's Preferences for a profile's [planner] table (unset values keep the planner's defaults)."""
    kwargs: dict[str, Any] = {}
    if prefs.min_precision is not None:
        kwargs["min_quant"] = prefs.min_precision
    if prefs.prefer is not None:
        kwargs["prefer"] = prefs.prefer
    for name in ("vram_reserve", "ram_reserve", "vram_cap", "ram_cap"):
        value = getattr(prefs, f"{name}_gib")
        if value is not None:
            kwargs[name] = int(value * GIB)
    return Preferences(**kwargs)


def prefs_with_args(prefs: PlannerPrefs, args: Any) -> PlannerPrefs:
    """The profile's preferences with the preference options given on the command line on top."""
    given = {field: getattr(args, flag) for flag, field in PREF_FLAGS.items() if getattr(args, flag, None) is not None}
    try:
        return replace(prefs, **given)
    except (TypeError, ValueError) as exc:
        raise UserError(f"planner preference options: {exc}") from None


def merge_teacache(base: Optional[TeaCacheSetting], args: Any) -> Optional[TeaCacheSetting]:
    """TeaCache options given on the command line replace the matching parts of `base` (a profile's setting,
    or None: then None means no TeaCache option was given)."""
    threshold, speedup = getattr(args, "teacache", None), getattr(args, "teacache_speedup", None)
    retention, coefficients = getattr(args, "teacache_retention", None), getattr(args, "teacache_coefficients", None)
    if getattr(args, "no_teacache", False):
        if threshold is not None or speedup is not None:
            raise UserError("--no-teacache contradicts --teacache/--teacache-speedup; drop one of them.")
        return TeaCacheSetting(enabled=False)
    if threshold is None and speedup is None and retention is None and coefficients is None:
        return base
    tc = base or TeaCacheSetting()
    if threshold is not None or speedup is not None:
        tc = replace(tc, enabled=True, threshold=threshold, speedup=speedup)
    if retention is not None:
        tc = replace(tc, retention=retention)
    if coefficients is not None:
        tc = replace(tc, coefficients=coefficients)
    return tc


def job_from_args(args: Any) -> Job:
    """A Job from options given as attributes of `args` (None: not given, the model's default applies)."""
    from lowvram.models.defaults import DEFAULT_MODEL, job_defaults

    model = getattr(args, "model", None) or DEFAULT_MODEL
    defaults = job_defaults(model)
    pick = lambda name: getattr(args, name) if getattr(args, name, None) is not None else defaults[name]  # noqa: E731
    return Job(
        prompt=args.prompt,
        model=model,
        base=getattr(args, "base", None),
        negative_prompt=pick("negative_prompt"),
        image=getattr(args, "image", None),
        width=pick("width"),
        height=pick("height"),
        frames=pick("frames"),
        steps=pick("steps"),
        guidance=pick("guidance"),
        seed=getattr(args, "seed", 0),
        fps=pick("fps"),
        out=getattr(args, "out", None),
        teacache=teacache_from_args(args),
        guidance_2=pick("guidance_2"),
        shift=pick("shift"),
    )


def teacache_from_args(args: Any) -> TeaCacheSetting:
    return merge_teacache(None, args) or TeaCacheSetting()


def apply_profile(source: Union[argparse.Namespace, Job], profile: Optional[Profile]) -> tuple[Job, Preferences]:
    """The Job and Preferences to plan and run with. Command-line options (or the Job's prompt/image/seed/out) win."""
    if isinstance(source, Job):
        job = source if profile is None else _job_over(source, profile)
        return job, to_preferences(profile.planner if profile else PlannerPrefs())
    args = copy.copy(source)
    if getattr(args, "prompt", None) is None:
        args.prompt = ""  # plan and profile commands have no prompt
    if profile is not None:
        if getattr(args, "model", None) is None:
            args.model = profile.model
            if getattr(args, "base", None) is None:
                args.base = profile.base
        for name in JOB_FIELDS:
            value = getattr(profile.job, name)
            if getattr(args, name, None) is None and value is not None:
                setattr(args, name, value)
    job = job_from_args(args)  # no --model and no profile: its default model
    teacache = merge_teacache(profile.job.teacache if profile else None, source)
    if teacache is not None:
        job = job.with_(teacache=teacache)
    prefs = prefs_with_args(profile.planner if profile else PlannerPrefs(), source)
    return job, to_preferences(prefs)


def _job_over(job: Job, profile: Profile) -> Job:
    changes: dict[str, Any] = {"model": profile.model, "base": profile.base}
    for name in JOB_FIELDS:
        value = getattr(profile.job, name)
        if value is not None:
            changes[name] = value
    if profile.job.teacache is not None:
        changes["teacache"] = profile.job.teacache
    return job.with_(**changes)


def load_profile_file(path: Optional[str]) -> Optional[Profile]:
    """The profile of a `--profile FILE` option, or None when the option was not given."""
    from lowvram.profiles.toml_io import load

    return load(path) if path else None


# ------------------------------------------------------------------------------------------ saving


def fingerprint(probe: HardwareProbe) -> MachineFingerprint:
    cc = ".".join(map(str, probe.compute_capability)) if probe.compute_capability else None
    return MachineFingerprint(
        gpu=probe.gpu_name if probe.has_gpu and probe.gpu_name else "none",
        vram_gib=round(probe.vram_total / GIB, 2),
        ram_gib=round(probe.ram_total / GIB, 2),
        compute_capability=cc,
    )


def parse_compute_capability(text: str, what: str) -> tuple[int, int]:
    """'8.9' -> (8, 9); `what` names the option or key in the error."""
    try:
        major, minor = (int(x) for x in text.split("."))
    except ValueError:
        raise UserError(f"{what} {text}: write it as MAJOR.MINOR, e.g. 8.9") from None
    return major, minor


def probe_like(machine: MachineFingerprint) -> HardwareProbe:
    """A what-if probe of a profile's saved machine (all its VRAM and RAM free), to re-plan as it was saved."""
    from planner.probe import synthetic_probe

    cc = machine.compute_capability
    cc = parse_compute_capability(cc, "the profile's [saved_on] compute_capability") if cc else None
    no_gpu = machine.gpu == "none" or machine.vram_gib == 0
    try:
        return synthetic_probe(0 if no_gpu else machine.vram_gib, machine.ram_gib, gpu_name=machine.gpu,
                               compute_capability=cc, os="saved machine")
    except ValueError as exc:
        raise UserError(f"the profile's [saved_on] machine cannot be rebuilt: {exc}") from None


def job_defaults(job: Job) -> JobDefaults:
    """Everything a profile keeps of a job: all but the prompt, image, seed and output path."""
    return JobDefaults(**{name: getattr(job, name) for name in JOB_FIELDS}, teacache=job.teacache)


def profile_from_job(job: Job, prefs: PlannerPrefs = PlannerPrefs(), name: str = "", description: str = "",
                     plan: Optional[Plan] = None, probe: Optional[HardwareProbe] = None) -> Profile:
    return Profile(
        name=name or f"{job.model} {job.width}x{job.height} {job.frames} frames",
        model=job.model,
        base=job.base,
        description=description,
        job=job_defaults(job),
        planner=prefs,
        saved_on=fingerprint(probe) if probe is not None else None,
        saved_plan=plan,
    )


def job_from_sidecar(path: str) -> tuple[Job, Optional[Plan]]:
    """The job of a finished run (its JSON sidecar) and the plan it ran with."""
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        settings = dict(data["settings"])
        known = {f.name for f in fields(Job)}
        teacache = settings.pop("teacache", None)
        job = Job(**{k: v for k, v in settings.items() if k in known and k != "teacache"})
        if isinstance(teacache, dict):
            tc_known = {f.name for f in fields(TeaCacheSetting)}
            job = job.with_(teacache=TeaCacheSetting(**{k: v for k, v in teacache.items() if k in tc_known}))
        plan = Plan.from_dict(data["plan"]) if isinstance(data.get("plan"), dict) else None
    except OSError as exc:
        raise UserError(f"--from-sidecar {path}: cannot read it ({exc.strerror}).") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(
            f"--from-sidecar {path}: not a lowvram sidecar ({type(exc).__name__}: {exc}); give the .json written beside a video."
        ) from None
    return job, plan

