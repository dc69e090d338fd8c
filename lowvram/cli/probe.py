"""`lowvram probe`: what the planner sees of this machine."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser(
        "probe",
        help="show this machine's GPU, free VRAM, RAM and disk as the planner sees them",
        description="Probe this machine: GPU name and compute capability, free and total VRAM (live), RAM, swap, "
        "free disk in the cache folder, and the stored calibration if any.",
    )
    p.add_argument("--json", action="store_true", help="print the probe as JSON (sizes in bytes)")
    p.set_defaults(func=run)


def run(args) -> int:
    from planner.calibration import calibration_path, load_calibration
    from planner.probe import describe_probe, probe_hardware

    probe = probe_hardware()
    calibration = load_calibration()
    if args.json:
        data = probe.to_dict()
        data["calibration"] = calibration.to_dict() if calibration is not None else None
        print(json.dumps(data, indent=2))
        return 0
    for line in describe_probe(probe):
        print(line)
    if calibration is not None and calibration.matches(probe):
        print(f"calibration: {calibration.created}, {calibration.gpu_flops / 1e12:.0f} TFLOP/s achieved, "
              f"H2D {calibration.h2d_pinned / 1e9:.1f} GB/s pinned, {calibration.h2d_pageable / 1e9:.1f} GB/s pageable")
    elif probe.has_gpu:
        print(f"calibration: none for this GPU (run `lowvram calibrate`; it is stored in {calibration_path()})")
    return 0
