"""`lowvram plan`: the plan the planner picks for a job on this machine (or a what-if machine), explained."""

from __future__ import annotations

import json


def register(sub) -> None:
    from lowvram.cli.options import (
        PLAN_PROMPT,
        add_job_arguments,
        add_machine_arguments,
        add_preference_arguments,
        add_profile_argument,
    )

    p = sub.add_parser(
        "plan",
        help="show the fastest plan that fits this machine, and why",
        description="Plan a job without running it: the chosen placement with predicted peak VRAM, RAM and time "
        "per stage, the runners-up, and why each other option was rejected. --vram/--ram plan for a what-if "
        "machine. Exit code 2 when no plan fits (the message says what is short).",
    )
    add_job_arguments(p)
    add_profile_argument(p)
    add_preference_arguments(p)
    add_machine_arguments(p)
    p.add_argument("--guidance", type=float, default=None, help="guidance scale; <= 1 runs one transformer pass per step instead of two")
    p.add_argument("--json", action="store_true", help="print the plan, the probe and the explanation as JSON")
    p.set_defaults(func=run, prompt=PLAN_PROMPT)


def run(args) -> int:
    import sys

    from lowvram.caching.plan import preview_for_job
    from lowvram.cli.inputs import job_and_prefs_from_args, job_notes, machine_from_args
    from lowvram.cli.plan_choice import plan_with_advice
    from lowvram.models.task import check_inputs_before_load

    job, prefs = job_and_prefs_from_args(args)
    check_inputs_before_load(job, writes=False, inputs=False)  # the model's configs are sane before the planner reads them
    probe = machine_from_args(args)
    notes = job_notes(args, job)
    preview = preview_for_job(job)  # the step cache's schedule: a model without its data exits 2 here
    cache = preview.plan
    # reads the stored calibration itself; with a cache plan, denoising time counts only the calls it computes
    result, advice = plan_with_advice(job, prefs, probe, cache=cache.counts() if cache is not None else None, inputs=False)
    if args.json:
        print(json.dumps({"plan": result.plan.to_dict(), "probe": probe.to_dict(), "job": job.to_dict(),
                          "explanation": list(result.explanation), "notes": notes, "suggestions": advice,
                          "cache": cache.to_dict() if cache is not None else {"message": preview.message}}, indent=2, default=str))
        return 0
    from lowvram.cli.plan_choice import lora_lines

    for line in notes:
        print(line, file=sys.stderr)
    for line in [*lora_lines(job), *result.explanation, *advice]:
        print(line)
    if job.cache.enabled:
        print()
        for line in preview.lines:
            print(line)
        if cache is not None:
            for line in cache.map_lines():
                print(line)
            print(f"predicted times count only the {cache.computed_calls} of {cache.total_calls} transformer calls {cache.setting.label} computes")
    return 0
