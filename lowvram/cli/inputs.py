"""What a command works on, from its options: the job and planner preferences (over a --profile), and the
machine it plans for: this one (probed), a what-if one (--vram/--ram/--gpus/...), or a profile's saved one."""

from __future__ import annotations

from planner.probe import GIB


def job_and_prefs_from_args(args) -> tuple:
    """(Job, planner Preferences) from the options, on top of `--profile FILE` when given; the job is
    validated (UserError naming each bad option) before anything plans or loads."""
    from lowvram.job import validate_job
    from lowvram.models.defaults import random_seed
    from lowvram.profiles.apply import apply_profile, load_profile_file

    job, prefs = apply_profile(args, load_profile_file(getattr(args, "profile", None)))
    if job.seed is None:  # `generate` without --seed
        job = job.with_(seed=random_seed())
    job = follow_image(job, args)
    validate_job(job)
    return job, prefs


def _size_given(args) -> bool:
    return getattr(args, "width", None) is not None or getattr(args, "height", None) is not None


def follow_image(job, args):
    """An image-to-video job without --width/--height takes the image's shape, at the default size's area."""
    from lowvram.models.advice import image_size, size_for_image, size_multiple

    size = image_size(job.image) if job.image and not _size_given(args) else None
    if size is None:
        return job
    width, height = size_for_image(*size, job.width * job.height, size_multiple(job.model, job.base))
    return job.with_(width=width, height=height)


def job_notes(args, job) -> list[str]:
    """What the user should know before the run: a random seed, a size taken from the image, and where the
    job leaves the model's trained range (warnings, never refusals)."""
    from lowvram.models.advice import image_size, job_warnings

    notes = []
    if hasattr(args, "seed") and args.seed is None:
        notes.append(f"seed: {job.seed} (random; --seed {job.seed} makes this video again)")
    if job.image and not _size_given(args) and image_size(job.image):
        iw, ih = image_size(job.image)
        notes.append(f"video size: {job.width}x{job.height}, the shape of the image ({iw}x{ih}); --width/--height choose another")
    return notes + [f"warning: {w}" for w in job_warnings(job)]


def machine_from_args(args, profile=None, say=None):
    """This machine's probe, with the what-if options on top (or the profile's saved machine). A what-if GPU
    given without --gpu-name is taken for the card its VRAM suggests, and `say` (stderr) tells which; each GPU of
    --gpus is its own card (whatif_gpus)."""
    from dataclasses import replace

    from lowvram.errors import UserError
    from lowvram.profiles.apply import parse_compute_capability
    from planner.probe import override_probe, probe_hardware, synthetic_probe, with_gpus

    gpus = getattr(args, "gpus", None)
    if gpus is not None:
        if getattr(args, "saved_machine", False):
            raise UserError("--saved-machine plans for the profile's own machine: drop --gpus.")
        count, sizes = gpus
        if sizes and args.vram is not None:
            raise UserError(f"--gpus {','.join(f'{g:g}' for g in sizes)} gives every GPU's VRAM: drop --vram.")
        if args.vram == 0:
            raise UserError("--vram 0 plans for no GPU: drop --gpus (or give --vram the size of each GPU).")
        from lowvram.cli.whatif_gpus import each_gpu, other_cards

        names = each_gpu(args.gpu_name, count, "--gpu-name")
        ccs = each_gpu(args.compute_capability, count, "--compute-capability")
        # the first GPU's size is planned as a --vram what-if; messages name the option the user gave
        given_as = f"--gpus (a {sizes[0]:g} GB GPU)" if sizes else None
        first = _without_gpus(args, sizes[0] if sizes else args.vram, given_as, names[0], ccs[0])
        probe = machine_from_args(first, profile, say)
        if not probe.has_gpu:
            raise UserError("--gpus: this machine has no GPU; give the GPUs' sizes (--gpus 2x24) to plan for some.")
        if not sizes and args.vram is None and probe.gpu_count >= count and len(set(names)) == len(set(ccs)) == 1:
            return _what_if(probe.first_gpus(count)) if probe.gpu_count > count else probe
        sizes = sizes or (probe.vram_total / GIB,) * count
        return with_gpus(probe, sizes, other_cards(probe, sizes, names, ccs, say or _stderr))

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
    elif args.gpu_name:  # a card the table knows brings its own (an RTX 4090 has fast fp8; 8.6 assumed before)
        from planner.timing import known_compute_capability

        cc = known_compute_capability(args.gpu_name)
    if args.ram == 0:  # gib_amount has refused negative and non-finite numbers
        raise UserError(f"--ram {args.ram}: give a positive number of GiB")
    if args.vram is not None and args.ram is not None:
        probe = synthetic_probe(args.vram, args.ram, gpu_name=args.gpu_name or "what-if GPU", compute_capability=cc or (8, 6))
        unnamed = args.gpu_name is None
    else:
        probe = probe_hardware()
        unnamed = args.gpu_name is None and args.vram is not None and not probe.has_gpu
        if args.vram is not None or args.ram is not None:
            probe = override_probe(probe, vram_gib=args.vram, ram_gib=args.ram)
    if probe.has_gpu and unnamed:  # which card: its speed decides the time model
        probe = _assume_gpu(probe, args.vram, cc, say or _stderr, getattr(args, "vram_given_as", None))
    elif probe.has_gpu and (args.gpu_name or cc):
        probe = replace(probe, gpu_name=args.gpu_name or probe.gpu_name, compute_capability=cc or probe.compute_capability, source="synthetic")
    return probe


def _without_gpus(args, vram, given_as, gpu_name, compute_capability):
    """The options of --gpus's first GPU alone, as a --vram what-if."""
    import copy

    plain = copy.copy(args)
    plain.gpus, plain.vram, plain.vram_given_as = None, vram, given_as
    plain.gpu_name, plain.compute_capability = gpu_name, compute_capability
    return plain


def _what_if(probe):
    from dataclasses import replace

    return replace(probe, source="synthetic")


def machine_for_generate(args):
    """This machine's probe, or only the GPUs `generate --gpus` allows (a count, or at most so much VRAM each):
    a real run never plans for more than the machine has."""
    from lowvram.errors import UserError
    from planner.probe import capped_gpus, probe_hardware

    probe = probe_hardware()
    gpus = getattr(args, "gpus", None)
    if gpus is None:
        return probe
    count, sizes = gpus
    if not probe.has_gpu:
        raise UserError(f"--gpus asks for {count} GPU{'s' if count > 1 else ''}; this machine has no GPU (plans run on "
                        "the CPU): drop --gpus, or plan for another machine with `lowvram plan --gpus`.")
    if count > probe.gpu_count:
        have = f"{probe.gpu_count} GPU{'s' if probe.gpu_count != 1 else ''}" if probe.has_gpu else "no GPU"
        raise UserError(f"--gpus asks for {count} GPU{'s' if count > 1 else ''}; this machine has {have}. "
                        "Give fewer (--gpus 1), or plan for another machine with `lowvram plan --gpus`.")
    probe = probe.first_gpus(count)
    return capped_gpus(probe, sizes) if sizes else probe


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr)


def _assume_gpu(probe, vram_gib: float, cc, say, given_as=None):
    """A what-if GPU given only by its VRAM: the card it most likely is, said out loud (or a question).
    `given_as`: how the user gave that VRAM, when not as --vram (--gpus 2x24)."""
    from dataclasses import replace

    from lowvram.cli.whatif_gpus import assumed_card

    card = assumed_card(vram_gib, cc, say, given_as or f"--vram {vram_gib:g}")
    if card is None:
        return probe
    return replace(probe, gpu_name=card[0], compute_capability=card[1], source="synthetic")
