"""How far quantized weights move the result: relative L2 error of the denoised latents against float32.

    python -m lowvram.bench.quant_error [--seeds 3 4 5]

Runs on the CPU with the demo model (64x64, 5 frames, 2 steps): transformer at int8/fp8/int4 and the text
encoder at int8, against the same job with float32 weights. Every number printed is measured.
"""

from __future__ import annotations

import argparse
import sys

LEVELS = ("int8", "fp8", "int4")


def denoised_latents(job, plan):
    """Load, encode and denoise as the runner does (no decode); returns (latents, loaded model)."""
    from lowvram import placement
    from lowvram.models.names import resolve_model
    from lowvram.sampling import runner
    from lowvram.telemetry import ignore

    loaded = runner.load_model(resolve_model(job.model), plan)
    try:
        placement.enter_stage(loaded.pipe, plan, "encode", image=job.image is not None)
        cond = runner.encode(loaded, job, plan)
        placement.enter_stage(loaded.pipe, plan, "denoise")
        latents, _ = runner.denoise(loaded, job, plan, cond, ignore, runner.Clock())
    finally:
        placement.leave_all(loaded.pipe)
    return latents, loaded


def main(argv=None) -> int:
    from lowvram.job import Job
    from planner.plan import simple_plan

    p = argparse.ArgumentParser(prog="python -m lowvram.bench.quant_error", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5])
    args = p.parse_args(argv)
    for seed in args.seeds:
        job = Job(prompt="a cat walks in the city", model="tiny-random", width=64, height=64, frames=5, steps=2, seed=seed)
        ref, _ = denoised_latents(job, simple_plan("cpu", "fp32"))
        errors = []
        for level in LEVELS:
            plan = simple_plan("cpu", level, text_encoder_precision="int8")
            q, _ = denoised_latents(job, plan)
            errors.append(f"{level} {float((q - ref).norm() / ref.norm()):.2e}")
        print(f"seed {seed}: " + ", ".join(errors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
