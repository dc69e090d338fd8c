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


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate a video from a prompt", description="Generate a video with a Wan2.1 model and write an mp4 plus a JSON sidecar.")
    p.add_argument("prompt", help="what the video should show")
    add_job_arguments(p)
    p.add_argument("--negative-prompt", default="", help="what to avoid")
    p.add_argument("--image", default=None, help="first frame for image-to-video models")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale; <= 1 turns the second pass off (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--fps", type=int, default=16, help="frames per second of the mp4 (default %(default)s)")
    p.add_argument("--out", default=None, help="output .mp4 path (default: outputs/<prompt>-seed<N>.mp4); never overwritten")
    p.add_argument("--quiet", action="store_true", help="print only the result")
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
    )


def run(args) -> int:
    from ..job import validate_job
    from ..models import resolve_model
    from ..runner import generate
    from .console import ConsoleReporter

    job = job_from_args(args)
    validate_job(job)  # fail fast, before any model loads
    resolve_model(job.model)
    result = generate(job, on_event=ConsoleReporter(quiet=args.quiet))
    print(result.video_path)
    return 0
