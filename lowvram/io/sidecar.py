"""The JSON sidecar written beside each video: enough to reproduce and to audit the run."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from lowvram.caching.record import cache_record
from lowvram.telemetry import Event, MemorySample

SIDECAR_VERSION = 1
LIBRARIES = ("lowvram", "torch", "diffusers", "transformers", "accelerate", "optimum-quanto", "safetensors", "peft")


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    return out


def model_identity(loaded: Any) -> dict[str, Any]:
    ref, info = loaded.ref, loaded.info
    identity = {
        "name": ref.name,
        "kind": ref.kind,
        "location": ref.location,
        "pipeline_class": info.pipeline_class,
        "task": info.task,
        "transformer_config": {k: v for k, v in info.transformer_config.items() if not k.startswith("_")},
    }
    if ref.is_demo:
        from lowvram.models.demo import DEMO_LABEL, DEMO_SEED, DEMO_VERSION

        identity.update(random_weights=True, label=DEMO_LABEL, demo_seed=DEMO_SEED, demo_version=DEMO_VERSION)
    return identity


def lora_record(job, loaded, plan) -> list[dict]:
    """Each LoRA as it ran: file name, sha256, scale, expert, whether it was fused (as the pipeline holds it:
    a stored fp8 / GGUF file keeps its LoRAs as adapters even under a fused plan), and the file's path."""
    from lowvram.placement import state

    st = state(loaded.pipe) if loaded is not None and getattr(loaded, "pipe", None) is not None else None
    modes = dict(st.lora_modes) if st is not None else {c.name: c.lora for c in plan.denoisers if c.lora}
    out = []
    for lora in job.loras:
        names = [n for n in lora.components(plan.two_experts) if n in modes]
        out.append({
            "name": lora.name, "sha256": lora.sha256, "scale": lora.scale, "expert": lora.expert or "both",
            "fused": bool(names) and all(modes[n] == "fused" for n in names), "components": names, "path": lora.path,
        })
    return out


def _thin_memory(events: list[Event], every: float = 1.0) -> list[Event]:
    """Keep at most one memory sample per `every` seconds (per GPU); all other events as they are."""
    out, last = [], {}
    for e in events:
        if isinstance(e, MemorySample):
            if e.device in last and e.t - last[e.device] < every:
                continue
            last[e.device] = e.t
        out.append(e)
    return out


def per_gpu_peaks(plan, peaks: dict, processes: list | None = None) -> dict:
    """Predicted and measured peak VRAM on each GPU of a plan on several (empty for one GPU): measured in this
    process per GPU (a layer split, experts apart), or by each process of a context-parallel run on its own."""
    predicted = plan.peak_vram_per_gpu
    if len(predicted) < 2:
        return {}
    measured: dict = {}
    if processes:
        for p in processes:
            measured[f"cuda:{p['rank']}"] = max((s.get("vram_bytes", 0) for s in p["stages"].values()), default=0)
    else:
        for stage in peaks.values():
            for gpu, value in stage.get("vram_by_gpu", {}).items():
                measured[gpu] = max(measured.get(gpu, 0), value)
    return {f"cuda:{i}": {"predicted_peak_vram_bytes": v, "measured_peak_vram_bytes": measured.get(f"cuda:{i}")}
            for i, v in enumerate(predicted)}


def latents_record(latents) -> dict:
    """The denoised latents' shape and a hash of their float32 bytes: two runs that made the same latents (one GPU
    and several, a resumed run) can be told apart from ones that did not, without the file."""
    import hashlib

    import torch

    data = latents.detach().to("cpu", torch.float32).contiguous()
    return {"shape": list(data.shape), "sha256": hashlib.sha256(data.numpy().tobytes()).hexdigest()}


def build_sidecar(job, loaded, plan, events, step_seconds, peaks, total_seconds, extra: dict | None = None) -> dict:
    plan_dict = plan.to_dict()
    data = {
        "lowvram_sidecar_version": SIDECAR_VERSION,
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": job.seed,
        "settings": job.to_dict(),
        "model": model_identity(loaded),
        "libraries": library_versions(),
        "plan": plan_dict,
        "plan_note": "placeholder plan: the planner did not choose it" if plan.source == "placeholder" else "",
        "predicted": {
            "peak_vram_bytes": plan.peak_vram_bytes,
            "peak_ram_bytes": plan.peak_ram_bytes,
            "seconds": plan.predicted_seconds,
            "stages": [s.__dict__ for s in plan.predicted],
        },
        "measured": {
            "peak_vram_bytes": max((p["vram_bytes"] for p in peaks.values()), default=0),
            "peak_ram_bytes": max((p["ram_bytes"] for p in peaks.values()), default=0),
            "seconds": total_seconds,
            "stages": peaks,
        },
        "cache": cache_record(job, events),
        "loras": lora_record(job, loaded, plan),
        "notes": list(job.notes),
        "step_seconds": step_seconds,
        "telemetry": [e.to_dict() for e in _thin_memory(events)],
    }
    if plan.two_experts:
        data["experts"] = expert_record(loaded, plan, events, peaks)
    if extra:
        data.update(extra)
    gpus = per_gpu_peaks(plan, peaks, data.get("processes"))
    if gpus:
        data["gpus"] = gpus
    return data


def expert_record(loaded, plan, events, peaks) -> dict:
    """A two-expert run: where each expert was and waited, the step the low-noise one took over, each phase's
    predicted and measured peaks."""
    from lowvram.telemetry import PhaseStarted
    from planner.plan import PHASE_OF

    starts = {e.component: e.step for e in events if isinstance(e, PhaseStarted)}
    predicted = {s.key: s.__dict__ for s in plan.predicted}
    phases = {}
    for cp in plan.denoisers:
        key = f"denoise:{PHASE_OF[cp.name]}"
        phases[PHASE_OF[cp.name]] = {
            "component": cp.name,
            "plan": cp.describe() if plan.device != "cpu" else f"{cp.precision} on the CPU",
            "first_step": starts.get(cp.name),
            "predicted": predicted.get(key),
            "measured": peaks.get(key),
        }
    return {
        "boundary_ratio": getattr(getattr(loaded.pipe, "config", None), "boundary_ratio", None),
        "switch_step": starts.get("transformer_2"),
        "phases": phases,
    }
