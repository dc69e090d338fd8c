"""OOM fallback with resume: run a stage; on `torch.OutOfMemoryError` free what it held, switch to the
next leaner plan (planner.fallback), say so (PlanSwitched) and run it again from where it stopped.

Denoising resumes from the last completed step: the runner reports a checkpoint (latents + the
scheduler's multistep history, on the CPU) after every step, and the retry starts from it.
When the leanest plan runs out of memory too, `OutOfMemoryExhausted` (exit code 3) ends the run;
the runner then keeps the latents on disk for `lowvram generate --resume FILE`.
"""

from __future__ import annotations

import gc
import shlex
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from lowvram import placement
from lowvram.errors import UserError
from lowvram.sampling import faults
from lowvram.sampling.resume import (
    DenoiseCheckpoint,
    keep_latents,
    make_checkpoint,
)
from lowvram.telemetry import EventSink, LogMessage, PlanSwitched
from planner.fallback import describe_change, leaner_plan
from planner.plan import Plan, config_key

T = TypeVar("T")

# A plan switch can itself run out of memory (re-placing components); give up after this many in a row.
MAX_SWITCHES = 64


class OutOfMemoryExhausted(UserError):
    """Out of memory with the leanest plan. Exit code 3: not a bad input, the machine is short."""

    exit_code = 3

    def __init__(self, stage: str, plan: Plan, detail: str, latents_path: Optional[Path] = None):
        self.stage, self.plan, self.detail, self.latents_path = stage, plan, detail, latents_path
        keep = (
            f" The latents are kept in {latents_path}: free GPU memory (close other programs using it) and finish with "
            f"`lowvram generate --resume {shlex.quote(str(latents_path))}`."
            if latents_path
            else " Free GPU memory (close other programs using it), or lower --width/--height/--frames, and run again."
        )
        super().__init__(f"out of memory during {stage} even with the leanest plan ({plan.summary()}): {detail}.{keep}")

    def with_latents(self, path: Optional[Path]) -> "OutOfMemoryExhausted":
        return OutOfMemoryExhausted(self.stage, self.plan, self.detail, path)


def free_memory(pipe: Any) -> None:
    """Release what a failed stage held: components off the GPU, garbage, the allocator's cache."""
    import torch

    if pipe is not None:
        try:
            placement.leave_all(pipe)
        except torch.OutOfMemoryError:
            pass  # moving to the CPU should not need VRAM; if it does, the gc below still helps
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def placement_differs(a: Plan, b: Plan) -> bool:
    """Whether two plans hold the weights differently (predictions, reasons and source do not count)."""
    return config_key(a) != config_key(b)


# Allocation failures that some kernels raise as a plain RuntimeError (cuBLAS/cuDNN workspaces).
OOM_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


def is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in OOM_MARKERS)


def _oom_detail(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first[:200].rstrip(". ")


class Recovery:
    """One run's fallback state: the current plan, the conditioning, and the last denoising checkpoint."""

    def __init__(self, plan: Plan, sink: EventSink, clock: Callable[[], float], enabled: bool = True, ladder: bool = True):
        self.plan = plan
        self.sink = sink
        self.clock = clock
        self.enabled = enabled
        # False: an OOM ends the run at once (OutOfMemoryExhausted). One process of a context-parallel run cannot
        # switch plans alone; the launcher falls back to one GPU (lowvram.parallel.launch).
        self.ladder = ladder
        self.pipe: Any = None  # set once the pipeline is loaded
        self.cond: Optional[dict] = None  # conditioning tensors, set after encode
        self.checkpoint: Optional[DenoiseCheckpoint] = None
        self.switches: list[PlanSwitched] = []

    @property
    def num_blocks(self) -> Optional[int]:
        transformer = getattr(self.pipe, "transformer", None) or getattr(self.pipe, "transformer_2", None)
        return getattr(getattr(transformer, "config", None), "num_layers", None)

    def run(self, stage: str, attempt: Callable[[Plan], T], enter: bool = True, image: bool = False) -> T:
        """Enter `stage` under the current plan and run `attempt(plan)`; on OOM, lean and retry.
        `enter=False`: the attempt places the components itself (the denoise loop, phase by phase).
        `image`: the encode stage conditions on an image (placement.enter_stage)."""
        while True:
            try:
                if stage != "denoise":  # denoise checks per step, inside the loop
                    faults.check(stage)
                if self.pipe is not None and enter:
                    placement.enter_stage(self.pipe, self.plan, stage, image=image)
                return attempt(self.plan)
            except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
                if not self.enabled or not is_oom(exc):
                    raise
                detail = _oom_detail(exc)
            # Outside the except block: the traceback (and the tensors its frames hold) is gone.
            if not self.ladder:
                raise OutOfMemoryExhausted(stage, self.plan, detail)
            self.fall_back(stage, detail)

    def fall_back(self, stage: str, detail: str) -> Plan:
        """Free memory, pick the next leaner plan, re-place the pipeline, emit PlanSwitched."""
        free_memory(self.pipe)
        for _ in range(MAX_SWITCHES):
            new = leaner_plan(self.plan, stage, self.num_blocks)
            if new is None:
                raise OutOfMemoryExhausted(stage, self.plan, detail)
            event = PlanSwitched(
                t=self.clock(),
                stage=stage,
                reason=f"{detail}; now {describe_change(self.plan, new)}",
                old_summary=self.plan.summary(),
                new_summary=new.summary(),
            )
            old, self.plan = self.plan, new
            self.switches.append(event)
            self.sink(event)
            if self.pipe is None:
                return new
            try:
                placement.reapply(self.pipe, old, new)
                return new
            except RuntimeError as exc:
                if not is_oom(exc):
                    raise
                detail = _oom_detail(exc)
            free_memory(self.pipe)
        raise OutOfMemoryExhausted(stage, self.plan, detail)

    def keep(self, step: int, latents: Any, scheduler: Any) -> None:
        """The runner's per-step callback: `step` steps are done."""
        try:
            self.checkpoint = make_checkpoint(step, latents, scheduler)
        except TypeError as exc:  # a scheduler with state we cannot copy: a retry restarts denoising instead
            if self.checkpoint is not None or step == 1:
                self.sink(LogMessage(t=self.clock(), level="warning", message=f"no resume checkpoints for this sampler: {exc}"))
            self.checkpoint = None

    def save(self, job: Any, video_path: Path, reason: str) -> Optional[Path]:
        """Write the resume file when there is something to resume (encode finished); else None."""
        if self.checkpoint is None or self.cond is None:
            return None
        kept, problems = keep_latents(video_path, job, self.plan, self.cond, self.checkpoint, reason)
        for problem in problems:
            self.sink(LogMessage(t=self.clock(), level="error" if kept is None else "warning", message=problem))
        return kept
