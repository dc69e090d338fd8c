"""`lowvram download NAME`: a model's diffusers weights into the Hugging Face cache, with the size and free disk
checked first and a progress line; run it again after an interruption to fetch only what is missing."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "download",
        help="download a model's diffusers weights (size and free disk checked first, visible progress)",
        description="Download a model's diffusers pipeline (safetensors weights, configs, tokenizer) into the Hugging Face "
        "cache (HF_HOME / HF_HUB_CACHE), where --model NAME finds it. The size and the free disk are checked before "
        "anything is written. Interrupted? Run it again: finished files are kept.",
    )
    p.add_argument("name", help="short name (see `lowvram models`) or hub id (owner/name)")
    p.add_argument("--without-transformer", action="store_true", help="everything but the transformer weights: what a single-file transformer (--model FILE) needs from its base")
    p.add_argument("--dry-run", action="store_true", help="say what would be downloaded and whether it fits on the disk; download nothing")
    p.set_defaults(func=run)


def run(args) -> int:
    from lowvram.errors import UserError
    from lowvram.models import hub
    from lowvram.models.names import resolve_model

    ref = resolve_model(args.name)
    if ref.is_demo:
        print(f"{args.name}: the demo model is built on this machine on first use; nothing to download.")
        return 0
    if ref.kind != "hub" or ref.files:
        raise UserError(f"{args.name}: is on this machine already (a folder or file); download takes a short name or a hub id.")
    skip = ("transformer", "transformer_2") if args.without_transformer else ()
    plan = hub.plan_download(ref.location, skip)
    hub.check_disk(plan)
    if args.dry_run:
        print(f"would download {plan.describe()}" if plan.files else f"{ref.location}: already downloaded ({hub.gib(plan.total_bytes)})")
        return 0
    folder = hub.download(ref.location, skip, plan=plan)
    print(folder)
    return 0
