"""`lowvram profile save|show|check`: profiles are TOML files of settings, shared between machines."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser(
        "profile",
        help="save, show and check profiles (TOML settings files shared between machines)",
        description="Profiles hold a model, job defaults and planner preferences. The plan inside is for "
        "information: lowvram re-plans on every load and never exceeds this machine's VRAM.",
    )
    actions = p.add_subparsers(dest="profile_action", metavar="ACTION", required=True)

    show = actions.add_parser("show", help="print a profile in words", description="Print what a profile holds.")
    show.add_argument("file", help="profile .toml")
    show.add_argument("--json", action="store_true", help="print the profile as JSON")
    show.set_defaults(func=run_show)


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
