"""The cache for one denoising run of the runner: hooks per denoiser component, telemetry, calibration, cleanup.

    with cache_session(loaded, job, timesteps, on_event, clock) as cache:   # plan fixed here, announced
        for i, t in enumerate(timesteps):
            model = cache.attach(name, module)   # the active denoiser ("transformer" or "transformer_2")
            ... model(...) inside model.cache_context("cond"/"uncond", step_index=i) ...
            calls = cache.step_done(i)           # TransformerCall events, and the counts for StepFinished

`attach` applies that component's schedule (its steps of the run) to the module on first use and
returns the module; on exit, normal or not (cancel, OOM), every hook is removed and every state
reset, so a loaded model is left as it was found. A calibration run saves the model's magnitude
ratios at a normal end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from lowvram.caching.plan import CachePlan, plan_for_run
from lowvram.caching.schedule import branches_for
from lowvram.telemetry import CacheScheduled, EventSink, LogMessage, TransformerCall


@dataclass(frozen=True)
class StepCalls:
    """A finished step's transformer calls, and what the schedule says is left (for the ETA)."""

    computed: int
    skipped: int
    remaining_calls: int
    remaining_computed_calls: int


class CacheSession:
    def __init__(self, plan: Optional[CachePlan], steps: int, branches: Sequence[str], sink: EventSink,
                 clock: Callable[[], float], model_name: str = "", size: tuple[int, int] = (0, 0)) -> None:
        self.plan = plan
        self.steps = steps
        self.branches = tuple(branches)
        self.sink = sink
        self.clock = clock
        self.model_name = model_name
        self.size = size  # the job's width and height, recorded with a calibration
        self._attached: dict[str, tuple[Any, Any, Any]] = {}  # component -> (module, hook, meter)
        self.calibrator = None

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> "CacheSession":
        if self.plan is None:
            return self
        if self.plan.calibrate:
            from lowvram.caching.magcache.calibrate import Calibrator

            self.calibrator = Calibrator(self.plan.branches)
        for s in self.plan.schedules:
            self.sink(
                CacheScheduled(
                    t=self.clock(),
                    method=s.method,
                    component=s.component,
                    summary=self.plan.summary(),
                    threshold=s.threshold,
                    first_step=s.first_step,
                    total_steps=s.total_steps,
                    run_steps=s.run_steps,
                    branches=s.branches,
                    computed=tuple(c.computed for c in s.calls),
                    computed_calls=s.computed_calls,
                    total_calls=s.total_calls,
                    predicted_speedup=s.predicted_speedup,
                    params={k: v for k, v in s.params.items() if v is not None},
                    note=s.note,
                )
            )
        for line in self.plan.lines():
            self.sink(LogMessage(t=self.clock(), level="info", message=line.strip()))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._detach_all()
        finally:
            if self.calibrator is not None:
                if exc_type is None:
                    self._save_calibration()
                self.calibrator.close()
        return False

    # -- what the runner calls ---------------------------------------------------------------------

    def attach(self, component: str, module: Any) -> Any:
        """The module with its component's schedule applied (once; later calls return it as it is)."""
        if self.plan is None:
            return module
        held = self._attached.get(component)
        if held is not None and held[0] is module:
            return module
        schedule = self.plan.component(component)
        if schedule is None:
            raise RuntimeError(f"the cache plan has no steps for {component}; it covers {', '.join(self.plan.components)}")
        from lowvram.caching.hook import (
            CacheConfig,
            apply_cache,
            get_cache,
            remove_cache,
        )
        from lowvram.placement.transfer_meter import TransferMeter

        if held is not None:  # the runner swapped the module (reloaded): the old one is left clean
            self._detach(component)
        if get_cache(module) is not None:
            remove_cache(module)  # left by an earlier caller: this run's schedule wins
        hook = meter = None
        try:
            hook = apply_cache(module, CacheConfig(schedule, on_residual=self.calibrator))  # fresh state
            meter = TransferMeter(module).__enter__()
            hook.meter = meter
        except BaseException:
            if meter is not None:
                meter.__exit__(None, None, None)
            remove_cache(module)
            raise
        self._attached[component] = (module, hook, meter)
        return module

    def step_done(self, step: int) -> StepCalls:
        """Emit the step's TransformerCall events; the counts for StepFinished (after the step's synchronize)."""
        if self.plan is None:
            left = (self.steps - step - 1) * len(self.branches)
            return StepCalls(len(self.branches), 0, left, left)
        computed = skipped = 0
        for component, (_module, hook, _meter) in self._attached.items():
            for rec in hook.drain():
                d = rec.decision
                computed += rec.computed
                skipped += not rec.computed
                self.sink(
                    TransformerCall(
                        t=self.clock(),
                        component=component,
                        step=d.step,
                        branch=d.branch,
                        timestep=d.timestep,
                        rel_l1=d.rel_l1,
                        rescaled=d.rescaled,
                        accumulated=d.accumulated,
                        ratio=d.ratio,
                        accumulated_ratio=d.accumulated_ratio,
                        skips=d.skips,
                        computed=rec.computed,
                        seconds=rec.seconds,
                        bytes_moved=rec.moved.total,
                        block_bytes_moved=rec.moved.blocks,
                    )
                )
        left, left_computed = self.plan.remaining(step)
        return StepCalls(computed, skipped, left, left_computed)

    # -- internals ----------------------------------------------------------------------------------

    def _detach(self, component: str) -> None:
        from lowvram.caching.hook import remove_cache

        module, _hook, meter = self._attached.pop(component)
        try:
            if meter is not None:
                meter.__exit__(None, None, None)
        finally:
            remove_cache(module)  # resets the state first

    def _detach_all(self) -> None:
        errors = []
        for component in list(self._attached):
            try:
                self._detach(component)
            except Exception as exc:  # keep cleaning the others
                errors.append(exc)
        if errors:
            raise errors[0]

    def _save_calibration(self) -> None:
        from lowvram.caching.identity import resolution_of
        from lowvram.caching.magcache.calibrate import save_calibrated

        plan = self.plan
        if not self.calibrator.complete(plan.total_steps):
            self.sink(LogMessage(t=self.clock(), level="warning", message=(
                "MagCache calibration not saved: the run did not compute every step in one go (it resumed part-way); "
                "run the calibration again")))
            return
        split = plan.schedules[1].first_step if len(plan.schedules) > 1 else None
        first = plan.schedules[0]
        resolution = resolution_of(*self.size) if all(self.size) else ""
        path = save_calibrated(plan.identity.key, plan.identity.label, self.model_name, self.calibrator.ratios(),
                               plan.total_steps, len(first.branches), split, resolution)
        self.sink(LogMessage(t=self.clock(), level="info", message=(
            f"MagCache ratios of {plan.identity.label} calibrated over {plan.total_steps} steps and saved to {path}; "
            "later runs with --cache magcache use them")))


def cache_session(loaded: Any, job: Any, timesteps: Any, sink: EventSink, clock: Callable[[], float]) -> CacheSession:
    """The cache session of the runner's denoise(): a no-op when the job asks for no cache."""
    plan = plan_for_run(loaded, job, timesteps)
    return CacheSession(plan, len(timesteps), branches_for(job.guidance), sink, clock, job.model, (job.width, job.height))
