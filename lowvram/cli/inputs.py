"""What a command works on, from its options: the job and planner preferences (over a --profile), and the
machine it plans for: this one (probed), a what-if one (--vram/--ram/...), or a profile's saved one."""

from __future__ import annotations


def job_and_prefs_from_args(args) -> tuple:
    """(Job, planner Preferences) from the options, on top of `--profile FILE` when given; the job is
    validated (UserError naming each bad option) before anything plans or loads."""
    from lowvram.job import validate_job
    from lowvram.profiles.apply import apply_profile, load_profile_file

    job, prefs = apply_profile(args, load_profile_file(getattr(args, "profile", None)))
    validate_job(job)
    return job, prefs


def machine_from_args(args, profile=None):
    """This machine's probe, with the what-if options on top (or the profile's saved machine)."""
    from dataclasses import replace

    from lowvram.errors import UserError
    from lowvram.profiles.apply import parse_compute_capability
    from planner.probe import override_probe, probe_hardware, synthetic_probe

    if getattr(args, "saved_machine", False):
        from lowvram.profiles.apply import load_profile_file, probe_like

        if profile is None:
            profile = load_profile_file(getattr(args, "profile", None))  # `plan --profile FILE --saved-machine`

        if any(v is not None for v in (args.vram, args.ram, args.gpu_name, args.compute_capability)):
            raise UserError("--saved-machine plans for the profile's own machine: drop --vram/--ram/--gpu-name/--compute-capability.")
        if profile is None or profile.saved_on is None:
            raise UserError("--saved-machine needs a profile with a [saved_on] machine (with save, give it as --profile FILE).")
        return probe_like(profile.saved_on)
    cc = None
    if args.compute_capability is not None:
        cc = parse_compute_capability(args.compute_capability, "--compute-capability")
    if args.ram == 0:  # gib_amount has refused negative and non-finite numbers
        raise UserError(f"--ram {args.ram}: give a positive number of GiB")
    if args.vram is not None and args.ram is not None:
        probe = synthetic_probe(args.vram, args.ram, gpu_name=args.gpu_name or "what-if GPU", compute_capability=cc or (8, 6))
    else:
        probe = probe_hardware()
        if args.vram is not None or args.ram is not None:
            probe = override_probe(probe, vram_gib=args.vram, ram_gib=args.ram)
    if probe.has_gpu and (args.gpu_name or cc):
        probe = replace(probe, gpu_name=args.gpu_name or probe.gpu_name, compute_capability=cc or probe.compute_capability, source="synthetic")
    return probe
