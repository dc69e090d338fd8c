"""Run a job: load -> encode -> denoise -> decode -> write, emitting telemetry events.

Each stage is a small function over plain inputs so that the reliability layer can retry or resume
one stage with a leaner plan, and the TUI can run the whole thing in a worker thread.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from lowvram import placement
from lowvram.errors import CancelledError
from lowvram.job import Job, check_task
from lowvram.models.loading import CheckpointInfo, load_pipeline
from lowvram.models.names import ModelRef
from lowvram.sampling import faults as fault_injection
from lowvram.sampling.decode_watch import DecodeWatch
from lowvram.sampling.eta import Eta
from lowvram.sampling.recovery import OutOfMemoryExhausted, Recovery, placement_differs
from lowvram.sampling.resume import DenoiseCheckpoint, ResumeState, restore_scheduler
from lowvram.telemetry import (
    EventLog,
    EventSink,
    LogMessage,
    PhaseStarted,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunStarted,
    StageFinished,
    StageStarted,
    StepFinished,
    ignore,
)
from lowvram.telemetry.memory import MemorySampler, allocator_retries
from planner.plan import PHASE_OF, Plan, fit_to, simple_plan, with_loras


def placeholder_plan(components: tuple[str, ...] = ("text_encoder", "transformer", "vae")) -> Plan:
    """Everything on one device: the GPU when there is one. Used until a planner plan is given."""
    import torch

    gpu = torch.cuda.is_available()
    reason = "no planner plan given" if gpu else "no GPU: everything on the CPU"
    return simple_plan("cuda" if gpu else "cpu", "bf16" if gpu else "fp32", source="placeholder", reasons=(reason,),
                       components=components)


@dataclass
class LoadedModel:
    ref: ModelRef
    pipe: Any
    info: CheckpointInfo
    plan: Plan
    loras: tuple = ()  # the LoraSpecs in its denoisers (fused or as adapters, per plan)

    @property
    def task(self) -> str:
        return self.info.task

    @functools.cached_property
    def spec(self) -> Any:
        """The planner's ModelSpec of the loaded checkpoint (its configs and weight headers: cheap)."""
        from planner.spec import spec_from_folder

        if self.info is None:  # built in memory (benchmarks): no configs on disk to read
            return None
        return spec_from_folder(Path(self.info.location), name=self.ref.name, is_demo=self.ref.is_demo)

    @property
    def two_experts(self) -> bool:
        return getattr(self.pipe, "transformer_2", None) is not None and getattr(self.pipe, "transformer", None) is not None

    @property
    def denoiser_names(self) -> tuple[str, ...]:
        return tuple(n for n in ("transformer", "transformer_2") if getattr(self.pipe, n, None) is not None)


@dataclass
class Conditioning:
    """Everything the denoiser needs, produced by the encode stage."""

    prompt_embeds: Any
    negative_embeds: Any
    image_embeds: Any
    latents: Any
    condition: Any  # image conditioning: Wan I2V's first-frame latents and mask (concatenated to the input),
    # or TI2V's first-frame latents (blended in by first_frame_mask)
    first_frame_mask: Any = None  # TI2V image-to-video: 0 on the conditioning frame's tokens, 1 elsewhere


@dataclass
class RunResult:
    video_path: Path
    sidecar_path: Path
    seconds: float
    plan: Plan
    events: list = field(default_factory=list)
    step_seconds: list = field(default_factory=list)
    stage_peaks: dict = field(default_factory=dict)
    latents: Any = None  # the denoised latents (CPU), for resume/equality checks
    loaded: Any = None  # the LoadedModel, for the next job of a batch


class Clock:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


def _resumed_conditioning(resume: ResumeState) -> "Conditioning":
    c = resume.cond
    return Conditioning(c["prompt_embeds"], c["negative_embeds"], c["image_embeds"], resume.checkpoint.latents,
                        c["condition"], c.get("first_frame_mask"))


def _check_cancel(cancel: Optional[threading.Event], plan: Optional[Plan] = None) -> None:
    """Raise CancelledError when asked to stop. The processes of a context-parallel run agree first (a cancel in
    one stops all of them at the same step boundary, or the others would wait on it forever)."""
    stop = cancel is not None and cancel.is_set()
    if plan is not None and plan.parallel:
        from lowvram.parallel import group

        stop = group.any_rank(stop)
    if stop:
        raise CancelledError("cancelled")


def model_components(ref: ModelRef) -> tuple[str, ...]:
    """The weight components a checkpoint has (its model_index.json), fetching it first for a hub id."""
    from lowvram.models.loading import checkpoint_folder, read_checkpoint_info

    info = read_checkpoint_info(checkpoint_folder(ref))
    return tuple(c for c in ("text_encoder", "image_encoder", "transformer", "transformer_2", "vae") if c in info.components)


def loaded_components(loaded: LoadedModel) -> tuple[str, ...]:
    return tuple(c for c in ("text_encoder", "image_encoder", "transformer", "transformer_2", "vae")
                 if getattr(loaded.pipe, c, None) is not None)


def preload_components(ref: ModelRef, folder: Path, plan: Plan, loras: tuple = ()) -> dict:
    """Components loaded before the pipeline so that none is built in memory: quantized ones from the quantized
    cache (a denoiser with fused LoRAs from the entry of that LoRA set), ones stored in another dtype than the
    plan's (the Wan checkpoints' float32 transformers) from the converted cache, memory-mapped
    (lowvram.models.dtype_cache)."""
    from lowvram.models import dtype_cache

    quantized = placement.load_cached_components(folder, plan, loras)
    skip = tuple(quantized) + tuple(c.name for c in plan.components if c.quantized or c.precision == "stored")
    skip += ("transformer", "transformer_2") if ref.files else ()  # single files load from the files themselves
    dtypes = {c.name: c.dtype for c in plan.components if c.role in ("denoiser", "text_encoder")}
    return {**dtype_cache.preload(folder, dtypes, skip=skip), **quantized}


def load_model(ref: ModelRef, plan: Plan, loras: tuple = ()) -> LoadedModel:
    """Load and place the pipeline per `plan`, with the job's LoRAs (resolved LoraSpecs) in its denoisers."""
    from lowvram.placement import quant_cache

    plan = with_loras(plan, loras)
    try:
        # Quantized components come from the quantized cache when present (no bf16 copy is ever built).
        dtypes = {c.name: c.dtype for c in plan.components}
        pipe, info = load_pipeline(ref, dtypes=dtypes, preload=lambda folder: preload_components(ref, folder, plan, loras))
        placement.prepare(pipe, plan, loras=loras)  # quantizes what the cache missed and fills the cache
    finally:
        quant_cache.release_fills()  # entries this load missed but did not fill: other processes may fill them
    return LoadedModel(ref=ref, pipe=pipe, info=info, plan=plan, loras=tuple(loras))


def _lora_identity(loras: tuple) -> tuple:
    return tuple((lora.sha256 or lora.path, float(lora.scale), lora.expert or "both") for lora in loras)


def _denoiser(pipe: Any) -> Any:
    """The first denoiser (dtype and config are the same for both experts)."""
    return pipe.transformer if getattr(pipe, "transformer", None) is not None else pipe.transformer_2


def encode(loaded: LoadedModel, job: Job, plan: Plan) -> Conditioning:
    """Prompt embeddings, the initial noise and the image conditioning, as diffusers' Wan pipelines make them."""
    import torch
    from diffusers import WanImageToVideoPipeline

    pipe = loaded.pipe
    device = torch.device(placement.compute_device(plan))
    cfg = job.guidance > 1.0  # as diffusers: guidance_scale (the high-noise expert's) turns CFG on
    transformer = _denoiser(pipe)
    with torch.no_grad():
        prompt_embeds, negative_embeds = pipe.encode_prompt(
            prompt=job.prompt,
            negative_prompt=job.negative_prompt if cfg else None,
            do_classifier_free_guidance=cfg,
            num_videos_per_prompt=1,
            max_sequence_length=512,
            device=torch.device(placement.encode_device(plan)),  # the CPU when the text encoder runs there
        )
        tdtype = transformer.dtype
        prompt_embeds = prompt_embeds.to(device, tdtype)
        if negative_embeds is not None:
            negative_embeds = negative_embeds.to(device, tdtype)
        generator = torch.Generator(device="cpu").manual_seed(job.seed)
        image_embeds = condition = mask = None
        if job.image is None:
            latents = pipe.prepare_latents(
                1, transformer.config.in_channels, job.height, job.width, job.frames, torch.float32, device, generator
            )
            return Conditioning(prompt_embeds, negative_embeds, None, latents, None)
        from PIL import Image

        with Image.open(Path(job.image).expanduser()) as source:  # closed here, also for multi-frame files
            image = source.convert("RGB")
        if transformer.config.image_dim is not None:  # Wan2.1 I2V: CLIP image embeddings
            image_embeds = pipe.encode_image(image, torch.device(placement.image_encoder_device(plan)))
            image_embeds = image_embeds.to(device, tdtype)
        vae_device = torch.device(placement.vae_device(plan))  # denoise() moves the results to `device`
        pixels = pipe.video_processor.preprocess(image, height=job.height, width=job.width).to(vae_device, torch.float32)
        # diffusers' own image-to-video latent preparation, also for TI2V-5B (a WanPipeline checkpoint whose
        # image mode diffusers runs with WanImageToVideoPipeline): one code path, the same numbers.
        out = WanImageToVideoPipeline.prepare_latents(
            pipe, pixels, 1, pipe.vae.config.z_dim, job.height, job.width, job.frames, torch.float32, vae_device, generator
        )
        latents, condition = out[0], out[1]
        mask = out[2] if len(out) > 2 else None
    return Conditioning(prompt_embeds, negative_embeds, image_embeds, latents, condition, mask)


def boundary_timestep(pipe: Any) -> Optional[float]:
    """t at and above which the high-noise expert runs (two-expert models); None for one denoiser."""
    ratio = getattr(pipe.config, "boundary_ratio", None)
    if ratio is None or getattr(pipe, "transformer_2", None) is None:
        return None
    return ratio * pipe.scheduler.config.num_train_timesteps


def expert_for(t: float, boundary: Optional[float]) -> str:
    return "transformer" if boundary is None or t >= boundary else "transformer_2"


def set_timesteps(pipe: Any, job: Job, spec_shift: float, device: Any) -> Any:
    """The scheduler's timesteps for the job, with its flow shift (diffusers sets the shift in the config)."""
    scheduler = pipe.scheduler
    if getattr(scheduler.config, "flow_shift", None) != spec_shift:
        scheduler = type(scheduler).from_config(scheduler.config, flow_shift=spec_shift)
        pipe.scheduler = scheduler
    scheduler.set_timesteps(job.steps, device=device)
    scheduler.set_begin_index(0)
    return scheduler.timesteps


def denoise(
    loaded: LoadedModel,
    job: Job,
    plan: Plan,
    cond: Conditioning,
    on_event: EventSink,
    clock: Clock,
    cancel: Optional[threading.Event] = None,
    resume: Optional[DenoiseCheckpoint] = None,
    on_checkpoint: Optional[Callable[[int, Any, Any], None]] = None,
    on_phase: Optional[Callable[[str, int], None]] = None,
) -> tuple[Any, list[float]]:
    """The sampling loop as diffusers' Wan pipelines run it, one StepFinished event per step.

    A two-expert model runs `transformer` while t >= boundary and `transformer_2` after, with guidance
    `job.guidance` / `job.guidance_2`; at the switch the active expert leaves the GPU first
    (placement.enter_stage with the phase). TI2V-5B gets one timestep per token (expand_timesteps).
    `resume` starts at its step with its latents and scheduler history (after an OOM or from a file);
    `on_checkpoint(steps_done, latents, scheduler)` is called after every step; `on_phase(name, step)`
    when an expert becomes active.
    """
    import torch

    pipe = loaded.pipe
    device = torch.device(placement.compute_device(plan))
    timesteps = set_timesteps(pipe, job, job_shift(loaded, job), device)
    scheduler = pipe.scheduler
    latents = cond.latents.to(device)
    start = 0
    if resume is not None:
        start, latents = resume.step, resume.latents.to(device, copy=True)
        restore_scheduler(scheduler, resume.scheduler, resume.tensors, device)
    condition = cond.condition.to(device) if cond.condition is not None else None
    mask = cond.first_frame_mask.to(device) if cond.first_frame_mask is not None else None
    expand = bool(getattr(pipe.config, "expand_timesteps", False))
    if expand and mask is None:
        mask = torch.ones((1, 1) + tuple(latents.shape[2:]), dtype=torch.float32, device=device)
    boundary = boundary_timestep(pipe)
    guidance_2 = job.guidance_2 if job.guidance_2 is not None else job.guidance
    tdtype = _denoiser(pipe).dtype
    if plan.parallel:
        from lowvram.parallel.group import enable_context_parallel

        tokens = latent_tokens(latents.shape, _denoiser(pipe).config.patch_size)
        for name in loaded.denoiser_names:
            enable_context_parallel(getattr(pipe, name), plan, tokens)
    from lowvram.placement.devices import current_device
    cfg = cond.negative_embeds is not None
    step_seconds: list[float] = []
    active: Optional[str] = None
    from lowvram.caching.session import cache_session

    # Step skipping (off unless the job asks): its schedule is fixed here, before the first step.
    with torch.no_grad(), cache_session(loaded, job, timesteps, on_event, clock) as cache:
        eta = Eta.for_plan(plan)
        for i, t in enumerate(timesteps):
            if i < start:
                continue
            _check_cancel(cancel, plan)
            fault_injection.check("denoise", i)
            name = expert_for(float(t), boundary)
            if name != active:
                placement.enter_stage(pipe, plan, "denoise", phase=name)  # the other expert leaves first
                active = name
                if on_phase is not None:
                    on_phase(name, i)
            transformer = cache.attach(name, getattr(pipe, name))  # that expert's skip schedule, applied once
            guidance = job.guidance if name == "transformer" else guidance_2
            started = time.perf_counter()
            if expand and condition is not None:
                model_in = (1 - mask) * condition + mask * latents
            elif condition is not None:
                model_in = torch.cat([latents, condition], dim=1)
            else:
                model_in = latents
            model_in = model_in.to(tdtype)
            if expand:
                # one timestep per token: 0 on the conditioning frame (TI2V image-to-video), t elsewhere
                p_h, p_w = transformer.config.patch_size[1], transformer.config.patch_size[2]
                timestep = (mask[0][0][:, ::p_h, ::p_w] * t).flatten().unsqueeze(0).expand(latents.shape[0], -1)
            else:
                timestep = t.expand(latents.shape[0])
            kwargs = dict(hidden_states=model_in, timestep=timestep, attention_kwargs=None, return_dict=False)
            if cond.image_embeds is not None:
                kwargs["encoder_hidden_states_image"] = cond.image_embeds
            # an expert on its own card streams there: its streams are that card's (lowvram.placement.devices)
            with current_device(placement.component_device(plan, name)), transformer.cache_context("cond", step_index=i):
                noise_pred = transformer(encoder_hidden_states=cond.prompt_embeds, **kwargs)[0]
            if cfg:
                with current_device(placement.component_device(plan, name)), transformer.cache_context("uncond", step_index=i):
                    noise_uncond = transformer(encoder_hidden_states=cond.negative_embeds, **kwargs)[0]
                noise_pred = noise_uncond + guidance * (noise_pred - noise_uncond)
            latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            if on_checkpoint is not None:
                on_checkpoint(i + 1, latents, scheduler)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - started
            step_seconds.append(elapsed)
            calls = cache.step_done(i)
            eta.step_done(elapsed, calls.computed)
            on_event(
                StepFinished(
                    t=clock(),
                    step=i,
                    total=len(timesteps),
                    seconds=elapsed,
                    eta_seconds=eta.seconds_left(calls.remaining_computed_calls),
                    computed_calls=calls.computed,
                    skipped_calls=calls.skipped,
                    remaining_calls=calls.remaining_calls,
                    remaining_computed_calls=calls.remaining_computed_calls,
                    expert=name if boundary is not None else "",
                )
            )
    if expand and condition is not None:
        latents = (1 - mask) * condition + mask * latents  # the conditioning frame, exactly
    return latents, step_seconds


def latent_tokens(shape: tuple, patch_size: tuple) -> int:
    """Tokens of a latent video (1, C, F, H, W) for a transformer with this patch size."""
    _, _, f, h, w = shape
    pt, ph, pw = patch_size
    return (f // pt) * (h // ph) * (w // pw)


def job_shift(loaded: LoadedModel, job: Job) -> float:
    """The flow shift this job samples with: --shift, else the model card's rule (planner.families)."""
    if job.shift is not None:
        return job.shift
    from planner.families import default_shift

    if loaded.spec is None:
        return float(loaded.pipe.scheduler.config.flow_shift)
    return default_shift(loaded.spec, job.width, job.height)[0]


def decode(loaded: LoadedModel, plan: Plan, latents: Any, watch: Optional[DecodeWatch] = None):
    """Latents -> frames as a float array (frames, H, W, 3) in [0, 1]. `watch` reports progress and
    stops the decode between chunks on a cancel."""
    import torch

    pipe = loaded.pipe
    vae = pipe.vae
    vae_device = next(vae.parameters()).device
    with torch.no_grad():
        z = latents.to(vae_device, dtype=vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(z)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(z)
        z = z / inv_std + mean
        with watch.watching(vae, tuple(z.shape)) if watch is not None else contextlib.nullcontext():
            video = vae.decode(z, return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video, output_type="np")
    return frames[0]


def _merge_max(a: dict, b: dict) -> dict:
    return {k: max(a.get(k, 0), b.get(k, 0)) for k in set(a) | set(b)}


def allocator_retry_warning(stage: str, retries: int) -> str:
    """What a stage that ran at the GPU's memory limit tells the user."""
    from planner.constants import DEFAULT_VRAM_RESERVE, GIB

    return (f"the {stage} ran at the GPU memory limit: the CUDA allocator freed its cache and retried {retries} "
            f"time{'s' if retries != 1 else ''} (each waits for the whole GPU, which slows the run); leaving more room "
            f"(--vram-reserve above the default {DEFAULT_VRAM_RESERVE / GIB:.1f} GiB, or a smaller --vram-cap) may make it faster")


class _Stage:
    """Context manager: StageStarted/StageFinished with measured peaks; for a two-expert model's denoise
    stage also one peak window per phase (`phase(name, step)` at each expert switch), kept as
    peaks["denoise:high"] / peaks["denoise:low"]."""

    def __init__(self, name: str, sink: EventSink, clock: Clock, sampler: MemorySampler, peaks: dict):
        self.name, self.sink, self.clock, self.sampler, self.peaks = name, sink, clock, sampler, peaks
        self.current: Optional[tuple[str, float]] = None  # (phase key, started)
        self.folded = (0, 0)  # peaks of the finished phases
        self.per_gpu: dict = {}  # GPU -> the stage's peak so far (plans on several GPUs)

    def __enter__(self):
        self.started = time.perf_counter()
        self.retries = allocator_retries()
        self.sampler.start_window()
        self.sink(StageStarted(t=self.clock(), stage=self.name))
        return self

    def _close_phase(self) -> tuple[int, int]:
        vram, ram = self.sampler.window_peaks()
        self.per_gpu = _merge_max(self.per_gpu, self.sampler.vram_peaks())
        if self.current is not None:
            key, started = self.current
            self.peaks[key] = {"vram_bytes": vram, "ram_bytes": ram, "seconds": time.perf_counter() - started}
            if len(self.per_gpu) > 1:
                self.peaks[key]["vram_by_gpu"] = self.sampler.vram_peaks()
        vram, ram = max(vram, self.folded[0]), max(ram, self.folded[1])
        self.folded = (vram, ram)
        return vram, ram

    def entered(self, *_: Any) -> None:
        """The stage's components are in place and what the last stage used has left the GPU (enter_stage leaves
        before it arrives): the peak window restarts here, so the stage's peak is its own and not the instant
        the previous stage's components were still leaving (found on the H200: a TI2V denoise "peak" that was
        the text encoder's). After an out-of-memory fallback the window restarts with the leaner plan."""
        if self.current is None:
            self.sampler.start_window()

    def phase(self, component: str, step: int) -> None:
        """An expert became active at `step` (two-expert models): close the last phase's window, open one (the
        first one too: see `entered`)."""
        phase = PHASE_OF.get(component, component)
        if self.current is not None:
            self._close_phase()
        self.sampler.start_window()
        self.current = (f"{self.name}:{phase}", time.perf_counter())
        self.sink(PhaseStarted(t=self.clock(), stage=self.name, phase=phase, component=component, step=step))

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            vram, ram = self._close_phase()
            seconds = time.perf_counter() - self.started
            self.peaks[self.name] = {"vram_bytes": vram, "ram_bytes": ram, "seconds": seconds}
            by_gpu = ()
            if len(self.per_gpu) > 1:
                self.peaks[self.name]["vram_by_gpu"] = dict(self.per_gpu)
                by_gpu = tuple(sorted(self.per_gpu.items()))
            self.sink(StageFinished(t=self.clock(), stage=self.name, seconds=seconds, peak_vram_bytes=vram, peak_ram_bytes=ram,
                                    peak_vram_by_gpu=by_gpu))
            retries = allocator_retries() - self.retries
            if retries > 0:
                self.peaks[self.name]["alloc_retries"] = retries
                self.sink(LogMessage(t=self.clock(), level="warning", message=allocator_retry_warning(self.name, retries)))
        return False


def _report_compile(loaded: LoadedModel, log: EventSink, clock: Clock) -> None:
    """A denoiser whose compile failed ran eagerly (same result, slower): say so in the run's log."""
    from lowvram.placement.compile import compile_failed

    for name in loaded.denoiser_names:
        cp = loaded.plan.get(name)
        why = compile_failed(getattr(loaded.pipe, name)) if cp is not None and cp.compile else None
        if why:
            log(LogMessage(t=clock(), level="warning",
                           message=f"{name}: compiling its blocks failed ({why}); it ran eagerly. Plan with --no-compile "
                                   "to skip compiling next time."))
def sampled_devices(plan: Plan) -> tuple[str, ...]:
    """The GPUs a one-process plan uses, for the memory sampler (() is the current device: one GPU, or this
    process's GPU in a context-parallel run)."""
    if plan.device != "cuda" or plan.parallel or len(plan.gpus) < 2:
        return ()
    return tuple(f"cuda:{i}" for i in plan.gpus)


def check_plan_runs_here(plan: Plan, job: Job) -> None:
    """A context-parallel plan runs in a group of processes (lowvram generate starts them), without a step cache."""
    from lowvram.errors import UserError
    from lowvram.parallel import group

    if not plan.parallel:
        return
    if job.cache.enabled:
        raise UserError(f"the plan is context parallel on {plan.parallel_gpus} GPUs, which does not run with a step cache "
                        "yet; drop --cache (or plan for one GPU with --gpus 1).")
    if group.world() != plan.parallel_gpus:
        raise UserError(f"the plan is context parallel on {plan.parallel_gpus} processes and this is "
                        f"{'one process' if group.world() == 1 else f'one of {group.world()}'}; run it with "
                        "`lowvram generate` (it starts one process per GPU).")


def generate(
    job: Job,
    plan: Optional[Plan] = None,
    on_event: EventSink = ignore,
    cancel: Optional[threading.Event] = None,
    loaded: Optional[LoadedModel] = None,
    faults: Optional[fault_injection.FaultPlan] = None,
    resume: Optional[ResumeState] = None,
) -> RunResult:
    """Run a whole job. Validates everything before loading; writes video + sidecar atomically.

    On out-of-memory a stage is retried with the next leaner plan (lowvram.sampling.recovery), denoising from
    its last step. Cancelled or out of memory on the leanest plan: the latents are kept on disk and
    `resume` (lowvram.sampling.resume.load_resume_file) finishes the run later, without encoding again.
    `faults` injects OOMs for tests (lowvram.sampling.faults).
    """
    from lowvram.io.output import WriteFailed, reserve_output
    from lowvram.io.sidecar import build_sidecar, latents_record
    from lowvram.models.task import check_inputs_before_load
    from lowvram.parallel import group

    ref = check_inputs_before_load(job, resumed=resume is not None)
    ref = loaded.ref if loaded is not None else ref
    names = loaded_components(loaded) if loaded is not None else model_components(ref)
    # LoRAs checked against the model from their headers before anything loads (settings as given: no presets)
    from lowvram.loras.resolve import PRESET_FIELDS, resolve_job_loras

    job = resolve_job_loras(job, given=PRESET_FIELDS + ("guidance_2",), cache_given=True)
    plan = fit_to(plan or (loaded.plan if loaded is not None else placeholder_plan(names)), names)
    plan = with_loras(plan, job.loras)  # a forced or test plan without LoRA modes carries them as adapters
    if loaded is not None and _lora_identity(loaded.loras) != _lora_identity(job.loras):
        raise ValueError("the loaded model carries other LoRAs than the job's: load the model again for this LoRA set")
    check_plan_runs_here(plan, job)
    writer = group.is_writer()  # one process of a context-parallel run decodes, writes and keeps the latents
    # held until the end: concurrent runs get other names (only the writer names a file)
    output = reserve_output(job.out, job.prompt, job.seed) if writer else None
    video_path = output.video if output is not None else None
    log = EventLog(forward=on_event)
    clock = Clock()
    noted = output.note if output is not None else ""
    if noted:
        log(LogMessage(t=clock(), level="warning", message=noted))
    peaks: dict = {}
    rec = Recovery(plan, log, clock, ladder=not plan.parallel)
    sampler = MemorySampler(log, clock=clock, devices=sampled_devices(plan))
    with sampler, fault_injection.installed(fault_injection.resolve(faults)):
        try:
            if loaded is None:
                with _Stage("load", log, clock, sampler, peaks), group.first_then_others() if plan.parallel else contextlib.nullcontext():
                    loaded = rec.run("load", lambda p: load_model(ref, p, job.loras))
            rec.pipe = loaded.pipe
            if placement_differs(loaded.plan, plan):  # a loaded model (TUI) given another plan, or after a fallback
                placement.reapply(loaded.pipe, loaded.plan, plan, job.loras)
                loaded.plan = plan
            if resume is None:
                check_task(job, loaded.task, ref.name)  # known before loading unless the model was not on disk
            log(
                RunStarted(
                    t=clock(),
                    model=ref.name,
                    task=loaded.task,
                    prompt=job.prompt,
                    plan_summary=plan.summary(),
                    total_steps=job.steps,
                )
            )
            if ref.is_demo:
                from lowvram.models.demo import DEMO_LABEL

                log(LogMessage(t=clock(), level="warning", message=f"model: {DEMO_LABEL}"))
            _check_cancel(cancel, plan)
            if resume is None:
                with _Stage("encode", log, clock, sampler, peaks):
                    cond = rec.run("encode", lambda p: encode(loaded, job, p), image=job.image is not None)
            else:
                cond, rec.checkpoint = _resumed_conditioning(resume), resume.checkpoint
            rec.cond = vars(cond)
            _check_cancel(cancel, plan)
            step_seconds: list[float] = []

            with _Stage("denoise", log, clock, sampler, peaks) as stage:

                def denoise_from_checkpoint(p: Plan) -> Any:
                    out, seconds = denoise(loaded, job, p, cond, log, clock, cancel, rec.checkpoint, rec.keep,
                                           on_phase=stage.phase if loaded.two_experts else stage.entered)
                    step_seconds.extend(seconds)
                    return out

                # the loop enters each expert's phase itself (the other expert leaves the GPU first)
                latents = rec.run("denoise", denoise_from_checkpoint, enter=False)
            _report_compile(loaded, log, clock)
            _check_cancel(cancel, plan)
            extra = {}
            if plan.parallel:
                extra["processes"] = [{"rank": r, "stages": p} for r, p in enumerate(group.gather(peaks))]
                if not writer:  # the others are done: the writer decodes and writes
                    return RunResult(None, None, clock(), plan, log.events, step_seconds, peaks, latents.detach().cpu(), loaded)
            watch = DecodeWatch(log, clock, cancel)  # a cancel stops the decode between frames; a finished decode is written
            with _Stage("decode", log, clock, sampler, peaks) as stage:

                def decode_entered(p: Plan) -> Any:
                    stage.entered()
                    return decode(loaded, p, latents, watch)

                frames = rec.run("decode", decode_entered)
            plan = loaded.plan = rec.plan  # after a fallback the pipeline is placed per the leaner plan
            with _Stage("write", log, clock, sampler, peaks):
                staged = output.stage_video(frames, job.fps)

            def sidecar(video: Path, side: Path) -> dict:  # for the final names, the run's end included
                now = clock()
                done = RunFinished(t=now, video_path=str(video), sidecar_path=str(side), seconds=now)
                return build_sidecar(job, loaded, plan, log.events + [done], step_seconds, peaks, done.t,
                                     {**extra, "latents": latents_record(latents)})

            video_path, side = output.publish(staged, sidecar)  # video and sidecar appear together
            total = clock()
            if output.note != noted:  # a file appeared at the name during the run: published under the next one
                log(LogMessage(t=total, level="warning", message=output.note))
            log(RunFinished(t=total, video_path=str(video_path), sidecar_path=str(side), seconds=total))
            return RunResult(video_path, side, total, plan, log.events, step_seconds, peaks, latents.detach().cpu(), loaded)
        except WriteFailed as exc:  # the denoising is done: keep it, say how to finish with --resume
            kept = rec.save(job, video_path, "write failed")
            log(RunFailed(t=clock(), stage="write", message=exc.summary, latents_path=str(kept or "")))
            raise exc.with_latents(kept) from None
        except (CancelledError, KeyboardInterrupt):  # KeyboardInterrupt: a second Ctrl-C or SIGTERM, abort now
            stages = log.of(StageStarted)
            kept = rec.save(job, video_path, "cancelled") if writer else None
            step = rec.checkpoint.step if rec.checkpoint is not None else -1
            log(RunCancelled(t=clock(), stage=stages[-1].stage if stages else "", step=step, latents_path=str(kept or "")))
            raise
        except OutOfMemoryExhausted as exc:
            kept = rec.save(job, video_path, "out of memory") if writer else None
            failed = exc.with_latents(kept)
            what = "even with the leanest plan" if rec.ladder else f"with context parallel on {plan.parallel_gpus} GPUs"
            log(RunFailed(t=clock(), stage=exc.stage, message=f"out of memory {what} ({exc.detail})", latents_path=str(kept or "")))
            raise failed from None
        finally:
            if output is not None:
                output.release()
            if loaded is not None:
                placement.leave_all(loaded.pipe)
