"""A job's cache plan: every denoiser component's skip schedule, built before sampling, and the preview of it.

`cache_plan(setting, facts, job, timesteps, folder)` resolves a CacheSetting for a model into a
CachePlan: the model's identity, the data it uses (TeaCache coefficients, MagCache ratios) and why,
and one SkipSchedule per denoiser component covering that component's steps. Plans are memoized on
their inputs, so the plan `lowvram generate` previews before loading is the very object the run
follows (`plan_for_run` asks with the run's own timesteps: same inputs, same object).

`preview_for_job(job)` is the preview for `plan`, `generate` and the TUI: it never downloads; a model
that is not on disk yet is previewed from its released name where the data allow (MagCache on one
transformer) and otherwise says the schedule is shown when the run starts.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from lowvram.caching.estimate import CallCounts
from lowvram.caching.identity import ModelFacts, ModelIdentity, identify, read_json
from lowvram.caching.schedule import SkipSchedule, branches_for, fixed_schedule
from lowvram.caching.setting import CacheSetting
from lowvram.errors import UserError

_MEMO_SIZE = 8
_memo: "OrderedDict[tuple, CachePlan]" = OrderedDict()


@dataclass(frozen=True)
class CachePlan:
    setting: CacheSetting
    identity: ModelIdentity
    schedules: tuple[SkipSchedule, ...]  # one per denoiser component that runs, in step order
    reason: str  # the data used and why, for the user

    @property
    def method(self) -> str:
        return self.setting.method

    @property
    def calibrate(self) -> bool:
        return self.setting.calibrate

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(s.component for s in self.schedules)

    def component(self, name: str) -> Optional[SkipSchedule]:
        """The schedule of one denoiser component (its steps of the run), or None if it runs no step."""
        return next((s for s in self.schedules if s.component == name), None)

    @property
    def total_steps(self) -> int:
        return sum(s.total_steps for s in self.schedules)

    @property
    def branches(self) -> tuple[str, ...]:
        return self.schedules[0].branches

    @property
    def computed_calls(self) -> int:
        return sum(s.computed_calls for s in self.schedules)

    @property
    def total_calls(self) -> int:
        return sum(s.total_calls for s in self.schedules)

    @property
    def predicted_speedup(self) -> float:
        return self.total_calls / max(1, self.computed_calls)

    @property
    def threshold(self) -> float:
        return self.schedules[0].threshold

    def remaining(self, after_step: int) -> tuple[int, int]:
        """(calls, computed calls) still to come after `after_step` (-1: before the first step)."""
        calls = [c for s in self.schedules for c in s.calls if c.step > after_step]
        return len(calls), sum(c.computed for c in calls)

    def counts(self) -> CallCounts:
        return CallCounts({s.component: s.computed_calls for s in self.schedules}, {s.component: s.total_calls for s in self.schedules})

    def summary(self) -> str:
        """One line: 'MagCache: computes 61 of 100 calls (...), predicted 1.6x (threshold 0.12, ...)'."""
        label = self.setting.label
        if self.calibrate:
            return f"{label} calibration: computes all {self.total_calls} calls and measures {self.identity.label}'s magnitude ratios"
        per = ""
        if len(self.schedules) > 1:
            per = " (" + ", ".join(f"{s.component} {s.computed_calls}/{s.total_calls}" for s in self.schedules) + ")"
        s0 = self.schedules[0]
        if self.method == "teacache":
            how = (f"threshold {self.threshold:.4g}, {'with' if s0.params['retention'] else 'without'} retention steps, "
                   f"{s0.params['coefficients']} coefficients")
        else:
            how = f"threshold {self.threshold:.4g}, K {s0.params['max_skips']}, retention ratio {s0.params['retention_ratio']:g}"
        if self.setting.speedup is not None:
            how += f", searched for {self.setting.speedup:g}x"
        return (f"{label}: computes {self.computed_calls} of {self.total_calls} transformer calls{per} "
                f"({_steps_phrase(self)}), predicted {self.predicted_speedup:.2f}x ({how})")

    def lines(self) -> list[str]:
        """The summary, where the data came from, and any note: what `plan` and `generate` print."""
        out = [self.summary(), f"  {self.reason}"]
        out += [f"  note: {n}" for n in dict.fromkeys(s.note for s in self.schedules) if n]
        return out

    def map_lines(self, width: int = 60) -> list[str]:
        """The skip map as text: per component and branch, '#' a computed call and '.' a skipped one."""
        out = []
        for s in self.schedules:
            last = s.first_step + s.total_steps
            out.append(f"  {s.component}, steps {s.first_step + 1}-{last} (# computes, . skips):")
            for start in range(s.first_step, last, width):
                end = min(last, start + width)
                for b in s.branches:
                    cells = "".join("#" if s.decision(i, b).computed else "." for i in range(start, end))
                    out.append(f"    {b:<7}{cells}" + (f"  (steps {start + 1}-{end})" if s.total_steps > width else ""))
        return out

    def to_dict(self) -> dict[str, Any]:
        return dict(
            setting=vars(self.setting).copy(),
            identity=vars(self.identity).copy(),
            reason=self.reason,
            summary=self.summary(),
            computed_calls=self.computed_calls,
            total_calls=self.total_calls,
            predicted_speedup=self.predicted_speedup,
            schedules=[s.to_dict() for s in self.schedules],
        )


def _steps_phrase(plan: CachePlan) -> str:
    computed = sum(s.computed_steps for s in plan.schedules)
    return f"{computed} of {plan.total_steps} steps in at least one branch"


# ---------------------------------------------------------------------------------------------- building


def cache_plan(
    setting: CacheSetting,
    facts: ModelFacts,
    job,
    timesteps: Sequence[float],
    folder: Optional[Path] = None,
    num_train_timesteps: int = 1000,
) -> Optional[CachePlan]:
    """The plan for a job on a model (None when the job asks for no cache), memoized on its inputs.
    `folder` is the checkpoint (TeaCache reads its time-path weights); `timesteps` the run's."""
    if not setting.enabled:
        return None
    ts = tuple(float(t) for t in (timesteps.tolist() if hasattr(timesteps, "tolist") else timesteps))
    key = _key(setting, facts, job, ts, folder, num_train_timesteps)
    hit = _memo.get(key)
    if hit is not None:
        _memo.move_to_end(key)
        return hit
    plan = _build(setting, facts, job, ts, folder, num_train_timesteps)
    _memo[key] = plan
    while len(_memo) > _MEMO_SIZE:
        _memo.popitem(last=False)
    return plan


def _key(setting, facts: ModelFacts, job, ts, folder, num_train) -> tuple:
    from lowvram.caching.magcache.calibrate import calibration_path

    identity = identify(facts, job.width, job.height)
    calibrated = calibration_path(identity.key) if identity is not None else None
    stamp = calibrated.stat().st_mtime_ns if calibrated is not None and calibrated.is_file() else None
    configs = json.dumps([facts.transformer, facts.transformer_2, facts.boundary_ratio, facts.expand_timesteps], sort_keys=True, default=str)
    return (setting, configs, facts.name, facts.is_demo, job.width, job.height, job.guidance > 1.0, job.image is not None,
            ts, str(folder) if folder is not None else None, num_train, stamp)


def _build(setting: CacheSetting, facts: ModelFacts, job, ts: tuple, folder: Optional[Path], num_train: int) -> CachePlan:
    from lowvram.caching.magcache.schedule import split_step_of

    identity = identify(facts, job.width, job.height)
    if identity is None:
        raise UserError(f"--model {facts.name}: unknown until its configs are on disk; the cache plan is made when the run starts.")
    branches = branches_for(job.guidance)
    split = split_step_of(ts, facts.boundary_ratio, num_train) if identity.two_experts else None
    if identity.two_experts and split is None:
        raise UserError(f"{identity.label} has two experts but no boundary_ratio in its model_index.json; the checkpoint looks damaged.")
    ranges = [(0, len(ts))] if split is None else [(0, split), (split, len(ts))]
    ranges = [(name, lo, hi) for name, (lo, hi) in zip(identity.components, ranges) if hi > lo]
    if setting.calibrate:
        schedules = tuple(
            fixed_schedule([True] * (hi - lo), branches, ts[lo:hi], component=name, first_step=lo, method="calibrate")
            for name, lo, hi in ranges
        )
        return CachePlan(setting, identity, _with_run_steps(schedules, len(ts)), f"{identity.reason}; every call computes")
    if setting.method == "teacache":
        return _teacache(setting, facts, identity, ts, branches, ranges, folder)
    return _magcache(setting, identity, job, ts, branches, split)


def _with_run_steps(schedules, run_steps: int) -> tuple[SkipSchedule, ...]:
    from dataclasses import replace

    return tuple(replace(s, run_steps=run_steps) for s in schedules)


def _teacache(setting, facts: ModelFacts, identity, ts, branches, ranges, folder) -> CachePlan:
    from lowvram.caching.teacache.coefficients import choose_coefficients
    from lowvram.caching.teacache.schedule import TimeEmbedderWeights, build_schedule

    choice = choose_coefficients(identity, setting.coefficients)
    if folder is None:
        raise UserError("TeaCache needs the checkpoint's time-embedding weights: the model must be on disk.")
    schedules = []
    for name, lo, hi in ranges:
        config = facts.transformer if name == "transformer" else facts.transformer_2
        # The checkpoint's own values, upcast to fp32: the signal the coefficients were fitted on, whatever
        # precision or placement the plan gives the loaded transformer.
        weights = TimeEmbedderWeights.from_checkpoint(folder, config.get("freq_dim", 256), setting.retention, name)
        schedules.append(build_schedule(setting, choice, weights, ts[lo:hi], branches, name, lo, len(ts)))
    reason = choice.reason
    if len(ranges) > 1:
        reason += "; each expert runs TeaCache4Wan2.1's loop over its own steps (TeaCache has no two-expert version)"
    return CachePlan(setting, identity, tuple(schedules), reason)


def _magcache(setting, identity, job, ts, branches, split) -> CachePlan:
    from lowvram.caching.magcache.choose import choose_ratios
    from lowvram.caching.magcache.schedule import build_schedules

    params = choose_ratios(identity, setting, image_to_video=job.image is not None, model=job.model)
    schedules = build_schedules(params, setting.threshold, setting.speedup, ts, branches, split, identity.components)
    return CachePlan(setting, identity, tuple(schedules), f"{identity.reason}; ratios: {params.source}")


# ---------------------------------------------------------------------------------------------- the run and the preview


def scheduler_timesteps(scheduler, steps: int):
    """The timesteps a run of `steps` steps will use: a fresh copy of the scheduler (or its config dict), so
    the caller's is untouched."""
    from diffusers import SchedulerMixin

    if isinstance(scheduler, dict):
        import diffusers

        fresh = getattr(diffusers, scheduler["_class_name"]).from_config(scheduler)
    elif isinstance(scheduler, SchedulerMixin):
        fresh = type(scheduler).from_config(scheduler.config)
    else:
        raise TypeError(f"expected a diffusers scheduler or its config dict, got {type(scheduler).__name__}")
    fresh.set_timesteps(steps, device="cpu")
    return fresh.timesteps


def facts_of(ref, folder: Optional[Path]) -> ModelFacts:
    """A model's facts from its folder; the name only for released names and hub ids (a folder's name is a
    path). A demo build is known by its marker file (a copy of it too)."""
    name = "" if ref.kind == "local" else ref.name
    if folder is None:
        return ModelFacts(name=name, is_demo=ref.is_demo)
    is_demo = ref.is_demo or (Path(folder) / "lowvram_demo.json").is_file()
    return ModelFacts.from_folder(folder, name=name, is_demo=is_demo)


def plan_for_run(loaded, job, timesteps) -> Optional[CachePlan]:
    """The plan the runner follows: for the loaded model and the exact timesteps of its sampling loop."""
    if not job.cache.enabled:
        return None
    folder = Path(loaded.info.location)
    num_train = getattr(loaded.pipe.scheduler.config, "num_train_timesteps", 1000)
    return cache_plan(job.cache, facts_of(loaded.ref, folder), job, timesteps, folder, num_train)


@dataclass(frozen=True)
class CachePreview:
    plan: Optional[CachePlan]
    lines: tuple[str, ...]  # what to print before the run

    @property
    def message(self) -> str:
        return self.lines[0] if self.lines else ""


def local_folder(ref) -> Optional[Path]:
    """The checkpoint's folder if it is on this machine; never downloads."""
    if ref.is_demo or ref.kind == "local":
        from lowvram.models.loading import checkpoint_folder

        return checkpoint_folder(ref)  # builds the demo, or the folder itself
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(ref.location, local_files_only=True))
    except Exception:  # not in the local cache (or no huggingface_hub): no folder
        return None
    return folder if (folder / "model_index.json").is_file() else None


def preview_for_job(job) -> CachePreview:
    """The cache plan of a job before anything loads, or why it is not known yet. Bad input (a cache the
    model has no data for, an unreachable target) raises UserError: exit 2 before any model loads."""
    from lowvram.models.names import resolve_model

    setting = job.cache
    if not setting.enabled:
        return CachePreview(None, ("cache: off (every step computed)",))
    ref = resolve_model(job.model)
    folder = local_folder(ref)
    facts = facts_of(ref, folder)
    if folder is not None:
        sconf = read_json(folder / "scheduler" / "scheduler_config.json")
        timesteps = scheduler_timesteps(sconf, job.steps)
        plan = cache_plan(setting, facts, job, timesteps, folder, sconf.get("num_train_timesteps", 1000))
        return CachePreview(plan, tuple(plan.lines()))
    identity = identify(facts, job.width, job.height)
    later = f"{setting.label}: the schedule is shown when the run starts (the model is not downloaded yet)"
    if identity is None:
        return CachePreview(None, (later,))
    if setting.method == "teacache":
        from lowvram.caching.teacache.coefficients import choose_coefficients

        choose_coefficients(identity, setting.coefficients)  # no coefficients for this model: exit 2 now
        return CachePreview(None, (later,))
    if identity.two_experts:  # the expert split needs the scheduler's timesteps
        from lowvram.caching.magcache.choose import choose_ratios

        choose_ratios(identity, setting, job.image is not None, job.model)
        return CachePreview(None, (later,))
    # One transformer: MagCache's decisions need only the step count (timesteps shown as step numbers).
    plan = cache_plan(setting, facts, job, range(job.steps), None)
    return CachePreview(plan, tuple(plan.lines()) + ("  (timesteps shown as step numbers until the model is downloaded)",))
