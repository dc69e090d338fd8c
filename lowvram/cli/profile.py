"""`lowvram profile save|show|check`: profiles are TOML files of settings, shared between machines."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    from lowvram.cli.options import (
        PLAN_PROMPT,
        add_generation_arguments,
        add_job_arguments,
        add_machine_arguments,
        add_preference_arguments,
        add_profile_argument,
    )

    p = sub.add_parser(
        "profile",
        help="save, show and check profiles (TOML settings files shared between machines)",
        description="Profiles hold a model, job defaults and planner preferences. The plan inside is for "
        "information: lowvram re-plans on every load and never exceeds this machine's VRAM.",
    )
    actions = p.add_subparsers(dest="profile_action", metavar="ACTION", required=True)

    save = actions.add_parser(
        "save",
        help="save the given settings (or the last run's) as a profile",
        description="Save a profile from the job options given here (or from a run's sidecar), with the plan "
        "chosen on this machine (or the what-if machine of --vram/--ram) for information.",
    )
    save.add_argument("file", help="profile .toml to write")
    save.add_argument("--name", default=None, help="short name shown to people (default: from the model and size)")
    save.add_argument("--description", default=None, help="what the profile is for, in a sentence or two")
    save.add_argument("--from-sidecar", default=None, metavar="PATH", help="take the job settings from a run's JSON sidecar (the .json beside the video)")
    save.add_argument("--force", action="store_true", help="replace FILE if it exists")
    add_job_arguments(save)
    add_generation_arguments(save)
    add_profile_argument(save)
    add_preference_arguments(save)
    add_machine_arguments(save)
    save.set_defaults(func=run_save, prompt=PLAN_PROMPT)

    show = actions.add_parser("show", help="print a profile in words", description="Print what a profile holds.")
    show.add_argument("file", help="profile .toml")
    show.add_argument("--json", action="store_true", help="print the profile as JSON")
    show.set_defaults(func=run_show)

    check = actions.add_parser(
        "check",
        help="re-plan a profile on this machine: fits as saved, re-planned (what changed and why), or impossible",
        description="Re-plan a profile for this machine and compare with the plan it was saved with. "
        "Exit code 0 when it fits (as saved or re-planned), 2 when no plan fits.",
    )
    check.add_argument("file", help="profile .toml")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    add_machine_arguments(check)
    check.set_defaults(func=run_check)


def run_save(args) -> int:
    from lowvram.cli.inputs import machine_from_args
    from lowvram.errors import UserError
    from lowvram.job import validate_job
    from lowvram.profiles import PlannerPrefs, save
    from lowvram.profiles.apply import (
        apply_profile,
        job_from_sidecar,
        load_profile_file,
        prefs_with_args,
        profile_from_job,
        to_preferences,
    )
    from lowvram.planning import plan_for_job
    from planner.choose import NoPlanFits

    if args.profile and args.from_sidecar:
        raise UserError("give either --profile or --from-sidecar as the starting point, not both.")
    base = load_profile_file(args.profile)
    if args.from_sidecar:
        ran, _ = job_from_sidecar(args.from_sidecar)
        base = profile_from_job(ran)  # options given on the command line still win over the run's settings
    job, _ = apply_profile(args, base)
    validate_job(job)  # a profile with these values would not load
    prefs = prefs_with_args(base.planner if base else PlannerPrefs(), args)
    probe = machine_from_args(args, base if args.profile else None)
    try:
        plan = plan_for_job(job, probe=probe, prefs=to_preferences(prefs), inputs=False).plan
    except NoPlanFits as exc:
        plan = None
        print(f"note: no plan fits this machine, so the profile is saved without a plan:\n{exc}", file=sys.stderr)
    profile = profile_from_job(
        job,
        prefs,
        name=args.name or (base.name if args.profile else ""),
        description=args.description if args.description is not None else (base.description if args.profile else ""),
        plan=plan,
        probe=probe,
    )
    path = save(profile, args.file, overwrite=args.force)
    print(f"saved {path}" + (f": {plan.summary()}" if plan else ""))
    return 0


def run_show(args) -> int:
    from lowvram.profiles import load
    from lowvram.profiles.report import describe_profile
    from lowvram.profiles.toml_io import to_data

    profile = load(args.file)
    if args.json:
        print(json.dumps(to_data(profile), indent=2))
    else:
        print("\n".join(describe_profile(profile, source=args.file)))
    return 0


def run_check(args) -> int:
    from lowvram.cli.inputs import machine_from_args
    from lowvram.errors import UserError
    from lowvram.profiles import load
    from lowvram.profiles.check import check_profile, describe_check

    profile = load(args.file)
    probe = machine_from_args(args, profile)
    try:
        result = check_profile(profile, probe)
    except UserError as exc:  # e.g. a model this machine cannot find: say which file asked for it
        raise UserError(f"profile {args.file} (model = {profile.model!r}): {exc}") from None
    if args.json:
        print(json.dumps({
            "status": result.status,
            "machine": result.machine.__dict__,
            "plan": result.plan.to_dict() if result.plan else None,
            "changes": list(result.changes),
            "why": list(result.why),
        }, indent=2))
    else:
        stream = sys.stderr if result.exit_code else sys.stdout
        print("\n".join(describe_check(result, profile)), file=stream)
    return result.exit_code
