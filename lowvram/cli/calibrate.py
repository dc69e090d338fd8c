"""`lowvram calibrate`: measure this GPU for the planner's time model and store the result."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure this GPU's copy bandwidth and compute speed for the planner",
        description="Measure host-to-device bandwidth (pinned and pageable), the time of a Wan2.1 transformer "
        "block at 480p, the gain of regional compile, the speed of fp8 / int8 matmuls (torchao, compiled) and the "
        "CPU's matmul speed; store them in the user cache for the planner's time model. Compiling takes a minute or "
        "two the first time. Needs a CUDA GPU (exit code 2 without one).",
    )
    p.add_argument("--quick", action="store_true", help="a shorter measurement (17 frames instead of 81)")
    p.set_defaults(func=run)


def run(args) -> int:
    from lowvram.calibrate import calibrate
    from planner.calibration import save_calibration

    cal = calibrate(quick=args.quick)
    path = save_calibration(cal)
    print(f"GPU: {cal.gpu_name}")
    print(f"transformer block (Wan2.1 1.3B shape) at {cal.tokens:,} tokens: {cal.block_seconds * 1e3:.1f} ms "
          f"({cal.gpu_flops / 1e12:.0f} TFLOP/s achieved)")
    print(f"host-to-device copy: {cal.h2d_pinned / 1e9:.1f} GB/s pinned, {cal.h2d_pageable / 1e9:.1f} GB/s pageable")
    print(f"CPU matmul: {cal.cpu_flops / 1e9:.0f} GFLOP/s")
    print(f"regional compile: a forward x{cal.compile_factor:.2f} of eager (the planner's compile gain here)")
    for level, factor in (("fp8_fast", cal.fp8_linear_factor), ("int8_fast", cal.int8_linear_factor)):
        if factor <= 0:
            print(f"{level}: not measured (this GPU cannot run it)")
        else:
            verdict = "faster than bf16: a planner candidate" if factor < 1 else "not faster than bf16: kept out of plans"
            print(f"{level}: matmuls x{factor:.2f} of bf16, compiled ({verdict})")
    print(f"saved {path}")
    return 0
