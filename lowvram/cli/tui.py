"""`lowvram tui`: the interactive terminal UI (job -> plan -> run -> done)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("tui", help="interactive terminal UI: set up a job, see the plan, watch the run", description="Open the lowvram terminal UI. Keyboard-first; works in an 80x24 terminal.")
    p.add_argument("--model", default=None, metavar="M", help="model to preselect (default: tiny-random, the demo model)")
    p.add_argument("--profile", default=None, metavar="FILE", help="profile TOML whose settings fill the form (--model overrides its model)")
    p.set_defaults(func=run)


def run(args) -> int:
    from tui.app import create_app

    app = create_app(model=args.model, profile=args.profile)
    app.run()
    return int(app.return_code or 0)
