"""`lowvram models`: every known model, its size, where its files are, what is missing, whether it fits."""

from __future__ import annotations

import json

# TI2V-5B makes a video from text, and from a first frame when one is given
TASK_WORDS = {"t2v": "text-to-video", "i2v": "image-to-video", "ti2v": "text-to-video, or image-to-video with --image"}


def register(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list the known models: size, where they are on this machine, what is missing, whether they fit",
        description="List every model lowvram knows with its size, where its files are (the Hugging Face cache, lowvram's "
        "cache, and model folders you name: LOWVRAM_MODEL_DIRS or --dir, e.g. a ComfyUI models/ folder, whose "
        "single-file Wan transformers are recognised), what is missing and whether a plan fits this machine. "
        "Nothing is downloaded.",
    )
    p.add_argument("--dir", action="append", default=[], metavar="DIR", help="a folder to search for models (repeatable; adds to LOWVRAM_MODEL_DIRS)")
    p.add_argument("--json", action="store_true", help="print as JSON (sizes in bytes)")
    from lowvram.cli.options import add_machine_arguments

    add_machine_arguments(p)
    p.set_defaults(func=run, saved_machine=False)


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB"


def run(args) -> int:
    from lowvram.cli.inputs import machine_from_args
    from lowvram.models.catalog import build_catalog

    catalog = build_catalog(args.dir, probe=machine_from_args(args))
    if args.json:
        print(json.dumps(catalog.to_dict(), indent=2))
        return 0
    print(f"machine: {catalog.machine}")
    print(f"looking in: the Hugging Face cache {catalog.hf_cache}, lowvram's cache {catalog.lowvram_cache}"
          + (f", {', '.join(catalog.dirs)}" if catalog.dirs else " (name more with LOWVRAM_MODEL_DIRS or --dir)"))
    for m in catalog.models:
        size = f", {m.transformer_params / 1e9:.1f} B transformer params, {_gib(m.weights_bytes)} of weights in bf16" if m.weights_bytes else ""
        print()
        print(f"{m.name}" + (f"  ({m.hub_id})" if m.hub_id else "") + f"  {TASK_WORDS.get(m.task, 'text-to-video')}{size}")
        if not m.locations:
            print("  here:    nothing yet")
        for i, loc in enumerate(m.locations):
            extra = f"; missing {', '.join(loc.missing)}" if loc.missing else ""
            print(f"  {'here:   ' if i == 0 else '        '} {loc.what} at {loc.path} ({_gib(loc.bytes)}{extra})")
        print(f"  status:  {'ready' if not m.missing else 'missing ' + '; '.join(m.missing)}")
        print(f"  plan:    {'fits: ' if m.fits else 'does not fit: '}{m.plan}")
    unmatched = [f for f in catalog.files if f.model is None]
    if unmatched:
        print()
        print("transformer files of no known model (run them with --model FILE --base PIPELINE):")
        for f in unmatched:
            print(f"  {f.path} ({f.label}, {_gib(f.bytes)}): {f.shape}")
    if catalog.other_files:
        print(f"\n({catalog.other_files} other weight files in the model folders: LoRAs, VAEs, text encoders... not listed)")
    return 0
