"""A real OOM, recovered: a deliberately too-aggressive forced plan under a VRAM cap.

The 14B transformer (random bf16 weights, real shapes: lowvram.bench.build) is forced resident on the
GPU while torch.cuda.set_per_process_memory_fraction caps the process below its 26.6 GiB of weights.
Moving it onto the GPU (or the first forward) raises a real torch.OutOfMemoryError; lowvram.sampling.recovery
frees, switches to the next leaner plan (planner.fallback) and continues. The script prints every
plan switch and each stage's measured peak, and exits 0 only when the run finished with a video.

The text encoder is a one-layer UMT5 with Wan's 4096-wide output and the VAE is the demo's tiny Wan
VAE (z_dim 16): the transformer is what is under test; the other two only need the right shapes.

    python -m lowvram.bench.oom_recovery                      # H100: 14B, 480x832x81, 2 steps, cap 20 GiB
    python -m lowvram.bench.oom_recovery --cap-gib 12 --json oom_report.json   # (the video sidecar is <out>.json)
    python -m lowvram.bench.oom_recovery --device cpu --transformer tiny --inject denoise:1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

GIB = 1024**3


def _text_encoder(vocab_size: int, device: str):
    from lowvram.bench.build import build_umt5
    from lowvram.bench.shapes import TEXT_DIM

    config = dict(
        vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=64, d_ff=256, num_layers=1, num_heads=64,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return build_umt5(device=device, dtype=__import__("torch").bfloat16, config=config).to("cpu")


def build_loaded(transformer_key: str, plan, build_device: str):
    """A LoadedModel: the demo pipeline with a real-shape random transformer and a 4096-wide text encoder."""
    import torch

    from lowvram import placement
    from lowvram.bench.build import build_transformer
    from lowvram.bench.shapes import TRANSFORMERS, WAN_COMMON
    from lowvram.models.loading import CheckpointInfo, load_pipeline
    from lowvram.models.names import ModelRef, resolve_model
    from lowvram.sampling.runner import LoadedModel

    configs = dict(TRANSFORMERS, tiny=dict(WAN_COMMON, num_attention_heads=2, ffn_dim=64, num_layers=4))
    pipe, _ = load_pipeline(resolve_model("tiny-random"), dtypes={"default": "bfloat16"})
    # Not the demo any more: keep placement from caching these random weights as the demo's quantized ones.
    pipe.register_to_config(_name_or_path="random-weights")
    started = time.perf_counter()
    transformer = build_transformer(transformer_key, device=build_device, config=configs[transformer_key]).to("cpu")
    pipe.transformer = transformer
    pipe.text_encoder = _text_encoder(pipe.text_encoder.config.vocab_size, build_device)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f"built {transformer_key} transformer with random bf16 weights in {time.perf_counter() - started:.1f}s", flush=True)
    info = CheckpointInfo(
        location="random weights", pipeline_class="WanPipeline", task="t2v",
        components=("transformer", "text_encoder", "vae"), transformer_config=dict(transformer.config),
    )
    placement.prepare(pipe, plan)
    return LoadedModel(ref=ModelRef(name=f"random-{transformer_key}", kind="local", location="random weights"), pipe=pipe, info=info, plan=plan)


def main(argv=None) -> int:
    import torch

    from lowvram.cli.console import ConsoleReporter
    from lowvram.job import Job
    from lowvram.sampling.faults import FaultPlan
    from lowvram.sampling.recovery import OutOfMemoryExhausted
    from lowvram.sampling.runner import generate
    from lowvram.telemetry import PlanSwitched, StageFinished
    from planner.plan import simple_plan

    p = argparse.ArgumentParser(prog="python -m lowvram.bench.oom_recovery", description=__doc__.splitlines()[0])
    p.add_argument("--transformer", choices=("14b", "1.3b", "tiny"), default="14b")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--cap-gib", type=float, default=20.0, help="VRAM cap for this process (default %(default)s GiB)")
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--inject", default=None, help="also inject OOMs (lowvram.sampling.faults syntax), e.g. for a CPU smoke test")
    p.add_argument("--out", default="oom_recovery.mp4")
    p.add_argument("--json", default=None, help="write the switches and peaks here")
    args = p.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: run with --device cpu --transformer tiny --inject denoise:1 for a smoke test", file=sys.stderr)
        return 2
    precision = "bf16" if args.device == "cuda" else "fp32"
    plan = simple_plan(args.device, precision, reasons=("deliberately too aggressive: everything resident, bf16",))
    loaded = build_loaded(args.transformer, plan, build_device=args.device)
    if args.device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * GIB / total))
        print(f"VRAM cap {args.cap_gib:.1f} GiB of {total / GIB:.1f} GiB", flush=True)
    job = Job(prompt="a cat walks in the city", width=args.width, height=args.height, frames=args.frames,
              steps=args.steps, seed=0, out=str(Path(args.out).resolve()))
    events = []
    reporter = ConsoleReporter(stream=sys.stdout)

    def sink(event):
        events.append(event)
        reporter(event)

    started = time.perf_counter()
    faults = FaultPlan.parse(args.inject) if args.inject else None
    code, final_plan, message = 0, plan, "finished"
    try:
        result = generate(job, plan, on_event=sink, loaded=loaded, faults=faults)
        final_plan = result.plan
    except OutOfMemoryExhausted as exc:
        code, final_plan, message = 3, exc.plan, str(exc)
    seconds = time.perf_counter() - started
    switches = [e for e in events if isinstance(e, PlanSwitched)]
    peaks = {e.stage: e.peak_vram_bytes for e in events if isinstance(e, StageFinished)}
    print(f"\n{len(switches)} plan switch(es); {message}")
    for s in switches:
        print(f"  {s.stage}: {s.reason}")
    print("stage peaks (VRAM allocated): " + ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in peaks.items()))
    print(f"final plan: {final_plan.summary()}; {seconds:.1f}s")
    if args.json:
        data = {
            "transformer": args.transformer, "device": args.device, "cap_gib": args.cap_gib, "job": job.to_dict(),
            "switches": [s.to_dict() for s in switches], "stage_peak_vram_bytes": peaks, "final_plan": final_plan.to_dict(),
            "seconds": seconds, "exit_code": code, "message": message,
        }
        Path(args.json).write_text(json.dumps(data, indent=2, default=str) + "\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
