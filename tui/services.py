"""What the TUI calls outside itself: probe, planner, step-cache preview, profiles, runner.

The screens take these through `Services`, so tests can give a fixed probe (a fake for the hardware)
while the planner, the runtime and the TUI itself stay real. Imports are deferred to the first call,
so the app starts without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from lowvram.job import Job
from planner.plan import Plan


@dataclass(frozen=True)
class Alternative:
    """A plan the planner considered: whether it fits and, if not chosen, why."""

    summary: str
    fits: bool
    reason: str = ""
    peak_vram_bytes: int = 0
    peak_ram_bytes: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class StepDecision:
    step: int
    branch: str  # "cond" or "uncond"
    computed: bool


@dataclass(frozen=True)
class SkipPreview:
    """The step cache's skip schedule known before the run (or why there is none)."""

    computed_steps: int = 0
    total_steps: int = 0
    predicted_speedup: float = 1.0
    decisions: tuple[StepDecision, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class PlanView:
    """Everything the plan screen shows."""

    plan: Plan
    alternatives: tuple[Alternative, ...] = ()
    explanation: tuple[str, ...] = ()
    hardware: tuple[str, ...] = ()
    preview: Optional[SkipPreview] = None
    preferences: str = ""  # the profile's planner preferences in effect, described
    suggestions: tuple = ()  # planner.suggest.Suggestion: what would help a very slow plan
    job: Optional[Job] = None  # the job as planned: its LoRAs checked, their presets applied (job.notes say which)


def default_probe() -> Any:
    from planner.probe import probe_hardware

    return probe_hardware()


def describe_probe(probe: Any) -> tuple[str, ...]:
    """Hardware summary lines, as `lowvram probe` prints them."""
    from planner.probe import describe_probe as describe

    return tuple(describe(probe))


def plan_job(job: Job, probe: Any, prefs: Any = None) -> PlanView:
    """The planner's plan for this job on this probe, with the alternatives it weighed (its time counting
    only the calls the job's step cache computes, when that is known before the run). The job is checked as
    `lowvram generate` checks it before loading (UserError naming the fix)."""
    from dataclasses import replace

    from lowvram.loras.resolve import resolve_job_loras
    from lowvram.models.task import check_inputs_before_load
    from lowvram.planning import plan_for_job
    from planner.choose import NoPlanFits, Preferences

    check_inputs_before_load(job)
    job = resolve_job_loras(job)  # new LoRAs: checked against the model, their presets applied (the form shows them)
    cache = _cache_counts(job)
    preferences = ""
    planner_prefs = Preferences()
    if prefs is not None:  # a profile's [planner] table (PlannerPrefs) -> the planner's Preferences
        from lowvram.profiles.apply import to_preferences
        from lowvram.profiles.report import describe_prefs

        planner_prefs = to_preferences(prefs)
        preferences = describe_prefs(prefs)
    # the TUI runs a job in a thread of its own process: several GPUs only within it (no context parallel processes)
    planner_prefs = replace(planner_prefs, context_parallel=False)
    try:
        result = plan_for_job(job, probe=probe, prefs=planner_prefs, cache=cache)
    except NoPlanFits as exc:
        lines = [s.describe() for s in suggestions(exc, job, probe, planner_prefs, cache)]
        if lines:
            exc.args = ("\n".join([str(exc), "What would make it fit:", *(f"  - {line}" for line in lines)]),)
        raise
    alternatives = tuple(
        Alternative(
            summary=c.plan.summary(),
            fits=bool(c.fits),
            reason=c.rejected_reason or "",
            peak_vram_bytes=c.plan.peak_vram_bytes,
            peak_ram_bytes=c.plan.peak_ram_bytes,
            seconds=c.plan.predicted_seconds,
        )
        for c in result.candidates
    )
    return PlanView(plan=result.plan, alternatives=alternatives, explanation=tuple(result.explanation), hardware=describe_probe(probe),
                    preferences=preferences, suggestions=suggestions(result, job, probe, planner_prefs, cache), job=job)


def suggestions(outcome: Any, job: Job, probe: Any, prefs: Any, cache: Any = None) -> tuple:
    """planner.suggest's changes for a very slow plan (or none fitting); () when the plan is fine."""
    from planner.calibration import load_calibration
    from planner.choose import PlanResult
    from lowvram.models.specs import spec_for_model
    from planner.suggest import is_slow, suggest

    if isinstance(outcome, PlanResult) and not is_slow(outcome):
        return ()
    return suggest(outcome, job, probe, prefs, spec_for_model(job.model, job.base), spec_for_model, load_calibration(), cache)


# The planner's explanation opens with the machine, the budget, the job and the chosen plan's table,
# then compares: these headers start the comparison (runners-up, then rejected options with reasons).
COMPARISON_HEADERS = ("runners-up:", "rejected ")
NOTE_PREFIXES = ("budget:", "time model:")


def split_explanation(lines: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(notes worth showing under the plan, the comparison with the alternatives)."""
    start = next((i for i, line in enumerate(lines) if line.startswith(COMPARISON_HEADERS)), len(lines))
    notes = tuple(line for line in lines[:start] if line.startswith(NOTE_PREFIXES))
    return notes, tuple(lines[start:])


def _cache_counts(job: Job):
    """The cache plan's call counts for the planner, or None (no cache, not known yet, or a problem the
    preview reports)."""
    if not job.cache.enabled:
        return None
    from lowvram.caching.plan import preview_for_job
    from lowvram.errors import UserError

    try:
        cache = preview_for_job(job).plan
    except UserError:
        return None
    return cache.counts() if cache is not None else None


def cache_preview(job: Job, plan: Plan) -> SkipPreview:
    """The skip schedule the job's step cache will follow, computed before the run (no model load; TeaCache
    reads the checkpoint's time-embedding weights, MagCache needs only its ratios)."""
    if not job.cache.enabled:
        return SkipPreview(total_steps=job.steps, computed_steps=job.steps, note="step skipping off: every step computed")
    from lowvram.caching.plan import preview_for_job
    from lowvram.errors import UserError

    try:
        preview = preview_for_job(job)
    except UserError as exc:
        return SkipPreview(total_steps=job.steps, note=str(exc))
    cache = preview.plan
    if cache is None:
        return SkipPreview(total_steps=job.steps, note=preview.message)
    decisions = tuple(StepDecision(int(c.step), str(c.branch), bool(c.computed)) for s in cache.schedules for c in s.calls)
    return SkipPreview(
        computed_steps=sum(s.computed_steps for s in cache.schedules),
        total_steps=cache.total_steps,
        predicted_speedup=cache.predicted_speedup,
        decisions=decisions,
        note=cache.summary(),
    )


def load_profile(path: str, job: Job) -> tuple[Job, Any]:
    """`job` with a profile's model and job defaults on top (its prompt, image, seed and output stay),
    and the profile's planner preferences (PlannerPrefs). Raises UserError (ProfileError) naming the
    file, the key and the fix."""
    from lowvram.profiles.apply import apply_profile, load_profile_file

    profile = load_profile_file(path)
    applied, _ = apply_profile(job, profile)
    return applied, profile.planner


def save_profile(path: str, job: Job, plan: Optional[Plan], probe: Any = None, prefs: Any = None, name: str = "", description: str = "") -> str:
    """Write the form's settings as a profile (with, for information, the last plan and this machine).
    Never overwrites an existing file; creates the user's profile folder when saving there."""
    from pathlib import Path

    from lowvram.profiles import PlannerPrefs, save
    from lowvram.profiles.apply import profile_from_job
    from lowvram.profiles.library import user_profiles_dir

    target = Path(path).expanduser()
    if target.parent == user_profiles_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
    profile = profile_from_job(job, prefs or PlannerPrefs(), name=name or target.stem, description=description, plan=plan, probe=probe)
    return str(save(profile, target))


def list_profiles() -> list:
    """The shipped profiles and the user's, with names and descriptions (lowvram.profiles.library)."""
    from lowvram.profiles.library import list_profiles as listed

    return listed()


def _generate(*args, **kwargs):
    from lowvram.sampling.runner import generate

    return generate(*args, **kwargs)


def _load_model(model: str, plan: Plan, loras: tuple = ()):
    from lowvram.models.names import resolve_model
    from lowvram.sampling.runner import load_model

    return load_model(resolve_model(model), plan, loras)


@dataclass(frozen=True)
class Services:
    probe: Callable[[], Any] = default_probe
    plan: Callable[..., PlanView] = plan_job
    preview: Callable[[Job, Plan], SkipPreview] = cache_preview
    generate: Callable[..., Any] = _generate
    load_model: Callable[..., Any] = _load_model
    load_profile: Callable[[str, Job], tuple[Job, Any]] = load_profile
    save_profile: Callable[..., str] = save_profile
    profiles: Callable[[], list] = list_profiles
