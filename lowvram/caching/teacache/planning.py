"""Previews (planning ahead of a run): the schedule a job will follow, before the run, for `plan`, `generate` and the TUI.

The decisions depend on the timesteps (from the scheduler config) and on the time embedder's learned
weights, so a preview needs those weights but nothing else: `preview_checkpoint` reads the transformer
config, the scheduler config and the handful of time-path tensors from the local safetensors files
(memory-mapped through safe_open; for retention mode that includes time_proj, 6*dim x dim). A hub
model that is not downloaded yet has no preview; its schedule is announced when the run starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lowvram.caching.teacache.coefficients import choose_coefficients
from lowvram.caching.teacache.schedule import (
    SkipSchedule,
    TimeEmbedderWeights,
    branches_for,
    build_schedule,
    scheduler_timesteps,
)
from lowvram.errors import UserError


def preview(
    transformer_config: dict,
    job,
    scheduler,
    weights: TimeEmbedderWeights,
    model_name: Optional[str] = None,
) -> Optional[SkipSchedule]:
    """The schedule a job will follow: None when TeaCache is off for it.
    `scheduler` is a diffusers scheduler or its config dict (a fresh copy sets the timesteps)."""
    setting = job.teacache
    if not setting.enabled:
        return None
    choice = choose_coefficients(transformer_config, model_name or job.model, setting.coefficients)
    return build_schedule(setting, choice, weights, scheduler_timesteps(scheduler, job.steps), branches_for(job.guidance))


def preview_checkpoint(folder: Path, job, model_name: Optional[str] = None) -> Optional[SkipSchedule]:
    """preview() from a checkpoint folder alone: configs plus the time-path tensors, no model load."""
    if not job.teacache.enabled:
        return None
    folder = Path(folder)
    tconf = json.loads((folder / "transformer" / "config.json").read_text())
    sconf = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    weights = TimeEmbedderWeights.from_checkpoint(folder, tconf.get("freq_dim", 256), job.teacache.retention)
    return preview(tconf, job, sconf, weights, model_name or f"{job.model} {folder}")


def schedule_for_transformer(
    transformer,
    scheduler,
    steps: int,
    setting,
    guidance: float = 5.0,
    model_name: Optional[str] = None,
    folder: Optional[Path] = None,
) -> SkipSchedule:
    """The schedule for a loaded transformer and a scheduler: what apply_teacache takes.
    `folder` (the checkpoint) is needed only when the transformer is disk-offloaded."""
    from lowvram.caching.teacache.run import schedule_for_run

    timesteps = scheduler_timesteps(scheduler, steps)
    return schedule_for_run(transformer, setting, dict(transformer.config), model_name, timesteps, branches_for(guidance), folder)


@dataclass(frozen=True)
class Preview:
    schedule: Optional[SkipSchedule]
    message: str  # one line for the user


def _local_folder(ref) -> Optional[Path]:
    """The checkpoint's folder if it is on this machine; never downloads."""
    if ref.is_demo or ref.kind == "local":
        from lowvram.models.loading import checkpoint_folder

        return checkpoint_folder(ref)  # builds the demo, or the folder itself
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref.location, local_files_only=True))
    except Exception:  # not in the local cache (or no huggingface_hub): no preview
        return None


def preview_for_job(job) -> Preview:
    """The TeaCache line for a job before anything loads, or why it is not known yet."""
    from lowvram.models.names import resolve_model

    if not job.teacache.enabled:
        return Preview(None, "TeaCache: off")
    ref = resolve_model(job.model, job.base)
    folder = _local_folder(ref)
    if folder is None:
        return Preview(None, "TeaCache: the schedule is shown when the run starts (the model is not downloaded yet)")
    try:
        schedule = preview_checkpoint(folder, job, f"{ref.name} {ref.location}")
    except UserError as exc:
        return Preview(None, f"TeaCache: no preview ({exc})")
    return Preview(schedule, schedule.summary())
