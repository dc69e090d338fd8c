"""`lowvram generate PROMPT`: run one job end to end."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate a video from a prompt", description="Generate a video with a Wan2.1 model and write an mp4 plus a JSON sidecar.")
    from lowvram.cli.options import (
        add_generation_arguments,
        add_job_arguments,
        add_preference_arguments,
        add_profile_argument,
    )
    from lowvram.cli.plan_choice import add_force_plan_argument

    p.add_argument("prompt", nargs="?", default=None, help="what the video should show (omitted with --resume)")
    add_job_arguments(p)
    add_profile_argument(p)
    add_generation_arguments(p)
    p.add_argument("--image", default=None, help="first frame for image-to-video models")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--out", default=None, help="output .mp4 path (default: outputs/<prompt>-seed<N>.mp4); never overwritten")
    p.add_argument("--quiet", action="store_true", help="print only the result")
    p.add_argument("--resume", default=None, metavar="FILE", help="finish a cancelled or out-of-memory run from its kept <out>.latents.safetensors (no prompt)")
    add_preference_arguments(p)
    add_force_plan_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from lowvram.cli.console import ConsoleReporter
    from lowvram.cli.interrupt import cancel_on_interrupt
    from lowvram.models.names import resolve_model
    from lowvram.sampling.runner import generate

    if getattr(args, "resume", None):
        from lowvram.cli.resume import run_resume

        return run_resume(args)
    from lowvram.cli.inputs import job_and_prefs_from_args
    from lowvram.cli.plan_choice import choose_plan

    job, prefs = job_and_prefs_from_args(args)  # validated: fail fast, before any model loads
    resolve_model(job.model, job.base)
    plan = choose_plan(job, prefs, getattr(args, "force_plan", None), say=(lambda _line: None) if args.quiet else print)
    with cancel_on_interrupt() as cancel:  # Ctrl-C: stop at the next step boundary, keep the latents
        result = generate(job, plan=plan, on_event=ConsoleReporter(quiet=args.quiet), cancel=cancel)
    print(result.video_path)
    return 0
