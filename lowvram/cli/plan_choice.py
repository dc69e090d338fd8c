"""Which plan `lowvram generate` runs: a forced one (--force-plan FILE), else the planner's for this machine."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from lowvram.errors import UserError
from planner.plan import Plan


def add_force_plan_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force-plan",
        default=None,
        metavar="FILE",
        help="run this plan instead of planning: a JSON of Plan.to_dict() (or the output of `lowvram plan --json`)",
    )


def load_forced_plan(path: str) -> Plan:
    """A Plan from a JSON file; `{"plan": {...}}` (lowvram plan --json) is accepted too."""
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"--force-plan {path}: cannot read it as JSON ({exc}). Give a file written from Plan.to_dict().") from exc
    if isinstance(data, dict) and isinstance(data.get("plan"), dict):
        data = data["plan"]
    try:
        if not isinstance(data, dict):  # dict() of a list would make [] a default plan
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        plan = Plan.from_dict(data)  # each component's precision and placement are checked
        if not plan.denoisers:
            raise ValueError("it names no transformer")
    except (TypeError, ValueError, AttributeError) as exc:
        raise UserError(
            f"--force-plan {path}: not a plan ({exc}). Write one with `lowvram plan --json > plan.json` and edit it."
        ) from exc
    if plan.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--force-plan {path}: the plan runs on cuda but this machine has no CUDA GPU; set \"device\": \"cpu\".")
        have = torch.cuda.device_count()
        if max(plan.gpus, default=0) >= have:
            raise UserError(f"--force-plan {path}: the plan uses {len(plan.gpus)} GPUs (cuda:{max(plan.gpus)}) and this "
                            f"machine has {have}; edit its devices / parallel_gpus.")
    elif plan.device != "cpu":
        raise UserError(f"--force-plan {path}: device {plan.device!r} is not supported; use \"cuda\" or \"cpu\".")
    from lowvram.placement.fast_quant import check_device

    for cp in plan.denoisers:
        if cp.fast:
            try:
                check_device(cp.precision, plan.device)
            except UserError as exc:
                raise UserError(f"--force-plan {path}: {cp.name}: {exc}") from None
    return replace(plan, source="forced")


def lora_lines(job) -> list[str]:
    """The job's LoRAs and what they set (presets, a cache turned off), for the user."""
    lines = [f"LoRA {lora.describe()}" for lora in job.loras]
    return lines + [f"  {note}" for note in job.notes]


def choose_plan(job, prefs=None, forced_path: Optional[str] = None, say: Callable[[str], None] = print,
                probe=None) -> Plan:
    """The plan to run, announced with its predicted peaks per stage (and what would help when it is very slow).
    `probe`: the machine to plan for (default: this one, probed now)."""
    from lowvram.caching.plan import preview_for_job
    from planner.choose import Preferences, stage_table

    for line in lora_lines(job):
        say(line)
    preview = preview_for_job(job)  # the step cache's plan, before anything loads (bad cache input: exit 2)
    for line in preview.lines if job.cache.enabled else ():
        say(line)
    if forced_path:
        plan = load_forced_plan(forced_path)
        say(f"plan (forced, {forced_path}): {plan.summary()}")
        advice: list[str] = []
    else:
        counts = preview.plan.counts() if preview.plan is not None else None
        prefs = prefs if prefs is not None else Preferences()
        if job.cache.enabled:  # context parallelism does not run with a step cache yet
            prefs = replace(prefs, context_parallel=False)
        result, advice = plan_with_advice(job, prefs, probe=probe, cache=counts)
        plan = result.plan
        say(f"plan: {plan.summary()}")
    if plan.predicted:
        say("predicted peaks:")
        for line in stage_table(plan):
            say(line)
    for line in advice:
        say(line)
    return plan


def suggestions_for(outcome, job, probe, prefs, cache=None) -> list[str]:
    """planner.suggest's changes for a very slow plan or a NoPlanFits, as lines (none when the plan is fine)."""
    from lowvram.models.specs import spec_for_model
    from planner.calibration import load_calibration
    from planner.choose import PlanResult
    from planner.suggest import is_slow, suggest, suggestion_lines

    if isinstance(outcome, PlanResult) and not is_slow(outcome):
        return []
    return suggestion_lines(suggest(outcome, job, probe, prefs, spec_for_model(job.model, job.base), spec_for_model, load_calibration(), cache), outcome)


def plan_with_advice(job, prefs, probe=None, cache=None, inputs: bool = True) -> tuple:
    """(plan_for_job on this machine or `probe`, the suggestions when its plan is very slow). A NoPlanFits
    carries the suggestions in its message. `cache`: the calls the job's step cache computes; `inputs`:
    check the job's inputs too (the first frame an i2v model needs; `plan` alone does not)."""
    from lowvram.planning import plan_for_job
    from planner.choose import NoPlanFits
    from planner.probe import probe_hardware

    probe = probe if probe is not None else probe_hardware()
    try:
        result = plan_for_job(job, probe=probe, prefs=prefs, cache=cache, inputs=inputs)
    except NoPlanFits as exc:
        lines = suggestions_for(exc, job, probe, prefs, cache)
        if lines:
            exc.args = ("\n".join([str(exc), *lines]),)
        raise
    return result, suggestions_for(result, job, probe, prefs, cache)

