"""Check a profile on this machine: re-plan it, compare with the plan it was saved with, say what changed.

The saved plan is never applied as it is: the plan that runs is always the planner's plan for this
machine's probe, so a profile from a bigger GPU cannot make lowvram exceed this machine's VRAM.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Literal, Optional

from lowvram.profiles.apply import JOB_FIELDS, apply_profile, fingerprint
from lowvram.profiles.schema import MachineFingerprint, Profile
from planner.choose import (
    NoPlanFits,
    PlanResult,
    config_key,
    fmt_seconds,
    gib,
)
from lowvram.planning import plan_for_job
from planner.plan import Plan, describe_change
from planner.probe import HardwareProbe

Status = Literal["fits", "replanned", "planned", "impossible"]
HEADLINES = {
    "fits": "fits as saved",
    "replanned": "re-planned for this machine",
    "planned": "planned for this machine (the profile carries no saved plan)",
    "impossible": "impossible on this machine",
}


@dataclass(frozen=True)
class CheckResult:
    status: Status
    machine: MachineFingerprint  # this machine (or the what-if one)
    plan: Optional[Plan]  # the plan that would run here; None when impossible
    saved_plan: Optional[Plan]
    changes: tuple[str, ...]  # what changed from the saved plan, one line each
    why: tuple[str, ...]  # why it changed, or what is short
    result: Optional[PlanResult] = None
    what_if: bool = False  # planned for numbers given on the command line, not measured here

    @property
    def exit_code(self) -> int:
        return 2 if self.status == "impossible" else 0

    @property
    def headline(self) -> str:
        text = HEADLINES[self.status]
        return text.replace("this machine", "the what-if machine") if self.what_if else text


def plan_changes(old: Plan, new: Plan) -> list[str]:
    """Each decision that differs between two plans, in words."""
    change = describe_change(old, new)
    return [] if change == "no change" else change.split("; ")


def _numbers(old: Plan, new: Plan) -> list[str]:
    out = []
    if old.predicted and new.predicted:
        out.append(f"predicted peak VRAM: {gib(old.peak_vram_bytes)} -> {gib(new.peak_vram_bytes)}")
        out.append(f"predicted peak RAM: {gib(old.peak_ram_bytes)} -> {gib(new.peak_ram_bytes)}")
    if old.predicted_seconds and new.predicted_seconds:
        out.append(f"predicted time: {fmt_seconds(old.predicted_seconds)} -> {fmt_seconds(new.predicted_seconds)}")
    return out


def _verdict(candidate, new: Plan) -> str:
    if not candidate.fits:
        return f"does not fit here: {candidate.rejected_reason}"
    here = fmt_seconds(candidate.plan.predicted_seconds)
    if candidate.plan.predicted_seconds > new.predicted_seconds:
        pct = 100 * (candidate.plan.predicted_seconds / new.predicted_seconds - 1)
        return f"would fit here too ({here} predicted here), but the new plan is predicted {pct:.0f}% faster"
    return f"would fit here too ({here} predicted here); the new plan is about as fast at higher precision"


def _without_resident_blocks(plan: Plan) -> tuple:
    """A plan's decisions with the denoisers' resident block counts left out."""
    return config_key(replace(plan, components=tuple(replace(c, resident_blocks=0) if c.role == "denoiser" else c
                                                     for c in plan.components)))


def _why(saved: Plan, result: PlanResult, gpus_here: int = 1) -> list[str]:
    """Why the planner did not keep the saved plan here, from its own verdict on the same placement."""
    lines = [line for line in result.explanation if line.startswith("budget:")]
    if saved.gpu_count > max(1, gpus_here):
        from planner.multi_gpu import kind_of

        have = f"{gpus_here} GPU{'s' if gpus_here != 1 else ''}" if gpus_here else "no GPU"
        return [f"the saved plan uses {saved.gpu_count} GPUs ({kind_of(saved)}); this machine has {have}, "
                "so it was planned for what is here"] + lines
    key = config_key(saved)
    same = [c for c in result.candidates if config_key(c.plan) == key]
    if same:
        return [f"the saved plan {_verdict(same[0], result.plan)}"] + lines
    saved_d = saved.denoisers[0] if saved.denoisers else None
    if saved_d is not None and saved_d.placement == "partial":
        # The number of resident blocks is sized to each machine's budget: compare with this machine's size.
        drop = lambda plan: _without_resident_blocks(plan)  # noqa: E731
        here = [c for c in result.candidates if c.plan.denoisers[0].placement == "partial" and drop(c.plan) == drop(saved)]
        kept = saved_d.resident_blocks
        if here:
            k = here[0].plan.denoisers[0].resident_blocks
            return [f"the saved plan keeps {kept} blocks resident; here {k} fit the VRAM budget, and that plan "
                    f"{_verdict(here[0], result.plan)}"] + lines
        if result.plan.denoisers[0].placement == "resident":
            return [f"the saved plan keeps {kept} blocks resident; here the whole transformer fits on the GPU"] + lines
        return [f"the saved plan keeps {kept} blocks resident; here not one block fits beside the streamed ones"] + lines
    if saved.device != result.plan.device:
        where = {"cuda": "GPU", "cpu": "CPU"}
        return [f"the saved plan runs on the {where.get(saved.device, saved.device)}; here the planner plans for the "
                f"{where.get(result.plan.device, result.plan.device)}"] + lines
    return ["the saved plan is not one of this machine's options"] + lines


def check_profile(profile: Profile, probe: HardwareProbe, calibration=None) -> CheckResult:
    """Re-plan `profile` for `probe`. Never raises NoPlanFits: that is the 'impossible' result."""
    args = argparse.Namespace(prompt="(profile check)", model=None, **{name: None for name in JOB_FIELDS})
    job, prefs = apply_profile(args, profile)
    machine, what_if = fingerprint(probe), probe.source != "probe"
    saved = profile.saved_plan
    try:
        result = plan_for_job(job, probe=probe, prefs=prefs, calibration=calibration, inputs=False)
    except NoPlanFits as exc:
        return CheckResult("impossible", machine, None, saved, (), tuple(str(exc).splitlines()), what_if=what_if)
    new = result.plan
    if saved is None:
        return CheckResult("planned", machine, new, None, (), (), result, what_if)
    if config_key(saved) == config_key(new):
        return CheckResult("fits", machine, new, saved, (), (), result, what_if)
    changes = plan_changes(saved, new) + _numbers(saved, new)
    return CheckResult("replanned", machine, new, saved, tuple(changes), tuple(_why(saved, result, probe.gpu_count)), result,
                       what_if)


def describe_check(check: CheckResult, profile: Profile) -> list[str]:
    """The check as a person reads it: verdict, the two machines, what changed and why, the plan here."""
    lines = [f"{check.headline}: {profile.name}"]
    lines.append(f"  {'what-if:' if check.what_if else 'this machine:':<13} {check.machine.describe()}")
    if profile.saved_on is not None:
        lines.append(f"  {'saved on:':<13} {profile.saved_on.describe()}")
    if check.status == "impossible":
        lines.append("what is short:")
        lines += [f"  {line}" for line in check.why]
        return lines
    plan = check.plan
    if check.changes:
        lines.append("what changed:")
        lines += [f"  - {line}" for line in check.changes]
    if check.why:
        lines.append("why:")
        lines += [f"  - {line}" for line in check.why]
    lines.append(f"plan here: {plan.summary()}")
    lines.append(
        f"  predicted peak VRAM {gib(plan.peak_vram_bytes)}, peak RAM {gib(plan.peak_ram_bytes)}, "
        f"time {fmt_seconds(plan.predicted_seconds)}"
    )
    if check.status == "fits" and check.saved_plan is not None and check.saved_plan.predicted_seconds:
        lines.append(f"  (saved with: peak VRAM {gib(check.saved_plan.peak_vram_bytes)}, time {fmt_seconds(check.saved_plan.predicted_seconds)})")
    return lines
