"""`lowvram generate PROMPT`: run one job end to end."""

from __future__ import annotations

import argparse


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """Job options shared by generate, plan and tui."""
    p.add_argument("--model", default="tiny-random", help="local diffusers folder, hub id, short name (wan2.1-t2v-1.3b, wan2.1-t2v-14b, wan2.1-i2v-14b-480p, wan2.1-i2v-14b-720p) or the demo model tiny-random / tiny-random-i2v (default: %(default)s)")
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
    from ..errors import UserError
    from ..job import TeaCacheSetting

    threshold = getattr(args, "teacache", None)
    speedup = getattr(args, "teacache_speedup", None)
    if getattr(args, "no_teacache", False):
        if threshold is not None or speedup is not None:
            raise UserError("--no-teacache contradicts --teacache/--teacache-speedup; drop one of them.")
        return TeaCacheSetting(enabled=False)
    retention = getattr(args, "teacache_retention", None)
    return TeaCacheSetting(
        enabled=threshold is not None or speedup is not None,
        threshold=threshold,
        speedup=speedup,
        retention=True if retention is None else retention,
        coefficients=getattr(args, "teacache_coefficients", None),
    )


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate a video from a prompt", description="Generate a video with a Wan2.1 model and write an mp4 plus a JSON sidecar.")
    p.add_argument("prompt", nargs="?", default=None, help="what the video should show (omitted with --resume)")
    add_job_arguments(p)
    p.add_argument("--negative-prompt", default="", help="what to avoid")
    p.add_argument("--image", default=None, help="first frame for image-to-video models")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale; <= 1 turns the second pass off (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--fps", type=int, default=16, help="frames per second of the mp4 (default %(default)s)")
    p.add_argument("--out", default=None, help="output .mp4 path (default: outputs/<prompt>-seed<N>.mp4); never overwritten")
    p.add_argument("--quiet", action="store_true", help="print only the result")
    p.add_argument("--resume", default=None, metavar="FILE", help="finish a cancelled or out-of-memory run from its kept <out>.latents.safetensors (no prompt)")
    p.set_defaults(func=run)


DEMO_DEFAULTS = dict(width=256, height=144, frames=17, steps=8)
REAL_DEFAULTS = dict(width=832, height=480, frames=81, steps=50)


def job_from_args(args) -> "Job":
    from ..job import Job
    from ..models import DEMO_NAMES

    defaults = DEMO_DEFAULTS if args.model in DEMO_NAMES else REAL_DEFAULTS
    pick = lambda name: getattr(args, name) if getattr(args, name, None) is not None else defaults[name]  # noqa: E731
    return Job(
        prompt=args.prompt,
        model=args.model,
        negative_prompt=getattr(args, "negative_prompt", ""),
        image=getattr(args, "image", None),
        width=pick("width"),
        height=pick("height"),
        frames=pick("frames"),
        steps=pick("steps"),
        guidance=getattr(args, "guidance", 5.0),
        seed=getattr(args, "seed", 0),
        fps=getattr(args, "fps", 16),
        out=getattr(args, "out", None),
        teacache=teacache_from_args(args),
    )


def run(args) -> int:
    from ..job import validate_job
    from ..models import resolve_model
    from ..runner import generate
    from .console import ConsoleReporter
    from .interrupt import cancel_on_interrupt

    if getattr(args, "resume", None):
        from .resume import run_resume

        return run_resume(args)
    job = job_from_args(args)
    validate_job(job)  # fail fast, before any model loads
    resolve_model(job.model)
    with cancel_on_interrupt() as cancel:  # Ctrl-C: stop at the next step boundary, keep the latents
        result = generate(job, on_event=ConsoleReporter(quiet=args.quiet), cancel=cancel)
    print(result.video_path)
    return 0
