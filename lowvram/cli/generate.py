"""`lowvram generate PROMPT`: run one job end to end."""

from __future__ import annotations

import argparse


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """Job options shared by generate, plan and tui."""
    p.add_argument("--model", default=None, help="local diffusers folder, hub id, short name (wan2.1-t2v-1.3b, wan2.1-t2v-14b, wan2.1-i2v-14b-480p, wan2.1-i2v-14b-720p) or the demo model tiny-random / tiny-random-i2v (default: the profile's model, else tiny-random)")
    p.add_argument("--width", type=int, default=None, help="video width, a multiple of 16 (default 832; 256 for the demo model)")
    p.add_argument("--height", type=int, default=None, help="video height, a multiple of 16 (default 480; 144 for the demo model)")
    p.add_argument("--frames", type=int, default=None, help="number of frames, 4k+1 (default 81; 17 for the demo model)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 50; 8 for the demo model)")
    add_teacache_arguments(p)


def add_teacache_arguments(p: argparse.ArgumentParser) -> None:
    """TeaCache is off unless asked for: it changes the output, so it is a choice, not a default."""
    g = p.add_argument_group("TeaCache (skip transformer steps whose timestep embedding barely changed)")
    g.add_argument("--teacache", type=float, default=None, metavar="THRESHOLD", help="turn TeaCache on with this threshold (0.05 is near-lossless on T2V-1.3B; higher skips more)")
    g.add_argument("--teacache-speedup", type=float, default=None, metavar="X", help="turn TeaCache on and search the threshold that computes at most steps/X steps")
    g.add_argument("--teacache-retention", action=argparse.BooleanOptionalAction, default=None, help="always compute the first 5 steps, with the matching coefficients (default: on); --no-teacache-retention computes the first and last step instead")
    g.add_argument("--teacache-coefficients", default=None, metavar="MODEL", help="use these coefficients instead of the ones detected from the checkpoint: t2v-1.3b, t2v-14b, i2v-14b-480p, i2v-14b-720p")
    g.add_argument("--no-teacache", action="store_true", help="turn TeaCache off (overrides a profile that turns it on)")


def teacache_from_args(args) -> "TeaCacheSetting":
    from ..job import TeaCacheSetting
    from ..profiles.apply import merge_teacache

    return merge_teacache(None, args) or TeaCacheSetting()


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate a video from a prompt", description="Generate a video with a Wan2.1 model and write an mp4 plus a JSON sidecar.")
    p.add_argument("prompt", nargs="?", default=None, help="what the video should show (omitted with --resume)")
    add_job_arguments(p)
    add_profile_argument(p)
    add_generation_arguments(p)
    p.add_argument("--image", default=None, help="first frame for image-to-video models")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--out", default=None, help="output .mp4 path (default: outputs/<prompt>-seed<N>.mp4); never overwritten")
    p.add_argument("--quiet", action="store_true", help="print only the result")
    p.add_argument("--resume", default=None, metavar="FILE", help="finish a cancelled or out-of-memory run from its kept <out>.latents.safetensors (no prompt)")
    from ..profiles.apply import add_preference_arguments
    from .plan_choice import add_force_plan_argument

    add_preference_arguments(p)
    add_force_plan_argument(p)
    p.set_defaults(func=run)


def add_profile_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=None, metavar="FILE", help="profile TOML with job defaults and planner preferences; options given here override it")


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the output that a profile also keeps (defaults None: not given, so a profile may fill them)."""
    p.add_argument("--negative-prompt", default=None, help="what to avoid (default: none)")
    p.add_argument("--guidance", type=float, default=None, help=f"classifier-free guidance scale; <= 1 turns the second pass off (default {DEFAULT_GUIDANCE})")
    p.add_argument("--fps", type=int, default=None, help=f"frames per second of the mp4 (default {DEFAULT_FPS})")


DEFAULT_MODEL, DEFAULT_GUIDANCE, DEFAULT_FPS = "tiny-random", 5.0, 16
DEMO_DEFAULTS = dict(width=256, height=144, frames=17, steps=8)
REAL_DEFAULTS = dict(width=832, height=480, frames=81, steps=50)


def job_from_args(args) -> "Job":
    from ..job import Job
    from ..models import DEMO_NAMES

    model = getattr(args, "model", None) or DEFAULT_MODEL
    defaults = dict(DEMO_DEFAULTS if model in DEMO_NAMES else REAL_DEFAULTS, negative_prompt="", guidance=DEFAULT_GUIDANCE, fps=DEFAULT_FPS)
    pick = lambda name: getattr(args, name) if getattr(args, name, None) is not None else defaults[name]  # noqa: E731
    return Job(
        prompt=args.prompt,
        model=model,
        negative_prompt=pick("negative_prompt"),
        image=getattr(args, "image", None),
        width=pick("width"),
        height=pick("height"),
        frames=pick("frames"),
        steps=pick("steps"),
        guidance=pick("guidance"),
        seed=getattr(args, "seed", 0),
        fps=pick("fps"),
        out=getattr(args, "out", None),
        teacache=teacache_from_args(args),
    )


def job_and_prefs_from_args(args) -> tuple:
    """(Job, planner Preferences) from the options, on top of `--profile FILE` when given; the job is
    validated (UserError naming each bad option) before anything plans or loads."""
    from ..job import validate_job
    from ..profiles.apply import apply_profile, load_profile_file

    job, prefs = apply_profile(args, load_profile_file(getattr(args, "profile", None)))
    validate_job(job)
    return job, prefs


def run(args) -> int:
    from ..models import resolve_model
    from ..runner import generate
    from .console import ConsoleReporter
    from .interrupt import cancel_on_interrupt

    if getattr(args, "resume", None):
        from .resume import run_resume

        return run_resume(args)
    from .plan_choice import choose_plan

    job, prefs = job_and_prefs_from_args(args)  # validated: fail fast, before any model loads
    resolve_model(job.model)
    plan = choose_plan(job, prefs, getattr(args, "force_plan", None), say=(lambda _line: None) if args.quiet else print)
    with cancel_on_interrupt() as cancel:  # Ctrl-C: stop at the next step boundary, keep the latents
        result = generate(job, plan=plan, on_event=ConsoleReporter(quiet=args.quiet), cancel=cancel)
    print(result.video_path)
    return 0
