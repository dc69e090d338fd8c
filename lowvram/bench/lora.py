"""LoRAs on the GPU: a rank-R LoRA fused vs kept as adapters, against no LoRA, under the planner's plans at
VRAM budgets (issue 15's target: the 14B, rank 64, at 12 and 24 GiB).

Random weights in the real shapes (lowvram.bench.build), a random LoRA of rank R on every Linear of every
block (attention q/k/v/o of both attentions and the FFN: the layers LightX2V's distillation LoRAs adapt),
written as a diffusers-layout file and read back through lowvram's own path (header check, diffusers'
loader, peft). For each budget and each way of carrying the LoRA the planner's best plan of that kind is
placed (placement.prepare: fusing, quantizing, pinning and hooks counted as load time), then a few
denoising steps run through lowvram's sampling loop; the step time is the median of the steps after the
first, peak VRAM is torch's allocated peak over the denoise stage. Per-run times for a number of steps are
composed from those medians (the output says so), with the planner's predictions beside each number.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from lowvram.bench.e2e import Hosts, _cap, _Stage, encode
from lowvram.bench.measure import GIB, clean_cuda
from lowvram.bench.recipes import bench_job, bench_probe
from lowvram.bench.shapes import TRANSFORMERS

MODES = ("none", "fused", "unfused")
LORA_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
                "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2")


def write_random_lora(path: Path, config: dict, rank: int = 64, seed: int = 0, std: float = 0.01) -> Path:
    """A rank-`rank` LoRA (diffusers layout, bf16) for every block Linear of a transformer of `config`."""
    from safetensors.torch import save_file

    dim = config["num_attention_heads"] * config["attention_head_dim"]
    ffn = config["ffn_dim"]
    shapes = {"ffn.net.0.proj": (dim, ffn), "ffn.net.2": (ffn, dim)}
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(config["num_layers"]):
        for target in LORA_TARGETS:
            n_in, n_out = shapes.get(target, (dim, dim))
            key = f"transformer.blocks.{i}.{target}"
            tensors[f"{key}.lora_A.weight"] = (torch.randn(rank, n_in, generator=gen) * std).to(torch.bfloat16)
            tensors[f"{key}.lora_B.weight"] = (torch.randn(n_out, rank, generator=gen) * std).to(torch.bfloat16)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def bench_lora(path: Path, config: dict):
    """The LoraSpec of a written LoRA, checked and measured as `--lora` would be."""
    from lowvram.loras.files import sha256_of
    from lowvram.loras.inspect import inspect_lora
    from lowvram.loras.spec import LoraSpec

    return LoraSpec(str(path), 1.0, "both", sha256_of(path), inspect_lora(path, config).footprint)


def plans_by_mode(job, model_key: str, budget_gib: float, ram_gib: float, min_precision: str = "bf16") -> dict:
    """{mode: the planner's best fitting plan carrying the LoRA that way} ("none": the job without it). bf16
    by default: quantizing the 14B on the CPU for every case would take most of the benchmark's time, and a
    fused LoRA under a quantized plan costs what the quantized plan costs (it is fused before quantizing).
    Eager: adapters are planned eager only, so the three are compared without compile (and no case pays for
    compiling the blocks)."""
    from lowvram.bench.shapes import MODEL_NAMES
    from lowvram.models.specs import spec_for_model
    from planner.choose import Preferences, make_plan, pick

    spec = spec_for_model(MODEL_NAMES[model_key])
    probe = bench_probe(budget_gib, ram_gib)
    prefs = Preferences(min_quant=min_precision, compile=False)
    out = {"none": make_plan(probe, spec, job.with_(loras=()), prefs, suggest_smaller=False).plan}
    result = make_plan(probe, spec, job, prefs, suggest_smaller=False)
    for mode in ("fused", "unfused"):
        fitting = [c for c in result.candidates if c.fits and c.plan.denoisers[0].lora == mode]
        if fitting:
            out[mode] = pick(fitting, "speed").plan
    return out


def predicted_step_seconds(plan, job, model_key: str, budget_gib: float, ram_gib: float) -> Optional[float]:
    """The planner's time of one more step under `plan` (its denoise stage at 2 steps minus at 1)."""
    from lowvram.bench.shapes import MODEL_NAMES
    from lowvram.models.specs import spec_for_model
    from planner.estimate import predict
    from planner.timing import throughput_for

    if plan.device != "cuda":
        return None
    spec = spec_for_model(MODEL_NAMES[model_key])
    tp = throughput_for(bench_probe(budget_gib, ram_gib))
    denoise = [sum(s.seconds for s in predict(plan, spec, job.with_(steps=n), tp)[0] if s.stage == "denoise") for n in (1, 2)]
    return denoise[1] - denoise[0]


def run_case(hosts: Hosts, plan, job, budget_gib: Optional[float], log: Callable[[str], None] = print,
             predicted_step: Optional[float] = None) -> dict:
    """Place `plan` (with the job's LoRAs), run the job's steps; load and denoise measured."""
    from lowvram import placement
    from lowvram.sampling.runner import Conditioning, LoadedModel, denoise
    from lowvram.telemetry import ignore

    clean_cuda()
    _cap(budget_gib)
    pipe = hosts.pipe()
    stages: dict = {}
    step_seconds: list = []
    try:
        with _Stage("load", stages):
            placement.prepare(pipe, plan, loras=job.loras)
        if not stages["load"].get("oom"):
            embeds = encode(pipe, plan.device, text_tokens=hosts.text_tokens, text_dim=pipe.transformer.config.text_dim)
            gen = torch.Generator(device="cpu").manual_seed(0)
            from lowvram.bench.shapes import latent_shape

            latents = torch.randn(latent_shape(job.height, job.width, job.frames), generator=gen).to(plan.device)
            negative = embeds[1] if job.guidance > 1.0 else None
            cond = Conditioning(embeds[0], negative, None, latents, None)
            loaded = LoadedModel(ref=None, pipe=pipe, info=None, plan=plan, loras=job.loras)
            with _Stage("denoise", stages) as stage:
                placement.enter_stage(pipe, plan, "denoise")
                stage.entered_stage()
                _, step_seconds = denoise(loaded, job, plan, cond, ignore, lambda: 0.0)
    finally:
        placement.leave_all(pipe)
        _cap(None)
        del pipe
        clean_cuda()
    steady = step_seconds[1:] or step_seconds
    denoise_peak = stages.get("denoise", {})
    predicted = next((s for s in plan.predicted if s.stage == "denoise"), None)
    out = dict(
        plan=plan.summary(), lora=next((c.lora for c in plan.denoisers if c.lora), ""), stages=stages,
        step_seconds=step_seconds, step_median=statistics.median(steady) if steady else None,
        peak_vram_allocated=denoise_peak.get("peak_vram_allocated"), peak_vram_reserved=denoise_peak.get("peak_vram_reserved"),
        load_seconds=stages["load"]["seconds"], oom=any(s.get("oom") for s in stages.values()),
        predicted_vram=predicted.vram_bytes if predicted else None,
        predicted_step=predicted_step,
        predicted_load=next((s.seconds for s in plan.predicted if s.stage == "load"), None),
    )
    log(f"[lora] {out['lora'] or 'no LoRA'} @ {budget_gib} GiB ({plan.summary()}): load {out['load_seconds']:.1f}s, step "
        f"{(out['step_median'] or 0):.3f}s (predicted {out['predicted_step'] or 0:.3f}), peak VRAM "
        f"{(out['peak_vram_allocated'] or 0) / GIB:.2f} GiB (predicted {(out['predicted_vram'] or 0) / GIB:.2f}){' OOM' if out['oom'] else ''}")
    return out


def run_lora(model_key: str = "14b", budgets=(12.0, 24.0), rank: int = 64, resolution: str = "480p", steps: int = 3,
             guidance: float = 1.0, ram_gib: float = 64.0, compose_steps=(4, 50), log=print, min_precision: str = "bf16",
             hosts: Optional[Hosts] = None, job=None, plans: Optional[dict] = None, config: Optional[dict] = None,
             save: Callable[[dict], None] = lambda data: None) -> dict:
    """Every budget x (none, fused, unfused). `hosts`, `job`, `plans` ({budget: {mode: plan}}) and `config` let
    the tests use tiny shapes on the CPU. `save(data)` after every case (a run cut short keeps what it measured)."""
    config = config or TRANSFORMERS[model_key]
    hosts = hosts or Hosts(model_key, log, configs={"with_text_encoder": False})
    folder = Path(tempfile.mkdtemp(prefix="lowvram-bench-lora-"))
    t0 = time.perf_counter()
    lora = bench_lora(write_random_lora(folder / f"rank{rank}.safetensors", config, rank), config)
    log(f"[lora] rank-{rank} LoRA: {lora.footprint.params / 1e6:.0f} M params on {lora.footprint.layers} layers, "
        f"written and checked in {time.perf_counter() - t0:.1f}s")
    job = (job or bench_job(model_key, resolution, steps=steps)).with_(guidance=guidance, loras=(lora,))
    out: dict = dict(kind="lora", model=model_key, resolution=resolution, rank=rank, steps=job.steps, guidance=guidance,
                     lora_params=lora.footprint.params, compose_steps=list(compose_steps), runs=[])
    try:
        for budget in budgets:
            by_mode = (plans or {}).get(budget) or plans_by_mode(job, model_key, budget, ram_gib, min_precision)
            for mode in MODES:
                plan = by_mode.get(mode)
                if plan is None:
                    out["runs"].append(dict(budget_gib=budget, mode=mode, note="no plan of this kind fits"))
                    continue
                case_job = job if mode != "none" else job.with_(loras=())
                step = predicted_step_seconds(plan, case_job, model_key, budget, ram_gib)
                run = run_case(hosts, plan, case_job, budget if plan.device == "cuda" else None, log, step)
                out["runs"].append(dict(run, budget_gib=budget, mode=mode))
                save(out)
    finally:
        for f in folder.glob("*"):
            f.unlink()
        folder.rmdir()
    for run in out["runs"]:
        base = next((r for r in out["runs"] if r["budget_gib"] == run["budget_gib"] and r["mode"] == "none"), None)
        if base and base.get("step_median") and run.get("step_median"):
            run["step_vs_none"] = run["step_median"] / base["step_median"]
            run["peak_vs_none"] = (run["peak_vram_allocated"] or 0) - (base["peak_vram_allocated"] or 0)
            run["composed_runs"] = {str(n): run["load_seconds"] + n * run["step_median"] for n in compose_steps}
    return out


def lora_section(data: dict) -> str:
    """The benchmark as a markdown table (docs/benchmarks.md)."""
    lines = [
        f"### LoRA rank {data['rank']}: {data['model']} {data['resolution']}, guidance {data['guidance']:g} "
        f"({data['lora_params'] / 1e6:.0f} M adapter params)",
        "",
        "| budget | LoRA | plan | load s | step s (pred.) | x no LoRA | peak VRAM GiB (pred.) | + vs no LoRA | "
        + " | ".join(f"{n} steps s" for n in data["compose_steps"]) + " |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(data["compose_steps"]),
    ]
    for r in data["runs"]:
        if "plan" not in r:
            lines.append(f"| {r['budget_gib']:g} | {r['mode']} | {r.get('note', '')} |" + " |" * (7 + len(data["compose_steps"])))
            continue
        pred = f"{r['predicted_step']:.3f}" if r.get("predicted_step") is not None else "-"
        step = f"{r['step_median']:.3f} ({pred})" if r.get("step_median") is not None else "OOM"
        peak = f"{(r['peak_vram_allocated'] or 0) / GIB:.2f} ({(r['predicted_vram'] or 0) / GIB:.2f})"
        ratio = f"x{r['step_vs_none']:.3f}" if "step_vs_none" in r else "-"
        plus = f"{r['peak_vs_none'] / GIB:+.2f}" if "peak_vs_none" in r else "-"
        composed = " | ".join(f"{r['composed_runs'][str(n)]:.1f}" if "composed_runs" in r else "-" for n in data["compose_steps"])
        lines.append(f"| {r['budget_gib']:g} | {r['mode']} | {r['plan']} | {r['load_seconds']:.1f} | {step} | {ratio} | {peak} | {plus} | {composed} |")
    lines += ["", f"Step times: median of steps 2..{data['steps']} of {data['steps']} measured; the per-run columns are composed: "
              "load + N x that median (denoising only: no text encoder, no decode)."]
    return "\n".join(lines) + "\n"
