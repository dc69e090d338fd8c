"""TeaCache for one denoising run of the runner: schedule, hooks, telemetry, and cleanup.

`teacache_run(...)` is a context manager: on entry it builds the schedule (before the first step),
applies fresh hooks, and announces the schedule; `step_done(i)` turns the
step's transformer calls into TransformerCall events after the runner's per-step synchronize; on
exit, normal or not (cancel, OOM), it resets the state and removes the hooks, so a loaded model is
left as it was found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from lowvram.caching.teacache.coefficients import choose_coefficients
from lowvram.caching.teacache.hook import (
    TeaCacheConfig,
    TeaCacheHook,
    apply_teacache,
    get_teacache,
    remove_teacache,
)
from lowvram.caching.teacache.schedule import (
    SkipSchedule,
    TimeEmbedderWeights,
    build_schedule,
)
from lowvram.errors import UserError
from lowvram.placement.quanto_offload import group_tensors
from lowvram.placement.transfer_meter import TransferMeter, offload_groups
from lowvram.telemetry import EventSink, LogMessage, TeaCacheScheduled, TransformerCall


def schedule_for_run(
    transformer, setting, transformer_config: dict, model_name: str, timesteps, branches, folder: Optional[Path] = None
) -> SkipSchedule:
    """The schedule for a loaded transformer and the exact timesteps the sampling loop will use."""
    choice = choose_coefficients(transformer_config, model_name, setting.coefficients)
    return build_schedule(setting, choice, time_weights(transformer, folder, setting.retention), timesteps, branches)


def time_weights(transformer, folder: Optional[Path], retention: bool) -> TimeEmbedderWeights:
    """The time-path weights from the model, or from the checkpoint when the model only holds placeholders:
    disk offloading replaces offloaded tensors with empty ones until their group is onloaded."""
    weight = transformer.condition_embedder.time_embedder.linear_1.weight
    for group, _ in offload_groups(transformer):
        if getattr(group, "offload_to_disk_path", None) and any(t is weight for t in group_tensors(group)):
            if folder is None:
                raise UserError("TeaCache with disk offloading needs the checkpoint folder to read the time-embedding weights.")
            return TimeEmbedderWeights.from_checkpoint(folder, transformer.config.freq_dim, retention)
    return TimeEmbedderWeights.from_transformer(transformer)


class TeaCacheRun:
    def __init__(
        self,
        transformer: Any,
        schedule: Optional[SkipSchedule],
        branches: Sequence[str],
        sink: EventSink,
        clock: Callable[[], float],
    ) -> None:
        self.transformer = transformer
        self.schedule = schedule
        self.branches = tuple(branches)
        self.sink = sink
        self.clock = clock
        self.hook: Optional[TeaCacheHook] = None
        self.meter: Optional[TransferMeter] = None

    def __enter__(self) -> "TeaCacheRun":
        if self.schedule is None:
            return self
        if get_teacache(self.transformer) is not None:
            remove_teacache(self.transformer)  # left by an earlier caller: this run's schedule wins
        try:
            self.hook = apply_teacache(self.transformer, TeaCacheConfig(self.schedule))  # fresh state
            self.meter = TransferMeter(self.transformer).__enter__()
            self.hook.meter = self.meter
        except BaseException:
            self._cleanup()
            raise
        s = self.schedule
        self.sink(
            TeaCacheScheduled(
                t=self.clock(),
                summary=s.summary(),
                threshold=s.threshold,
                retention=s.retention,
                coefficients=s.coefficients,
                computed_steps=s.computed_steps,
                total_steps=s.total_steps,
                predicted_speedup=s.predicted_speedup,
                step_computed=s.step_computed,
                note=s.note,
            )
        )
        self.sink(LogMessage(t=self.clock(), level="info", message=s.summary()))
        return self

    def step_done(self, step: int) -> tuple[int, int]:
        """Emit the step's TransformerCall events; return (computed_calls, skipped_calls)."""
        if self.hook is None:
            return len(self.branches), 0
        computed = skipped = 0
        for rec in self.hook.drain():
            d = rec.decision
            computed += rec.computed
            skipped += not rec.computed
            self.sink(
                TransformerCall(
                    t=self.clock(),
                    step=d.step,
                    branch=d.branch,
                    timestep=d.timestep,
                    rel_l1=d.rel_l1,
                    rescaled=d.rescaled,
                    accumulated=d.accumulated,
                    computed=rec.computed,
                    seconds=rec.seconds,
                    bytes_moved=rec.moved.total,
                    block_bytes_moved=rec.moved.blocks,
                )
            )
        return computed, skipped

    def _cleanup(self) -> None:
        if self.meter is not None:
            self.meter.__exit__(None, None, None)
            self.meter = None
        remove_teacache(self.transformer)  # resets the state first
        self.hook = None

    def __exit__(self, *exc) -> bool:
        if self.schedule is not None:
            self._cleanup()
        return False


def teacache_run(loaded: Any, job: Any, timesteps: Any, sink: EventSink, clock: Callable[[], float]) -> TeaCacheRun:
    """The TeaCache session for the runner's denoise(): a no-op when the job has TeaCache off."""
    from lowvram.caching.teacache.schedule import branches_for

    transformer = loaded.pipe.transformer
    branches = branches_for(job.guidance)
    schedule = None
    if job.teacache.enabled:
        name = f"{loaded.ref.name} {loaded.ref.location}"
        schedule = schedule_for_run(
            transformer, job.teacache, loaded.info.transformer_config, name, timesteps, branches, Path(loaded.info.location)
        )
    return TeaCacheRun(transformer, schedule, branches, sink, clock)
