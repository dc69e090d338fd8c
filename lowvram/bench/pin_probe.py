"""How much RAM and time streaming hooks cost when they page-lock a memory-mapped transformer (GPU only).

    python -m lowvram.bench.pin_probe [--model 1.3b] [--folder /tmp/pin-probe]

Builds a random-weight transformer in the real shape, saves it, loads it memory-mapped as lowvram does, then
attaches block-level group offload with streams (what a streamed expert gets at its phase start), detaches it
(what an idle expert in its file gets at the phase end) and attaches it again. Prints the process's unreclaimable
RAM (RSS minus mapped file pages), torch's pinned host allocator counters and the seconds of each step, against
the bytes the hooks stream: the planner's PINNED_RAM_PER_WEIGHT_BYTE and PIN_BPS come from these.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

GIB = 1024**3


def _host_stats() -> dict:
    import torch

    try:
        s = torch.cuda.host_memory_stats()
    except Exception:  # older torch: no host allocator counters
        return {}
    return {k: s[k] for k in ("allocated_bytes.current", "reserved_bytes.current") if k in s}


def main(argv=None) -> int:
    import torch
    from diffusers import WanTransformer3DModel

    from lowvram.bench.build import build_transformer
    from lowvram.bench.shapes import TRANSFORMERS
    from lowvram.placement import offload
    from lowvram.placement.apply import _OFFLOAD_HOOKS, _host_tensors, _restore_host
    from lowvram.telemetry.memory import process_ram
    from planner.plan import ComponentPlan

    p = argparse.ArgumentParser(prog="python -m lowvram.bench.pin_probe", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="1.3b", choices=sorted(TRANSFORMERS))
    p.add_argument("--folder", type=Path, default=Path("/tmp/pin-probe"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    def heap() -> int:
        rss, mapped = process_ram()
        return rss - mapped

    if not (args.folder / "config.json").is_file():
        build_transformer(args.model, device="cuda", config=TRANSFORMERS[args.model]).save_pretrained(str(args.folder))
        torch.cuda.empty_cache()
    t = WanTransformer3DModel.from_pretrained(str(args.folder), dtype=torch.bfloat16)
    streamed = sum(x.numel() * x.element_size() for x in t.parameters())
    rows = [("loaded (memory-mapped)", heap(), _host_stats(), 0.0)]
    saved = _host_tensors(t)
    cp = ComponentPlan("transformer", "bf16", "block_offload", use_stream=True)
    for attempt in ("attach", "reattach"):
        t0 = time.perf_counter()
        offload.apply_transformer(t, cp, torch.device("cuda"))
        torch.cuda.synchronize()
        rows.append((attempt, heap(), _host_stats(), time.perf_counter() - t0))
        t0 = time.perf_counter()
        offload.offload_groups(t)
        registry = getattr(t, "_diffusers_hook", None)
        for hook in _OFFLOAD_HOOKS:
            registry.remove_hook(hook, recurse=True)
        _restore_host(saved)
        rows.append((f"detach after {attempt}", heap(), _host_stats(), time.perf_counter() - t0))
    t0 = time.perf_counter()
    manual = [x.detach().pin_memory() for x in t.parameters()]
    rows.append(("plain pin_memory of every weight", heap(), _host_stats(), time.perf_counter() - t0))
    del manual
    base = rows[0][1]
    out = dict(model=args.model, streamed_bytes=streamed,
               rows=[dict(step=s, heap=h, heap_above_loaded=h - base, factor=(h - base) / streamed, host=hs, seconds=sec)
                     for s, h, hs, sec in rows])
    print(f"streamed weights {streamed / GIB:.2f} GiB")
    for r in out["rows"]:
        print(f"{r['step']:34s} heap +{r['heap_above_loaded'] / GIB:6.2f} GiB (x{r['factor']:.2f})  "
              f"host {json.dumps({k: round(v / GIB, 2) for k, v in r['host'].items()})}  {r['seconds']:.1f}s")
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
