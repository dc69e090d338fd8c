"""What would help when the best plan is very slow, or when nothing fits: re-plan the job with one change
at a time (a smaller reserve, fewer frames, 480p, a smaller model, a step cache, a lower precision floor) and
keep the changes that make it fit or much faster. Pure: the planner's own make_plan on given data."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional, Union

from lowvram.job import Job
from planner.choose import NoPlanFits, PlanResult, Preferences, fmt_seconds, make_plan
from planner.probe import GIB, HardwareProbe
from planner.spec import ModelSpec

# A plan is "very slow" when predicted longer than this, or this many times slower than the fastest plan
# the machine's memory rules out (then memory, not compute, is what costs the time).
SLOW_SECONDS = 3600.0
SLOW_RATIO = 2.0
# A change is worth saying when it saves at least this fraction of the predicted time.
WORTHWHILE = 0.2
# The smallest reserves worth suggesting: the driver's share of VRAM; RAM for the OS itself.
LEAN_VRAM_RESERVE = int(0.5 * GIB)
LEAN_RAM_RESERVE = 1 * GIB
# A step cache's target speed-up to suggest: half the transformer calls computed, a slight change of the video
# (TeaCache for Wan2.1, MagCache for Wan2.2, which has published ratios and no official TeaCache coefficients).
CACHE_SPEEDUP = 2.0
# A smaller model of the same task (short names and hub ids alike).
SMALLER_MODEL = {
    "wan2.1-t2v-14b": "wan2.1-t2v-1.3b",
    "wan-ai/wan2.1-t2v-14b-diffusers": "wan2.1-t2v-1.3b",
    "wan2.1-i2v-14b-720p": "wan2.1-i2v-14b-480p",
    "wan-ai/wan2.1-i2v-14b-720p-diffusers": "wan2.1-i2v-14b-480p",
    "wan2.2-t2v-a14b": "wan2.2-ti2v-5b",  # one dense 5B for both tasks, instead of two 14B experts
    "wan-ai/wan2.2-t2v-a14b-diffusers": "wan2.2-ti2v-5b",
    "wan2.2-i2v-a14b": "wan2.2-ti2v-5b",
    "wan-ai/wan2.2-i2v-a14b-diffusers": "wan2.2-ti2v-5b",
}
P480 = (832, 480)


@dataclass(frozen=True)
class Suggestion:
    """One change and what the planner predicts with it."""

    option: str  # as command-line options: "--frames 49"
    what: str  # in words: "fewer frames: 49 (3.1 s at 16 fps)"
    seconds: Optional[float]  # predicted total with the change (None: not predicted)
    changes: tuple[tuple[str, str], ...] = ()  # (job field or preference, new value) for a form to apply

    def describe(self, current: Optional[float] = None) -> str:
        if self.seconds is None:
            return self.what
        if current:
            return f"{self.what}; predicted {fmt_seconds(self.seconds)} instead of {fmt_seconds(current)}"
        return f"{self.what}; fits, predicted {fmt_seconds(self.seconds)}"


def is_slow(result: PlanResult) -> bool:
    seconds = result.plan.predicted_seconds
    possible = [c.plan.predicted_seconds for c in result.candidates if not c.ruled_out and c.plan.predicted_seconds > 0]
    fastest = min(possible, default=seconds)
    return seconds > SLOW_SECONDS or (fastest > 0 and seconds > SLOW_RATIO * fastest)


def suggest(
    outcome: Union[PlanResult, NoPlanFits],
    job: Job,
    probe: HardwareProbe,
    prefs: Preferences,
    spec: ModelSpec,
    spec_for: Optional[Callable[[str], ModelSpec]] = None,
    calibration=None,
    cache=None,
) -> tuple[Suggestion, ...]:
    """Changes that make the job fit (after NoPlanFits) or run much faster (after a very slow plan).
    `spec_for(model)` gives another model's spec, for the smaller-model suggestion (left out without it);
    `cache`: the calls the job's step cache computes, as make_plan takes them."""
    current = outcome.plan.predicted_seconds if isinstance(outcome, PlanResult) else None
    if isinstance(outcome, PlanResult) and not is_slow(outcome):
        return ()

    def predicted(new_job: Job, new_prefs: Preferences, new_spec: ModelSpec) -> Optional[float]:
        try:
            return make_plan(probe, new_spec, new_job, new_prefs, calibration, suggest_smaller=False, cache=cache).plan.predicted_seconds
        except NoPlanFits:
            return None

    out: list[Suggestion] = []

    def consider(option: str, what: str, seconds: Optional[float], changes: tuple = ()) -> None:
        if seconds is None:
            return
        if current is None or seconds <= current * (1 - WORTHWHILE):
            out.append(Suggestion(option, what, seconds, changes))

    if probe.has_gpu and (prefs.vram_reserve > LEAN_VRAM_RESERVE or prefs.ram_reserve > LEAN_RAM_RESERVE):
        lean = replace(prefs, vram_reserve=min(prefs.vram_reserve, LEAN_VRAM_RESERVE), ram_reserve=min(prefs.ram_reserve, LEAN_RAM_RESERVE))
        v, r = lean.vram_reserve / GIB, lean.ram_reserve / GIB
        consider(f"--vram-reserve {v:g} --ram-reserve {r:g}", f"a smaller reserve ({v:g} GiB of VRAM, {r:g} GiB of RAM left free)",
                 predicted(job, lean, spec), (("vram_reserve", f"{v:g}"), ("ram_reserve", f"{r:g}")))
    if prefs.min_quant != "int4" and current is None:
        low = replace(prefs, min_quant="int4")
        consider("--min-precision int4", "allow a lower precision (int4; the video changes slightly)", predicted(job, low, spec), (("min_precision", "int4"),))
    for frames in (49, 33):
        if job.frames > frames:
            seconds = frames / job.fps
            consider(f"--frames {frames}", f"{frames} frames ({seconds:.1f} s at {job.fps} fps)",
                     predicted(job.with_(frames=frames), prefs, spec), (("frames", str(frames)),))
            break
    if job.width * job.height > P480[0] * P480[1]:
        w, h = P480 if job.width >= job.height else P480[::-1]
        consider(f"--width {w} --height {h}", f"480p ({w}x{h})", predicted(job.with_(width=w, height=h), prefs, spec),
                 (("width", str(w)), ("height", str(h))))
    smaller = SMALLER_MODEL.get(job.model.lower())
    if smaller and spec_for is not None:
        consider(f"--model {smaller}", f"the smaller model {smaller}", predicted(job.with_(model=smaller), prefs, spec_for(smaller)),
                 (("model", smaller),))
    if not job.cache.enabled and current is not None:
        # A target speed-up is what the threshold search guarantees: at most 1/speed-up of the calls computed.
        denoise = sum(s.seconds for s in outcome.plan.predicted if s.stage == "denoise")
        seconds = current - denoise * (1 - 1 / CACHE_SPEEDUP)
        method, label = ("magcache", "MagCache") if spec.family.startswith("wan2.2") else ("teacache", "TeaCache")
        consider(f"--cache {method} --cache-speedup {CACHE_SPEEDUP:g}", f"{label} at a {CACHE_SPEEDUP:g}x target speed-up (the video changes slightly)",
                 seconds, (("cache", method), ("cache_speedup", f"{CACHE_SPEEDUP:g}")))
    return tuple(sorted(out, key=lambda s: s.seconds if s.seconds is not None else float("inf")))


def suggestion_lines(suggestions: tuple[Suggestion, ...], outcome: Union[PlanResult, NoPlanFits]) -> list[str]:
    """Lines for `plan` and `generate`: a header, then each change with its options."""
    if not suggestions:
        return []
    if isinstance(outcome, PlanResult):
        current = outcome.plan.predicted_seconds
        head = f"suggestions (this plan is predicted to take {fmt_seconds(current)}):"
    else:
        current, head = None, "what would make it fit:"
    return [head] + [f"  {s.option}: {s.describe(current)}" for s in suggestions]

