"""`lowvram profile save|show|check`: profiles are TOML files of settings, shared between machines."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    from ..profiles.apply import add_preference_arguments
    from .generate import add_generation_arguments, add_job_arguments, add_profile_argument
    from .plan import PLAN_PROMPT

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


def add_machine_arguments(p: argparse.ArgumentParser) -> None:
    from ..profiles.apply import gib_amount

    g = p.add_argument_group("what-if machine (instead of this one)")
    g.add_argument("--vram", type=gib_amount, default=None, metavar="GiB", help="plan for a GPU with this much free VRAM (0: no GPU)")
    g.add_argument("--ram", type=gib_amount, default=None, metavar="GiB", help="plan for this much available RAM")
    g.add_argument("--gpu-name", default=None, help="name of the what-if GPU (for the record in the profile)")
    g.add_argument("--compute-capability", default=None, metavar="X.Y", help="compute capability of the what-if GPU (8.9 and up: fast fp8)")
    g.add_argument("--saved-machine", action="store_true", help="plan for the machine the profile was saved on ([saved_on]) instead of this one")


def machine_from_args(args, profile=None):
    """This machine's probe, with the what-if options on top (or the profile's saved machine)."""
    from dataclasses import replace

    from planner.probe import override_probe, probe_hardware, synthetic_probe

    from ..errors import UserError
    from ..profiles.apply import parse_compute_capability

    if getattr(args, "saved_machine", False):
        from ..profiles.apply import load_profile_file, probe_like

        if profile is None:
            profile = load_profile_file(getattr(args, "profile", None))  # `plan --profile FILE --saved-machine`

        if any(v is not None for v in (args.vram, args.ram, args.gpu_name, args.compute_capability)):
            raise UserError("--saved-machine plans for the profile's own machine: drop --vram/--ram/--gpu-name/--compute-capability.")
        if profile is None or profile.saved_on is None:
            raise UserError("--saved-machine needs a profile with a [saved_on] machine (with save, give it as --profile FILE).")
        return probe_like(profile.saved_on)
    cc = None
    if args.compute_capability is not None:
        cc = parse_compute_capability(args.compute_capability, "--compute-capability")
    if args.ram == 0:  # gib_amount has refused negative and non-finite numbers
        raise UserError(f"--ram {args.ram}: give a positive number of GiB")
    if args.vram is not None and args.ram is not None:
        probe = synthetic_probe(args.vram, args.ram, gpu_name=args.gpu_name or "what-if GPU", compute_capability=cc or (8, 6))
    else:
        probe = probe_hardware()
        if args.vram is not None or args.ram is not None:
            probe = override_probe(probe, vram_gib=args.vram, ram_gib=args.ram)
    if probe.has_gpu and (args.gpu_name or cc):
        probe = replace(probe, gpu_name=args.gpu_name or probe.gpu_name, compute_capability=cc or probe.compute_capability, source="synthetic")
    return probe


def run_save(args) -> int:
    from planner.choose import NoPlanFits, plan_for_job

    from ..errors import UserError
    from ..job import validate_job
    from ..profiles import PlannerPrefs, save
    from ..profiles.apply import apply_profile, job_from_sidecar, load_profile_file, prefs_with_args, profile_from_job, to_preferences

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
        plan = plan_for_job(job, probe=probe, prefs=to_preferences(prefs)).plan
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
    from ..profiles import load
    from ..profiles.report import describe_profile
    from ..profiles.toml_io import to_data

    profile = load(args.file)
    if args.json:
        print(json.dumps(to_data(profile), indent=2))
    else:
        print("\n".join(describe_profile(profile, source=args.file)))
    return 0


def run_check(args) -> int:
    from ..profiles import load
    from ..profiles.check import check_profile, describe_check

    from ..errors import UserError

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
