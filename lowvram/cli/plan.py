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
    from lowvram.cli.inputs import job_and_prefs_from_args, machine_from_args
    from planner.choose import plan_for_job

    job, prefs = job_and_prefs_from_args(args)
    probe = machine_from_args(args)
    result = plan_for_job(job, probe=probe, prefs=prefs)  # reads the stored calibration itself
    if args.json:
        print(json.dumps({"plan": result.plan.to_dict(), "probe": probe.to_dict(), "job": job.to_dict(),
                          "explanation": list(result.explanation)}, indent=2, default=str))
        return 0
    for line in result.explanation:
        print(line)
    return 0
