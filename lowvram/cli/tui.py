"""`lowvram tui`: the interactive terminal UI (job -> plan -> run -> done)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("tui", help="interactive terminal UI: set up a job, see the plan, watch the run", description="Open the lowvram terminal UI. Keyboard-first; works in an 80x24 terminal; F1 shows the keys.")
    p.add_argument("--model", default=None, metavar="M", help="model to preselect (default: tiny-random, the demo model)")
    p.add_argument("--profile", default=None, metavar="FILE", help="profile TOML whose settings fill the form (--model overrides its model)")
    from lowvram.cli.options import add_lora_argument

    add_lora_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import asyncio
    import os
    import sys

    from lowvram.profiles.apply import loras_from_args
    from tui.app import create_app

    app = create_app(model=args.model, profile=args.profile, loras=loras_from_args(args))
    # Our own loop: asyncio.run() would wait at exit for a run's worker thread that an abort could not stop.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app.run(loop=loop)
    code = int(app.return_code or 0)
    if app.abandoned_worker:  # the terminal is restored and the message printed: end now, as asked
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    loop.close()
    return code
