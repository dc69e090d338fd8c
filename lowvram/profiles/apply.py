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

from lowvram.caching.setting import CacheSetting
from lowvram.errors import UserError
from lowvram.job import Job
from lowvram.loras.spec import LoraSpec
from lowvram.profiles.schema import (
    JobDefaults,
    MachineFingerprint,
    PlannerPrefs,
    Profile,
    ProfileLora,
)
from planner.choose import Preferences
from planner.plan import Plan
from planner.probe import GIB, HardwareProbe

JOB_FIELDS = tuple(f.name for f in fields(JobDefaults) if f.name not in ("cache", "teacache", "loras"))
# Command-line flags of the planner preferences (GiB on the command line and in the file, bytes in Preferences).
PREF_FLAGS = {"min_precision": "min_precision", "prefer": "prefer", "vram_reserve": "vram_reserve_gib",
              "ram_reserve": "ram_reserve_gib", "vram_cap": "vram_cap_gib", "ram_cap": "ram_cap_gib",
              "compile": "compile", "max_error": "max_error"}


def to_preferences(prefs: PlannerPrefs) -> Preferences:
    """The planner's Preferences for a profile's [planner] table (unset values keep the planner's defaults)."""
    kwargs: dict[str, Any] = {}
    if prefs.min_precision is not None:
        kwargs["min_quant"] = prefs.min_precision
    if prefs.prefer is not None:
        kwargs["prefer"] = prefs.prefer
    if prefs.compile is not None:
        kwargs["compile"] = prefs.compile
    if prefs.max_error is not None:
        kwargs["max_error"] = prefs.max_error
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


def merge_cache(base: Optional[CacheSetting], args: Any) -> Optional[CacheSetting]:
    """Cache options given on the command line replace the matching parts of `base` (a profile's setting,
    or None: then None means no cache option was given). --teacache X, --teacache-speedup X and
    --no-teacache are the older spellings of --cache teacache --cache-threshold X, ... and --cache none."""
    opt = lambda name: getattr(args, name, None)  # noqa: E731
    method, threshold, speedup = opt("cache"), opt("cache_threshold"), opt("cache_speedup")
    old_threshold, old_speedup = opt("teacache"), opt("teacache_speedup")
    if old_threshold is not None or old_speedup is not None:
        if method not in (None, "teacache"):
            raise UserError(f"--teacache/--teacache-speedup turn TeaCache on; they contradict --cache {method}. Drop one of them.")
        if threshold is not None or speedup is not None:
            raise UserError("give the threshold or speed-up once: --cache-threshold/--cache-speedup, or the older --teacache/--teacache-speedup.")
        method, threshold, speedup = "teacache", old_threshold, old_speedup
    if opt("no_teacache"):
        if method not in (None, "none") or threshold is not None or speedup is not None:
            raise UserError("--no-teacache turns step skipping off; it contradicts the other cache options given. Drop one of them.")
        method = "none"
    calibrate = bool(opt("cache_calibrate"))
    if calibrate and method is None:
        method = "magcache"
    extras = {
        "retention": opt("teacache_retention"),
        "coefficients": opt("teacache_coefficients"),
        "max_skips": opt("magcache_k"),
        "retention_ratio": opt("magcache_retention"),
    }
    extras = {k: v for k, v in extras.items() if v is not None}
    if method is None and threshold is None and speedup is None and not extras and not calibrate:
        return base
    current = base or CacheSetting()
    if method == "none":
        if threshold is not None or speedup is not None or calibrate:
            raise UserError("--cache none turns step skipping off; drop --cache-threshold, --cache-speedup and --cache-calibrate.")
        return CacheSetting()
    if method is not None and method != current.method:
        current = replace(current, method=method, threshold=None, speedup=None, calibrate=False)  # the old threshold meant the other method's
    if current.method == "none" and (threshold is not None or speedup is not None):
        raise UserError("--cache-threshold and --cache-speedup need a cache: add --cache teacache or --cache magcache.")
    changes: dict[str, Any] = dict(extras)
    if threshold is not None or speedup is not None:
        changes.update(threshold=threshold, speedup=speedup, calibrate=False)
    if calibrate:
        changes.update(calibrate=True, threshold=None, speedup=None)
    return replace(current, **changes)


def loras_from_args(args: Any) -> Optional[tuple[LoraSpec, ...]]:
    """The --lora options as LoraSpecs (files not read yet); None when none was given, () for `--lora none`."""
    from lowvram.loras.spec import parse_lora_arg

    given = getattr(args, "lora", None)
    if given is None:
        return None
    if [g.strip().lower() for g in given] == ["none"]:
        return ()
    if any(g.strip().lower() == "none" for g in given):
        raise UserError("--lora none runs without LoRAs: drop it, or the other --lora options.")
    return tuple(parse_lora_arg(g) for g in given)


def profile_loras(profile: Profile, extra_dirs=()) -> tuple[LoraSpec, ...]:
    """A profile's LoRAs, found by file name in the LoRA folders (then `extra_dirs`: the profile file's own
    folder) and checked by sha256 (UserError naming the hash when a file is missing or different)."""
    from lowvram.loras.files import find_lora

    return tuple(LoraSpec(path=str(find_lora(lora.name, lora.sha256.lower(), extra_dirs)), scale=lora.scale, expert=lora.expert or "",
                          sha256=lora.sha256.lower()) for lora in profile.job.loras or ())


def _cache_given(args: Any) -> bool:
    return any(getattr(args, name, None) not in (None, False) for name in (
        "cache", "cache_threshold", "cache_speedup", "cache_calibrate", "teacache", "teacache_speedup", "no_teacache"))


def job_from_args(args: Any, cache: Optional[CacheSetting] = None) -> Job:
    """A Job from options given as attributes of `args` (None: not given, the model's default applies);
    `cache` when the cache options were already merged over a profile's."""
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
        cache=cache if cache is not None else merge_cache(None, args) or CacheSetting(),
        guidance_2=pick("guidance_2"),
        shift=pick("shift"),
        loras=loras_from_args(args) or (),
    )


def apply_profile(source: Union[argparse.Namespace, Job], profile: Optional[Profile]) -> tuple[Job, Preferences]:
    """The Job and Preferences to plan and run with. Command-line options (or the Job's prompt/image/seed/out) win."""
    if isinstance(source, Job):
        job = source if profile is None else _job_over(source, profile)
        return job, to_preferences(profile.planner if profile else PlannerPrefs())
    args = copy.copy(source)
    if getattr(args, "prompt", None) is None:
        args.prompt = ""  # plan and profile commands have no prompt
    given = {name for name in JOB_FIELDS if getattr(source, name, None) is not None}
    loras = loras_from_args(source)
    if loras is None and profile is not None and profile.job.loras:
        # the profile's LoRAs, saved with its job settings: those win over the LoRAs' presets too
        where = getattr(source, "profile", None)  # the profile file's folder is searched last
        loras = profile_loras(profile, [Path(where).expanduser().resolve().parent] if isinstance(where, str) else ())
        given |= {name for name in JOB_FIELDS if getattr(profile.job, name) is not None}
    if profile is not None:
        if getattr(args, "model", None) is None:
            args.model = profile.model
            if getattr(args, "base", None) is None:
                args.base = profile.base
        for name in JOB_FIELDS:
            value = getattr(profile.job, name)
            if getattr(args, name, None) is None and value is not None:
                setattr(args, name, value)
    cache = merge_cache(profile.job.cache if profile else None, source)
    job = job_from_args(args, cache).with_(loras=loras or ())  # no --model and no profile: its default model
    if job.loras:  # checked against the model now (exit 2 before anything loads); their presets where not given
        from lowvram.loras.resolve import resolve_job_loras

        job = resolve_job_loras(job, given, _cache_given(source))
    prefs = prefs_with_args(profile.planner if profile else PlannerPrefs(), source)
    return job, to_preferences(prefs)


def _job_over(job: Job, profile: Profile) -> Job:
    changes: dict[str, Any] = {"model": profile.model, "base": profile.base, "loras": profile_loras(profile), "notes": ()}
    for name in JOB_FIELDS:
        value = getattr(profile.job, name)
        if value is not None:
            changes[name] = value
    if profile.job.cache is not None:
        changes["cache"] = profile.job.cache
    job = job.with_(**changes)
    if job.loras:  # the profile's settings were saved with its LoRAs: they win over the LoRAs' presets
        from lowvram.loras.resolve import resolve_job_loras

        job = resolve_job_loras(job, {name for name in JOB_FIELDS if getattr(profile.job, name) is not None})
    return job


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
        gpus=probe.gpu_count if probe.gpu_count > 1 else None,
        gpu_vram_gib=tuple(round(g.vram_total / GIB, 2) for g in probe.gpus) if probe.gpu_count > 1 else None,
        **_each_card(probe),
    )


def _each_card(probe: HardwareProbe) -> dict:
    """[saved_on]'s gpu_names and gpu_compute_capabilities, where the GPUs are not all one card."""
    if len({(g.name, g.compute_capability) for g in probe.gpus}) < 2:
        return {}
    return {"gpu_names": tuple(g.name or "unknown" for g in probe.gpus),
            "gpu_compute_capabilities": tuple(".".join(map(str, g.compute_capability)) if g.compute_capability else ""
                                              for g in probe.gpus)}


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
        probe = synthetic_probe(0 if no_gpu else machine.vram_gib, machine.ram_gib, gpu_name=machine.gpu,
                                compute_capability=cc, os="saved machine")
        if not no_gpu and machine.gpus and machine.gpus > 1:
            from planner.probe import with_gpus

            what = "the profile's [saved_on] gpu_compute_capabilities"
            cards = tuple((name, parse_compute_capability(cc, what) if cc else None) for name, cc in machine.cards)
            probe = with_gpus(probe, machine.vram_per_gpu, cards)
        return probe
    except ValueError as exc:
        raise UserError(f"the profile's [saved_on] machine cannot be rebuilt: {exc}") from None


def job_defaults(job: Job) -> JobDefaults:
    """Everything a profile keeps of a job: all but the prompt, image, seed and output path; LoRAs by file name,
    sha256, scale and expert. The default negative prompt (Wan's own) is left out, so the file stays readable and
    follows lowvram's default."""
    from lowvram.loras.files import sha256_of
    from lowvram.models.defaults import WAN_NEGATIVE_PROMPT

    kept = {name: getattr(job, name) for name in JOB_FIELDS}
    if kept.get("negative_prompt") == WAN_NEGATIVE_PROMPT:
        kept["negative_prompt"] = None
    loras = tuple(ProfileLora(name=lora.name, sha256=lora.sha256 or sha256_of(Path(lora.path)), scale=float(lora.scale),
                              expert=lora.expert or None) for lora in job.loras)
    return JobDefaults(**kept, cache=job.cache, loras=loras or None)


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
        cache = settings.pop("cache", None)
        old = settings.pop("teacache", None)  # sidecars written before MagCache
        job = Job(**{k: v for k, v in settings.items() if k in known and k != "cache"})
        if isinstance(cache, dict):
            job = job.with_(cache=CacheSetting(**{k: v for k, v in cache.items() if k in {f.name for f in fields(CacheSetting)}}))
        elif isinstance(old, dict):
            from lowvram.profiles.schema import TeaCacheTable

            job = job.with_(cache=TeaCacheTable(**{k: v for k, v in old.items() if k in {f.name for f in fields(TeaCacheTable)}}).to_setting())
        plan = Plan.from_dict(data["plan"]) if isinstance(data.get("plan"), dict) else None
    except OSError as exc:
        raise UserError(f"--from-sidecar {path}: cannot read it ({exc.strerror}).") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(
            f"--from-sidecar {path}: not a lowvram sidecar ({type(exc).__name__}: {exc}); give the .json written beside a video."
        ) from None
    return job, plan

