"""MagCache's decisions for a run, from the model's magnitude ratios alone: pure Python, known before sampling.

The algorithm is MagCache4Wan2.1 / MagCache4Wan2.2's (`magcache_forward`): the calls of a run are
counted in call order (cond, uncond, cond, ...) over the whole run, both experts of a Wan2.2 A14B
included; per branch, once past the retention calls, each call multiplies the accumulated ratio by
its magnitude ratio, adds |1 - accumulated ratio| to the accumulated error and counts a step; while
the error stays below the threshold and the count within K, the call reuses the branch's cached
residual, otherwise it computes and the three accumulators reset. Retention: a fraction of the
calls at the start (of each expert for T2V-A14B; the whole high-noise expert and the start of the
low-noise one for I2V-A14B) always compute. The published ratios are interpolated to the job's step
count per branch by nearest index, as the reference does (in float64; diffusers' `nearest_interp`
rounds a float32 grid and picks other indices for some step counts, e.g. 43 steps from 50).

Where diffusers' MagCache hook fits and where not (docs/caching.md): its calibration formula and
state are used for calibration (lowvram.caching.magcache.calibrate); its decisions are not the
reference's (one ratio array for both branches, retention rounded in steps, `<=` threshold).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from lowvram.caching.schedule import CallDecision, SkipSchedule, force_first_calls
from lowvram.caching.search import reachable, search_threshold
from lowvram.caching.setting import MAX_THRESHOLD
from lowvram.errors import UserError


def nearest_interp(values: Sequence[float], length: int) -> list[float]:
    """The reference's nearest-index resampling: index round(k * (n - 1) / (length - 1)), half to even."""
    n = len(values)
    if length == 1:
        return [values[-1]]
    scale = (n - 1) / (length - 1)
    return [values[round(k * scale)] for k in range(length)]


def call_ratios(published: Sequence[float], steps: int, branches: int) -> list[float]:
    """The ratio of every call of a `steps`-step run, in call order. `published` is per call from the second
    step on, cond/uncond interleaved (the reference prepends 1.0 for each branch's first step); with one
    branch (guidance off) the cond ratios are used."""
    padded = [1.0, 1.0] + list(published)
    if len(padded) != steps * 2:
        cond, uncond = nearest_interp(padded[0::2], steps), nearest_interp(padded[1::2], steps)
        padded = [r for pair in zip(cond, uncond) for r in pair]
    return padded if branches == 2 else padded[0::2]


@dataclass(frozen=True)
class Retention:
    """Which calls always compute, as the reference counts them (in calls; `split` = the high-noise
    expert's calls, None for one transformer)."""

    ratio: float
    mode: str = "single"  # "single" (Wan2.1, TI2V-5B), "t2v" or "i2v" (two-expert A14B)

    def retained(self, cnt: int, num: int, split: Optional[int]) -> bool:
        r = self.ratio
        if split is None or self.mode == "single":
            return cnt < int(num * r)
        if self.mode == "i2v":
            return cnt < int(split + (num - split) * r)
        return cnt < int(split * r) or (split <= cnt <= (num - split) * r + split)


def decide_run(
    ratios: Sequence[float],
    branches: Sequence[str],
    threshold: float,
    max_skips: int,
    retention: Retention,
    split_step: Optional[int] = None,
    timesteps: Optional[Sequence[float]] = None,
) -> list[CallDecision]:
    """Every call's decision over the whole run (all experts): the reference loop."""
    nb = len(branches)
    num = len(ratios)
    split = None if split_step is None else split_step * nb
    acc_ratio, acc_err, acc_steps = [1.0] * nb, [0.0] * nb, [0] * nb
    out = []
    for cnt, ratio in enumerate(ratios):
        k, step = cnt % nb, cnt // nb
        t = float(timesteps[step]) if timesteps is not None else float(step)
        if retention.retained(cnt, num, split):
            out.append(CallDecision(step, branches[k], t, True, forced=True, ratio=ratio, accumulated=acc_err[k],
                                    accumulated_ratio=acc_ratio[k], skips=acc_steps[k]))
            continue
        acc_ratio[k] *= ratio
        acc_steps[k] += 1
        acc_err[k] += abs(1 - acc_ratio[k])
        skip = acc_err[k] < threshold and acc_steps[k] <= max_skips
        decision = dict(ratio=ratio, accumulated=acc_err[k], accumulated_ratio=acc_ratio[k], skips=acc_steps[k])
        if not skip:
            acc_err[k], acc_steps[k], acc_ratio[k] = 0.0, 0, 1.0
        out.append(CallDecision(step, branches[k], t, not skip, **decision))
    return out


@dataclass(frozen=True)
class MagCacheParams:
    """The settings of a MagCache run and where its ratios came from."""

    ratios: tuple[float, ...]  # as published/calibrated: per call from the second step on, cond/uncond interleaved
    max_skips: int
    retention_ratio: float
    mode: str  # "single", "t2v" or "i2v"
    source: str  # where the ratios came from
    default_threshold: float
    label: str = ""
    note: str = ""


def build_schedules(
    params: MagCacheParams,
    threshold: Optional[float],
    speedup: Optional[float],
    timesteps: Sequence[float],
    branches: Sequence[str],
    split_step: Optional[int] = None,
    components: Sequence[str] = ("transformer",),
) -> list[SkipSchedule]:
    """One schedule per denoiser component (its steps), from one pass of the reference over the whole run."""
    steps = len(timesteps)
    ratios = call_ratios(params.ratios, steps, len(branches))
    retention = Retention(params.retention_ratio, params.mode)
    split = split_step if len(components) == 2 else None

    def decide(th: float) -> list[CallDecision]:
        return decide_run(ratios, branches, th, params.max_skips, retention, split, timesteps)

    if speedup is not None:
        found = search_threshold(lambda th: sum(c.computed for c in _per_component(decide(th), branches, split)), len(ratios), speedup)
        if found.threshold is None:
            raise UserError(
                f"MagCache cannot reach {speedup:g}x here: even the largest threshold ({MAX_THRESHOLD:g}) computes "
                f"{found.computed} of {len(ratios)} calls (K={params.max_skips} skips in a row at most, the first "
                f"{params.retention_ratio:g} of the steps always computed), so the largest reachable speed-up is "
                f"{reachable(found.best_speedup)}: ask for at most that, or raise --magcache-k / lower --magcache-retention."
            )
        threshold = found.threshold
    elif threshold is None:
        threshold = params.default_threshold
    calls = decide(threshold)
    out = []
    ranges = [(0, steps)] if split is None else [(0, split), (split, steps)]
    for name, (lo, hi) in zip(components, ranges):
        if hi <= lo:
            continue
        mine, changed = force_first_calls([c for c in calls if lo <= c.step < hi], branches)
        note = params.note
        if changed:
            note = (note + "; " if note else "") + (
                f"{changed} call(s) at the start of {name} compute although the reference would skip them: "
                "a skip needs a residual of the same expert")
        out.append(
            SkipSchedule(
                method="magcache",
                component=name,
                branches=tuple(branches),
                first_step=lo,
                timesteps=tuple(float(t) for t in timesteps[lo:hi]),
                calls=tuple(mine),
                threshold=threshold,
                run_steps=steps,
                params=dict(max_skips=params.max_skips, retention_ratio=params.retention_ratio, mode=params.mode,
                            ratios_source=params.source, target_speedup=speedup, split_step=split),
                note=note,
            )
        )
    return out


def _per_component(calls: list[CallDecision], branches, split: Optional[int]) -> list[CallDecision]:
    """The calls as the hooks will run them (the first call of each branch on each expert computes)."""
    if split is None:
        return force_first_calls(calls, branches)[0]
    low = [c for c in calls if c.step < split]
    high = [c for c in calls if c.step >= split]
    return force_first_calls(low, branches)[0] + force_first_calls(high, branches)[0]


def split_step_of(timesteps: Sequence[float], boundary_ratio: Optional[float], num_train_timesteps: int = 1000) -> Optional[int]:
    """Steps the high-noise expert runs: t >= boundary_ratio * num_train_timesteps (the pipeline's rule)."""
    if boundary_ratio is None:
        return None
    return sum(1 for t in timesteps if float(t) >= boundary_ratio * num_train_timesteps)
