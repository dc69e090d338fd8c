"""What a job asks that its model cannot do, found before anything loads: pure, from the job and the model's spec.

The generic checks (a prompt, sizes, frames of the form 4k+1, bounds) are lowvram.job.validate_job's; these are
the model's own: its spatial multiple (16, or 32 for Wan2.2 TI2V-5B), whether it takes an image, two experts.
"""

from __future__ import annotations

from lowvram.job import Job, task_problem
from planner.spec import ModelSpec

def job_problems(job: Job, spec: ModelSpec, inputs: bool = True) -> list[str]:
    """Each thing to change, in the options' words; empty when the job fits the model. `inputs=False` when only
    planning: an image-to-video model's missing first frame does not change the plan."""
    problems = []
    m = spec.spatial_multiple
    for name, value in (("width", job.width), ("height", job.height)):
        if value % m:
            lower = max(m, value // m * m)
            problems.append(
                f"--{name} {value} must be a multiple of {m} for {spec.name} (its VAE compresses "
                f"{spec.vae_dims.scale_spatial}x and its transformer patches {spec.patch_size[1]}x{spec.patch_size[2]}): "
                f"use {lower} or {lower + m}"
            )
    t = spec.frame_multiple
    if job.frames < 1 or (job.frames - 1) % t:
        k = max(0, (job.frames - 1) // t)
        problems.append(f"--frames {job.frames} must be of the form {t}k+1 for {spec.name} (e.g. {t * k + 1} or {t * k + t + 1})")
    task = task_problem(job, spec.task, spec.name, inputs)  # one wording: lowvram checks it before planning too
    if task:
        problems.append(task)
    if job.guidance_2 is not None and not spec.two_experts and job.guidance_2 != job.guidance:
        problems.append(
            f"--guidance-2 sets the low-noise expert's guidance of a two-expert Wan2.2 A14B model; {spec.name} has one "
            "transformer: drop --guidance-2 (or use --guidance)"
        )
    return problems
