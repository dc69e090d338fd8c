"""End to end (text encode + N denoising steps + VAE decode) on real-shape random weights (step skipping: bench/cache.py).

The denoising loop is lowvram's own (`lowvram.sampling.runner.denoise`: UniPC flow, classifier-free guidance, a
synchronize per step), fed by a pipeline-like object whose components are fresh modules over host copies.
Stages are entered with `lowvram.placement.enter_stage`, so the time of moving components between stages
counts, as in `lowvram generate`. Load-time work (quantizing, pinning) is reported apart.

The all-on-GPU reference keeps every component resident on the real card, uncapped: no moves at all.
When only some steps are measured (the 14B, for device time), the rest are composed from the measured
steady step, and the result says so.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import torch

from lowvram.bench.build import (
    HostCopy,
    build_transformer,
    build_umt5,
    build_vae,
    transformer_on_meta,
)
from lowvram.bench.measure import GIB, clean_cuda, set_budget
from lowvram.bench.recipes import (
    BenchPipe,
    bench_job,
    predicted_stage_vram,
)
from lowvram.bench.shapes import TEXT_TOKENS, UMT5_XXL, latent_shape


def scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0)


class Hosts:
    """Host copies of the three components, built once per process (on the GPU, then copied)."""

    def __init__(self, model_key: str, log: Callable[[str], None] = print, device: str = "cuda", configs: Optional[dict] = None) -> None:
        """`configs` (tests): {"transformer": ..., "text_encoder": ..., "vae": ...} to build small stand-ins."""
        configs = configs or {}
        self.te_config = configs.get("text_encoder") or UMT5_XXL
        self.vae_config = configs.get("vae") or {}
        tconfig = configs.get("transformer")
        t0 = time.perf_counter()
        gpu = build_transformer(model_key, device=device, config=tconfig)
        self.transformer = HostCopy.of(gpu, lambda: transformer_on_meta(model_key, tconfig))
        del gpu
        self.text_encoder = None
        if configs.get("with_text_encoder", True):
            enc = build_umt5(device=device, config=self.te_config)
            self.text_encoder = HostCopy.of(enc, self._umt5_meta)
            del enc
        vae = build_vae(device=device, config=self.vae_config)
        self.vae = HostCopy.of(vae, self._vae_meta)
        del vae
        clean_cuda()
        self.seconds = time.perf_counter() - t0
        self.text_tokens = configs.get("text_tokens", TEXT_TOKENS)
        log(f"[e2e {model_key}] host copies built in {self.seconds:.1f}s")

    def _umt5_meta(self):
        from transformers import UMT5Config, UMT5EncoderModel

        with torch.device("meta"):
            m = UMT5EncoderModel(UMT5Config(**self.te_config))
        m.to(torch.bfloat16)
        m.encoder.embed_tokens.weight = m.shared.weight
        return m.eval().requires_grad_(False)

    def _vae_meta(self):
        from diffusers import AutoencoderKLWan

        with torch.device("meta"):
            v = AutoencoderKLWan(**self.vae_config)
        return v.eval().requires_grad_(False)

    def pipe(self) -> BenchPipe:
        te = self.text_encoder.fresh() if self.text_encoder is not None else None
        p = BenchPipe(transformer=self.transformer.fresh(), text_encoder=te, vae=self.vae.fresh())
        p.scheduler = scheduler()
        return p


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def encode(pipe, device: str, prompts: int = 2, text_tokens: int = TEXT_TOKENS, text_dim: int = 4096):
    """Two prompts (cond, uncond) of 512 tokens through the text encoder, as the Wan pipeline does
    (random embeddings of the same shape when the pipe has no text encoder: denoise-only timings)."""
    te = pipe.text_encoder
    out = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    if te is None:
        return [(torch.randn(1, text_tokens, text_dim, generator=gen) * 0.1).to(device, torch.bfloat16) for _ in range(prompts)]
    with torch.no_grad():
        for _ in range(prompts):
            ids = torch.randint(0, te.config.vocab_size, (1, text_tokens), generator=gen).to(device)
            out.append(te(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.to(torch.bfloat16))
    return out


def decode(pipe, latents):
    vae = pipe.vae
    dev = next(vae.parameters()).device
    with torch.no_grad():
        return vae.decode(latents.to(dev, vae.dtype), return_dict=False)[0]


def denoise(pipe, plan, job, embeds, device: str, seed: int = 0):
    from lowvram.sampling.runner import Conditioning, LoadedModel
    from lowvram.sampling.runner import denoise as run_denoise
    from lowvram.telemetry import ignore

    gen = torch.Generator(device="cpu").manual_seed(seed)
    latents = torch.randn(latent_shape(job.height, job.width, job.frames), generator=gen).to(device)
    cond = Conditioning(embeds[0].to(device), embeds[1].to(device), None, latents, None)
    loaded = LoadedModel(ref=None, pipe=pipe, info=None, plan=plan)
    return run_denoise(loaded, job, plan, cond, ignore, lambda: 0.0)


class _Stage:
    """Times a stage and reads its VRAM peaks; an OOM inside is recorded and swallowed."""

    def __init__(self, name: str, out: dict):
        self.name, self.out = name, out
        self.cuda = torch.cuda.is_available()

    def __enter__(self):
        _sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        self.entered: dict = {}
        return self

    def entered_stage(self) -> None:
        """After enter_stage: keep the transition's own peak and time, measure the stage's work from here."""
        _sync()
        self.entered = dict(enter_seconds=time.perf_counter() - self.t0)
        if self.cuda:
            self.entered.update(enter_peak_vram_allocated=torch.cuda.max_memory_allocated(), enter_peak_vram_reserved=torch.cuda.max_memory_reserved())
            torch.cuda.reset_peak_memory_stats()

    def __exit__(self, exc_type, exc, tb):
        _sync()
        rec = dict(seconds=time.perf_counter() - self.t0, peak_vram_allocated=torch.cuda.max_memory_allocated() if self.cuda else 0, peak_vram_reserved=torch.cuda.max_memory_reserved() if self.cuda else 0)
        rec.update(self.entered)
        if exc_type is torch.OutOfMemoryError:
            rec["oom"] = True
            rec["error"] = str(exc).splitlines()[0][:300]
        self.out[self.name] = rec
        return exc_type is torch.OutOfMemoryError


def _cap(budget_gib: Optional[float]) -> None:
    if torch.cuda.is_available():
        set_budget(budget_gib)


def all_on_gpu(hosts: Hosts, model_key: str, resolution: str, steps: int, measured_steps: int, log=print, device: str = "cuda", job=None) -> dict:
    from planner.plan import simple_plan

    clean_cuda()
    _cap(None)
    pipe = hosts.pipe()
    for name in ("transformer", "text_encoder", "vae"):
        getattr(pipe, name).to(device)
    plan = simple_plan(device, "bf16", reasons=("bench: everything resident",))
    job = job or bench_job(model_key, resolution, steps=measured_steps)
    stages: dict = {}
    with _Stage("encode", stages):
        embeds = encode(pipe, device, text_tokens=hosts.text_tokens)
    with _Stage("denoise", stages):
        latents, step_seconds = denoise(pipe, plan, job, embeds, device)
    with _Stage("decode", stages):
        decode(pipe, latents)
    out = _summary("all_on_gpu", stages, step_seconds, steps, plan)
    log(f"[e2e {model_key}] all on GPU: {out['e2e_seconds']:.1f}s (encode {stages['encode']['seconds']:.2f}, denoise {stages['denoise']['seconds']:.1f}, decode {stages['decode']['seconds']:.2f})")
    del pipe, embeds, latents
    clean_cuda()
    return out


def planned(hosts: Hosts, model_key: str, resolution: str, budget_gib: float, ram_gib: float, steps: int, measured_steps: int, plan=None, log=print, job=None) -> dict:
    from lowvram import placement
    from lowvram.bench.recipes import lowvram_plan

    clean_cuda()
    plan = plan or lowvram_plan(model_key, resolution, budget_gib, ram_gib)
    _cap(budget_gib)
    pipe = hosts.pipe()
    job = job or bench_job(model_key, resolution, steps=measured_steps)
    stages: dict = {}
    try:
        with _Stage("load", stages):  # quantize, pin, hooks: once per loaded model
            placement.prepare(pipe, plan)
        embeds = latents = None
        step_seconds: list = []
        if not stages["load"].get("oom"):
            with _Stage("encode", stages) as stage:
                placement.enter_stage(pipe, plan, "encode")
                stage.entered_stage()
                embeds = encode(pipe, placement.encode_device(plan), text_tokens=hosts.text_tokens)
        if embeds is not None:
            with _Stage("denoise", stages) as stage:
                placement.enter_stage(pipe, plan, "denoise")
                stage.entered_stage()
                latents, step_seconds = denoise(pipe, plan, job, embeds, plan.device)
        if latents is not None:
            with _Stage("decode", stages) as stage:
                placement.enter_stage(pipe, plan, "decode")
                stage.entered_stage()
                decode(pipe, latents)
    finally:
        placement.leave_all(pipe)
        _cap(None)
    out = _summary("lowvram", stages, step_seconds, steps, plan)
    out["budget_gib"] = budget_gib
    for name, rec in stages.items():
        rec["predicted_vram"] = predicted_stage_vram(plan, name)
    log(f"[e2e {model_key}] lowvram @ {budget_gib:g} GiB ({plan.summary()}): " + ", ".join(f"{k} {v['seconds']:.2f}s {v['peak_vram_reserved'] / GIB:.2f}/{(v['predicted_vram'] or 0) / GIB:.2f} GiB{' OOM' if v.get('oom') else ''}" for k, v in stages.items()))
    del pipe
    clean_cuda()
    return out


def _summary(name: str, stages: dict, step_seconds: list, steps: int, plan) -> dict:
    measured = len(step_seconds)
    out = dict(recipe=name, plan=plan.summary(), stages=stages, step_seconds=step_seconds, steps=steps, measured_steps=measured)
    if not measured or any(s.get("oom") for s in stages.values()):
        out["e2e_seconds"] = None
        return out
    denoise = stages["denoise"]["seconds"]
    if measured < steps:
        steady = statistics.median(step_seconds[1:]) if measured > 1 else step_seconds[0]
        denoise = denoise + (steps - measured) * steady
        out["composed"] = f"denoise = measured {measured} steps + {steps - measured} x the median of steps 2..{measured} ({steady:.3f}s)"
    out["denoise_seconds"] = denoise
    out["e2e_seconds"] = stages["encode"]["seconds"] + denoise + stages["decode"]["seconds"]
    return out


def run_e2e(model_key: str, budget_gib: float, resolution: str = "480p", steps: int = 50, measured_steps: Optional[int] = None, ram_gib: float = 64.0, log=print) -> dict:
    measured_steps = measured_steps or steps
    hosts = Hosts(model_key, log)
    base = all_on_gpu(hosts, model_key, resolution, steps, measured_steps, log)
    mine = planned(hosts, model_key, resolution, budget_gib, ram_gib, steps, measured_steps, log=log)
    if base.get("e2e_seconds") and mine.get("e2e_seconds"):
        mine["ratio"] = mine["e2e_seconds"] / base["e2e_seconds"]
    return dict(kind="e2e", model=model_key, resolution=resolution, budget_gib=budget_gib, steps=steps, all_on_gpu=base, lowvram=mine, host_build_seconds=hosts.seconds)

