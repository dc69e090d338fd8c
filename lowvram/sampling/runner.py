"""Run a job: load -> encode -> denoise -> decode -> write, emitting telemetry events.

Each stage is a small function over plain inputs so that the reliability layer can retry or resume
one stage with a leaner plan, and the TUI can run the whole thing in a worker thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from lowvram import placement
from lowvram.errors import CancelledError
from lowvram.job import Job, check_task, validate_job
from lowvram.models.loading import CheckpointInfo, load_pipeline
from lowvram.models.names import ModelRef, resolve_model
from lowvram.sampling import faults as fault_injection
from lowvram.sampling.recovery import OutOfMemoryExhausted, Recovery, placement_differs
from lowvram.sampling.resume import DenoiseCheckpoint, ResumeState, restore_scheduler
from lowvram.telemetry import (
    EventLog,
    EventSink,
    LogMessage,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunStarted,
    StageFinished,
    StageStarted,
    StepFinished,
    ignore,
)
from lowvram.telemetry.memory import MemorySampler
from planner.plan import Plan


def placeholder_plan() -> Plan:
    """Everything on one device: the GPU when there is one. Used until a planner plan is given."""
    import torch

    if torch.cuda.is_available():
        return Plan(device="cuda", dtype="bfloat16", source="placeholder", reasons=("no planner plan given",))
    return Plan(device="cpu", dtype="float32", source="placeholder", reasons=("no GPU: everything on the CPU",))


@dataclass
class LoadedModel:
    ref: ModelRef
    pipe: Any
    info: CheckpointInfo
    plan: Plan

    @property
    def task(self) -> str:
        return self.info.task


@dataclass
class Conditioning:
    """Everything the denoiser needs, produced by the encode stage."""

    prompt_embeds: Any
    negative_embeds: Any
    image_embeds: Any
    latents: Any
    condition: Any  # I2V: first-frame latents and mask, concatenated to the input each step


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


class Clock:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


def _resumed_conditioning(resume: ResumeState) -> "Conditioning":
    c = resume.cond
    return Conditioning(c["prompt_embeds"], c["negative_embeds"], c["image_embeds"], resume.checkpoint.latents, c["condition"])


def _check_cancel(cancel: Optional[threading.Event]) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError("cancelled")


def load_model(ref: ModelRef, plan: Plan) -> LoadedModel:
    # Quantized components come from the quantized cache when present (no bf16 copy is ever built).
    pipe, info = load_pipeline(ref, dtype=plan.dtype, preload=lambda folder: placement.load_cached_components(folder, plan))
    placement.prepare(pipe, plan)
    return LoadedModel(ref=ref, pipe=pipe, info=info, plan=plan)


def encode(loaded: LoadedModel, job: Job, plan: Plan) -> Conditioning:
    import torch

    pipe = loaded.pipe
    device = torch.device(placement.compute_device(plan))
    cfg = job.guidance > 1.0
    with torch.no_grad():
        prompt_embeds, negative_embeds = pipe.encode_prompt(
            prompt=job.prompt,
            negative_prompt=job.negative_prompt if cfg else None,
            do_classifier_free_guidance=cfg,
            num_videos_per_prompt=1,
            max_sequence_length=512,
            device=torch.device(placement.encode_device(plan)),  # the CPU when the text encoder runs there
        )
        tdtype = pipe.transformer.dtype
        prompt_embeds = prompt_embeds.to(device, tdtype)
        if negative_embeds is not None:
            negative_embeds = negative_embeds.to(device, tdtype)
        generator = torch.Generator(device="cpu").manual_seed(job.seed)
        image_embeds = condition = None
        if loaded.task == "i2v":
            from PIL import Image

            with Image.open(Path(job.image).expanduser()) as source:  # closed here, also for multi-frame files
                image = source.convert("RGB")
            if pipe.transformer.config.image_dim is not None:
                image_embeds = pipe.encode_image(image, device).to(tdtype)
            vae_device = torch.device(placement.vae_device(plan))  # denoise() moves the results to `device`
            pixels = pipe.video_processor.preprocess(image, height=job.height, width=job.width).to(vae_device, torch.float32)
            latents, condition = pipe.prepare_latents(
                pixels, 1, pipe.vae.config.z_dim, job.height, job.width, job.frames, torch.float32, vae_device, generator
            )
        else:
            latents = pipe.prepare_latents(
                1, pipe.transformer.config.in_channels, job.height, job.width, job.frames, torch.float32, device, generator
            )
    return Conditioning(prompt_embeds, negative_embeds, image_embeds, latents, condition)


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
) -> tuple[Any, list[float]]:
    """The sampling loop (as diffusers' Wan pipelines run it), one StepFinished event per step.

    `resume` starts at its step with its latents and scheduler history (after an OOM or from a file);
    `on_checkpoint(steps_done, latents, scheduler)` is called after every step.
    """
    import torch

    pipe = loaded.pipe
    transformer = pipe.transformer
    device = torch.device(placement.compute_device(plan))
    scheduler = pipe.scheduler
    scheduler.set_timesteps(job.steps, device=device)
    scheduler.set_begin_index(0)
    timesteps = scheduler.timesteps
    latents = cond.latents.to(device)
    start = 0
    if resume is not None:
        start, latents = resume.step, resume.latents.to(device, copy=True)
        restore_scheduler(scheduler, resume.scheduler, resume.tensors, device)
    condition = cond.condition.to(device) if cond.condition is not None else None
    tdtype = transformer.dtype
    cfg = cond.negative_embeds is not None
    step_seconds: list[float] = []
    from lowvram.caching.session import cache_session

    # Step skipping (off unless the job asks): its schedule is fixed here, before the first step.
    with torch.no_grad(), cache_session(loaded, job, timesteps, on_event, clock) as cache:
        transformer = cache.attach("transformer", transformer)
        for i, t in enumerate(timesteps):
            if i < start:
                continue
            _check_cancel(cancel)
            fault_injection.check("denoise", i)
            started = time.perf_counter()
            model_in = latents if condition is None else torch.cat([latents, condition], dim=1)
            model_in = model_in.to(tdtype)
            timestep = t.expand(latents.shape[0])
            kwargs = dict(hidden_states=model_in, timestep=timestep, attention_kwargs=None, return_dict=False)
            if cond.image_embeds is not None:
                kwargs["encoder_hidden_states_image"] = cond.image_embeds
            with transformer.cache_context("cond", step_index=i):
                noise_pred = transformer(encoder_hidden_states=cond.prompt_embeds, **kwargs)[0]
            if cfg:
                with transformer.cache_context("uncond", step_index=i):
                    noise_uncond = transformer(encoder_hidden_states=cond.negative_embeds, **kwargs)[0]
                noise_pred = noise_uncond + job.guidance * (noise_pred - noise_uncond)
            latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            if on_checkpoint is not None:
                on_checkpoint(i + 1, latents, scheduler)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - started
            step_seconds.append(elapsed)
            remaining = len(timesteps) - i - 1
            mean = sum(step_seconds) / len(step_seconds)
            calls = cache.step_done(i)
            on_event(
                StepFinished(
                    t=clock(),
                    step=i,
                    total=len(timesteps),
                    seconds=elapsed,
                    eta_seconds=mean * remaining,
                    computed_calls=calls.computed,
                    skipped_calls=calls.skipped,
                    remaining_calls=calls.remaining_calls,
                    remaining_computed_calls=calls.remaining_computed_calls,
                )
            )
    return latents, step_seconds


def decode(loaded: LoadedModel, plan: Plan, latents: Any):
    """Latents -> frames as a float array (frames, H, W, 3) in [0, 1]."""
    import torch

    pipe = loaded.pipe
    vae = pipe.vae
    vae_device = next(vae.parameters()).device
    with torch.no_grad():
        z = latents.to(vae_device, dtype=vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(z)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(z)
        z = z / inv_std + mean
        video = vae.decode(z, return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video, output_type="np")
    return frames[0]


class _Stage:
    """Context manager: StageStarted/StageFinished with measured peaks."""

    def __init__(self, name: str, sink: EventSink, clock: Clock, sampler: MemorySampler, peaks: dict):
        self.name, self.sink, self.clock, self.sampler, self.peaks = name, sink, clock, sampler, peaks

    def __enter__(self):
        self.started = time.perf_counter()
        self.sampler.start_window()
        self.sink(StageStarted(t=self.clock(), stage=self.name))
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            vram, ram = self.sampler.window_peaks()
            seconds = time.perf_counter() - self.started
            self.peaks[self.name] = {"vram_bytes": vram, "ram_bytes": ram, "seconds": seconds}
            self.sink(StageFinished(t=self.clock(), stage=self.name, seconds=seconds, peak_vram_bytes=vram, peak_ram_bytes=ram))
        return False


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
    from lowvram.io.output import choose_output, sidecar_path, write_video_atomic
    from lowvram.io.sidecar import build_sidecar, write_sidecar

    validate_job(job)
    ref = loaded.ref if loaded is not None else resolve_model(job.model)
    plan = plan or (loaded.plan if loaded is not None else placeholder_plan())
    video_path, note = choose_output(job.out, job.prompt, job.seed)
    log = EventLog(forward=on_event)
    clock = Clock()
    if note:
        log(LogMessage(t=clock(), level="warning", message=note))
    peaks: dict = {}
    rec = Recovery(plan, log, clock)
    with MemorySampler(log, clock=clock) as sampler, fault_injection.installed(fault_injection.resolve(faults)):
        try:
            if loaded is None:
                with _Stage("load", log, clock, sampler, peaks):
                    loaded = rec.run("load", lambda p: load_model(ref, p))
            rec.pipe = loaded.pipe
            if placement_differs(loaded.plan, plan):  # a loaded model (TUI) given another plan, or after a fallback
                placement.reapply(loaded.pipe, loaded.plan, plan)
                loaded.plan = plan
            check_task(job, loaded.task, ref.name)
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
            _check_cancel(cancel)
            if resume is None:
                with _Stage("encode", log, clock, sampler, peaks):
                    cond = rec.run("encode", lambda p: encode(loaded, job, p))
            else:
                cond, rec.checkpoint = _resumed_conditioning(resume), resume.checkpoint
            rec.cond = vars(cond)
            _check_cancel(cancel)
            step_seconds: list[float] = []

            def denoise_from_checkpoint(p: Plan) -> Any:
                out, seconds = denoise(loaded, job, p, cond, log, clock, cancel, rec.checkpoint, rec.keep)
                step_seconds.extend(seconds)
                return out

            with _Stage("denoise", log, clock, sampler, peaks):
                latents = rec.run("denoise", denoise_from_checkpoint)
            _check_cancel(cancel)
            with _Stage("decode", log, clock, sampler, peaks):
                frames = rec.run("decode", lambda p: decode(loaded, p, latents))
            plan = loaded.plan = rec.plan  # after a fallback the pipeline is placed per the leaner plan
            _check_cancel(cancel)  # a cancel asked for during decode: keep the latents, write no video
            with _Stage("write", log, clock, sampler, peaks):
                write_video_atomic(frames, video_path, job.fps)
            side = sidecar_path(video_path)
            total = clock()
            log(RunFinished(t=total, video_path=str(video_path), sidecar_path=str(side), seconds=total))
            data = build_sidecar(job, loaded, plan, log.events, step_seconds, peaks, total)
            write_sidecar(data, side)
            return RunResult(video_path, side, total, plan, log.events, step_seconds, peaks, latents.detach().cpu())
        except (CancelledError, KeyboardInterrupt):  # KeyboardInterrupt: a second Ctrl-C or SIGTERM, abort now
            stages = log.of(StageStarted)
            kept = rec.save(job, video_path, "cancelled")
            step = rec.checkpoint.step if rec.checkpoint is not None else -1
            log(RunCancelled(t=clock(), stage=stages[-1].stage if stages else "", step=step, latents_path=str(kept or "")))
            raise
        except OutOfMemoryExhausted as exc:
            kept = rec.save(job, video_path, "out of memory")
            failed = exc.with_latents(kept)
            log(RunFailed(t=clock(), stage=exc.stage, message=f"out of memory even with the leanest plan ({exc.detail})", latents_path=str(kept or "")))
            raise failed from None
        finally:
            if loaded is not None:
                placement.leave_all(loaded.pipe)
