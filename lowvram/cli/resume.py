"""`lowvram generate --resume FILE`: finish a run that was cancelled or ran out of memory.

The file (<out>.latents.safetensors) holds the job, the plan in use, the step reached, the sampler
state and the prompt embeddings; it is validated in full before the model loads. The run continues
without encoding again; the video goes to --out if given, else to the job's own output path.
"""

from __future__ import annotations

# Options whose default is None, so giving them is detectable: the saved job fixes all of them.
FIXED_BY_FILE = ("model", "base", "prompt_file", "negative_prompt", "seed", "guidance", "guidance_2", "shift", "fps", "lora",
                 "width", "height", "frames", "steps", "image", "profile", "cache", "cache_threshold", "cache_speedup",
                 "cache_calibrate", "teacache", "teacache_speedup", "teacache_retention", "teacache_coefficients",
                 "magcache_k", "magcache_retention")


def run_resume(args) -> int:
    from lowvram.cli.console import ConsoleReporter
    from lowvram.cli.interrupt import cancel_on_interrupt
    from lowvram.errors import UserError
    from lowvram.models.names import resolve_model
    from lowvram.profiles.apply import PREF_FLAGS
    from lowvram.sampling.resume import load_resume_file
    from lowvram.sampling.runner import generate

    if getattr(args, "prompt", None):
        raise UserError("--resume continues the saved job with its own prompt; drop the prompt (or drop --resume to start anew).")
    fixed = [f"--{n.replace('_', '-')}" for n in FIXED_BY_FILE if getattr(args, n, None) is not None]
    if fixed:
        raise UserError(f"--resume continues the saved job as it was; {', '.join(fixed)} cannot change it. Drop {'them' if len(fixed) > 1 else 'it'} (only --out, --quiet, --gpus, the planner preferences and --force-plan apply).")
    state = load_resume_file(args.resume, out=getattr(args, "out", None))
    job = state.job
    resolve_model(job.model, job.base)
    plan = state.plan
    preferences = [flag for flag in PREF_FLAGS if getattr(args, flag, None) is not None]
    forced = getattr(args, "force_plan", None)
    # re-plan for the GPUs allowed (e.g. --gpus 1 after a multi-GPU run), the preferences given (a --vram-cap
    # after an out-of-memory exit), or a forced plan; otherwise the plan the run was using
    if getattr(args, "gpus", None) is not None or preferences or forced:
        from lowvram.cli.inputs import machine_for_generate
        from lowvram.cli.plan_choice import choose_plan
        from lowvram.profiles.apply import prefs_with_args, to_preferences
        from lowvram.profiles.schema import PlannerPrefs

        prefs = to_preferences(prefs_with_args(PlannerPrefs(), args)) if preferences else None
        plan = choose_plan(job, prefs, forced, say=(lambda _line: None) if getattr(args, "quiet", False) else print,
                           probe=machine_for_generate(args))
    elif plan.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--resume {args.resume}: the run used a GPU plan ({plan.summary()}) and this machine has no CUDA GPU; resume it where it started.")
    if plan.parallel:  # its processes, as the run had them
        from lowvram.parallel.launch import relaunch
        from lowvram.parallel.run_dir import RunSpec

        relaunch(RunSpec((job,), plan, quiet=getattr(args, "quiet", False), resume=str(args.resume)))
    reporter = ConsoleReporter(quiet=getattr(args, "quiet", False), plan=plan)
    with cancel_on_interrupt() as cancel:
        result = generate(job, plan, on_event=reporter, cancel=cancel, resume=state)
    print(result.video_path)
    return 0
