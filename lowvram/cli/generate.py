"""`lowvram generate PROMPT`: run one job end to end (or one job per line of --prompt-file, model loaded once)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate a video from a prompt", description="Generate a video with a Wan2.1 or Wan2.2 model and write an mp4 plus a JSON sidecar.")
    from lowvram.cli.options import (
        add_generation_arguments,
        add_gpus_argument,
        add_job_arguments,
        add_preference_arguments,
        add_profile_argument,
    )
    from lowvram.cli.plan_choice import add_force_plan_argument

    p.add_argument("prompt", nargs="?", default=None, help="what the video should show (omitted with --resume or --prompt-file)")
    p.add_argument("--prompt-file", default=None, metavar="FILE", help="a batch: one prompt per line (blank lines and lines starting with # are skipped), the same settings for each, the model loaded once")
    add_job_arguments(p)
    add_profile_argument(p)
    add_generation_arguments(p)
    p.add_argument("--image", default=None, help="first frame for image-to-video models (the video takes its shape unless --width/--height are given)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a random one, printed and recorded in the sidecar)")
    p.add_argument("--out", default=None, help="output .mp4 path (default: outputs/<prompt>-seed<N>.mp4); never overwritten")
    p.add_argument("--quiet", action="store_true", help="print only the result")
    p.add_argument("--resume", default=None, metavar="FILE", help="finish a cancelled or out-of-memory run from its kept <out>.latents.safetensors (no prompt)")
    add_preference_arguments(p)
    add_gpus_argument(p, what_if=False)
    add_force_plan_argument(p)
    p.set_defaults(func=run)


def read_prompt_file(path: str) -> list[str]:
    """The prompts of a batch file, one a line; refused (exit 2) when unreadable or empty."""
    from pathlib import Path

    from lowvram.errors import UserError

    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--prompt-file {path}: cannot read it ({exc}); give a UTF-8 text file with one prompt per line.") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UserError(f"--prompt-file {path}: no prompts in it; write one prompt per line.")
    return prompts


def jobs_from_args(args) -> tuple[list, object]:
    """(the jobs, the planner preferences): one job, or one per line of --prompt-file, each validated
    before anything loads. Without --seed each job draws its own random seed."""
    import copy

    from lowvram.cli.inputs import job_and_prefs_from_args
    from lowvram.errors import UserError

    if not args.prompt_file:
        job, prefs = job_and_prefs_from_args(args)
        return [job], prefs
    if args.prompt:
        raise UserError("give either a prompt or --prompt-file, not both.")
    if args.out:
        raise UserError("--out names one video; with --prompt-file each video is named after its prompt in outputs/. Drop --out.")
    jobs, prefs = [], None
    for prompt in read_prompt_file(args.prompt_file):
        one = copy.copy(args)
        one.prompt = prompt
        job, prefs = job_and_prefs_from_args(one)
        jobs.append(job)
    return jobs, prefs


def run(args) -> int:
    from lowvram.cli.console import ConsoleReporter
    from lowvram.cli.inputs import job_notes
    from lowvram.cli.interrupt import cancel_on_interrupt
    from lowvram.models.task import check_inputs_before_load
    from lowvram.sampling.runner import generate

    if getattr(args, "resume", None):
        from lowvram.cli.resume import run_resume

        return run_resume(args)
    from lowvram.cli.plan_choice import choose_plan
    from lowvram.errors import UserError

    jobs, prefs = jobs_from_args(args)  # validated: fail fast, before any model loads
    first = jobs[0]
    for job in jobs:  # before planning and loading: bad input, what the model accepts, the output folder
        check_inputs_before_load(job)
    say = (lambda _line: None) if args.quiet else print
    for line in job_notes(args, first):
        if not line.startswith("seed:"):
            say(line)
    from lowvram.cli.inputs import machine_for_generate

    forced = getattr(args, "force_plan", None)
    probe = None if forced else machine_for_generate(args)
    plan = choose_plan(first, prefs, forced, say=say, probe=probe)
    if plan.parallel:  # one process per GPU: this process hands the jobs over (and is replaced)
        from lowvram.parallel.launch import relaunch
        from lowvram.parallel.run_dir import RunSpec

        if first.cache.enabled:
            raise UserError(f"the plan is context parallel on {plan.parallel_gpus} GPUs, which does not run with a step "
                            "cache yet; drop --cache, or run on one GPU with --gpus 1.")
        if args.seed is None:
            for job in jobs:
                say(f"seed: {job.seed} (random; --seed {job.seed} makes this video again)")
        say(f"starting {plan.parallel_gpus} processes ({'one per GPU' if plan.device == 'cuda' else 'on the CPU'}); "
            "the first one reports")
        caps = args.gpus[1] if getattr(args, "gpus", None) else ()
        relaunch(RunSpec(tuple(jobs), plan, prefs, quiet=args.quiet, vram_caps=tuple(caps)))
    loaded = None
    with cancel_on_interrupt() as cancel:  # Ctrl-C: stop at the next step boundary, keep the latents
        for number, job in enumerate(jobs, 1):
            if len(jobs) > 1:
                say(f"job {number}/{len(jobs)}: {job.prompt}")
            if args.seed is None:
                say(f"seed: {job.seed} (random; --seed {job.seed} makes this video again)")
            result = generate(job, plan=plan, on_event=ConsoleReporter(quiet=args.quiet, plan=plan), cancel=cancel, loaded=loaded)
            loaded, plan = result.loaded, result.plan  # the next job reuses the model, placed as it ended
            print(result.video_path)
    return 0
