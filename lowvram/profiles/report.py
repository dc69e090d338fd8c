"""A profile in words, for `lowvram profile show` and the TUI."""

from __future__ import annotations

import textwrap

from lowvram.profiles.schema import JobDefaults, PlannerPrefs, Profile
from planner.choose import gib


def describe_job(job: JobDefaults) -> str:
    parts = []
    if job.width is not None or job.height is not None:
        parts.append(f"{job.width or '(default)'}x{job.height or '(default)'}")
    if job.frames is not None:
        parts.append(f"{job.frames} frames")
    if job.steps is not None:
        parts.append(f"{job.steps} steps")
    if job.guidance is not None:
        parts.append(f"guidance {job.guidance:g}")
    if job.fps is not None:
        parts.append(f"{job.fps} fps")
    cache = job.cache
    if cache is not None:
        extra = " with retention steps" if cache.method == "teacache" and cache.retention else ""
        parts.append(("step skipping off" if not cache.enabled else cache.describe()) + extra)
    if job.negative_prompt:
        neg = job.negative_prompt if len(job.negative_prompt) <= 60 else job.negative_prompt[:57] + "..."
        parts.append(f"negative prompt {neg!r}")
    return ", ".join(parts) or "lowvram's defaults"


def describe_prefs(prefs: PlannerPrefs) -> str:
    parts = []
    if prefs.min_precision is not None:
        parts.append(f"lowest precision {prefs.min_precision}")
    if prefs.prefer is not None:
        parts.append(f"prefer {prefs.prefer}")
    for label, value in (("VRAM reserve", prefs.vram_reserve_gib), ("RAM reserve", prefs.ram_reserve_gib),
                         ("VRAM cap", prefs.vram_cap_gib), ("RAM cap", prefs.ram_cap_gib)):
        if value is not None:
            parts.append(f"{label} {value:g} GiB")
    if prefs.compile is False:
        parts.append("no compile")
    if prefs.max_error is not None:
        parts.append(f"fp8/int8 matmul error at most {prefs.max_error:g}")
    return ", ".join(parts) or "the planner's defaults"


def describe_profile(profile: Profile, source: str = "") -> list[str]:
    lines = [f"profile: {profile.name}" + (f"  ({source}, schema {profile.schema_version})" if source else "")]
    if profile.description:
        for para in profile.description.strip().splitlines():
            lines.extend(textwrap.wrap(para, 96, initial_indent="  ", subsequent_indent="  ") or [""])
    lines.append(f"model: {profile.model}")
    lines.append(f"job defaults: {describe_job(profile.job)}")
    for lora in profile.job.loras or ():
        where = f" @{lora.expert}" if lora.expert and lora.expert != "both" else ""
        lines.append(f"LoRA: {lora.name} x{lora.scale:g}{where} (sha256 {lora.sha256}; found by name in the LoRA folders)")
    lines.append(f"planner: {describe_prefs(profile.planner)}")
    if profile.saved_on is not None:
        lines.append(f"saved on: {profile.saved_on.describe()}")
    plan = profile.saved_plan
    if plan is not None:
        lines.append(f"saved plan: {plan.summary()}")
        if plan.predicted:
            lines.append(
                f"  predicted there: peak VRAM {gib(plan.peak_vram_bytes)}, peak RAM {gib(plan.peak_ram_bytes)}"
                + (f", {plan.predicted_seconds:.0f} s" if plan.predicted_seconds else "")
            )
    lines.append("  (information only: lowvram re-plans on every load; `lowvram profile check FILE` shows the plan on this machine)")
    return lines
