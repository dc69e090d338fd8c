"""Fault injection for tests: raise a real `torch.OutOfMemoryError` at a chosen stage and step.

A `FaultPlan` is frozen data ("denoise:3,decode"); each of its entries fires once per run, so the
retry after a fallback succeeds (repeat an entry to make it fire again). Install one with
`generate(..., faults=FaultPlan.parse("denoise:3"))`, with `with inject_oom("decode"):` (any thread,
for the TUI), or from the environment: LOWVRAM_INJECT_OOM="denoise:3" (CLI tests).
The runner calls `check(stage, step)` at the start of each stage attempt and of each denoising step.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Iterator, Optional, Union

from lowvram.errors import UserError

ENV_VAR = "LOWVRAM_INJECT_OOM"
STAGES = ("load", "encode", "denoise", "decode")


@dataclass(frozen=True)
class OomAt:
    """Raise at the start of `stage`; for denoise, at the start of step `step` (0-based; None: the first step run)."""

    stage: str
    step: Optional[int] = None

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise UserError(f"fault injection: unknown stage {self.stage!r}; use one of {', '.join(STAGES)} (e.g. denoise:3)")
        if self.step is not None and (self.stage != "denoise" or self.step < 0):
            raise UserError(f"fault injection: a step ({self.step}) is only valid as denoise:K with K >= 0")

    def __str__(self) -> str:
        return self.stage if self.step is None else f"{self.stage}:{self.step}"


@dataclass(frozen=True)
class FaultPlan:
    ooms: tuple[OomAt, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "FaultPlan":
        """'denoise:3,decode' -> two entries. Raises UserError on anything else."""
        ooms = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            stage, _, step = part.partition(":")
            if step and not step.strip().isdigit():
                raise UserError(f"fault injection: {part!r}: the step must be a number, as in denoise:3")
            ooms.append(OomAt(stage.strip(), int(step) if step else None))
        return cls(tuple(ooms))

    def __str__(self) -> str:
        return ",".join(str(o) for o in self.ooms)


class Injector:
    """One run's firing state: which entries of the plan have fired."""

    def __init__(self, plan: FaultPlan):
        self.plan = plan
        self._fired: set[int] = set()
        self._lock = threading.Lock()

    def check(self, stage: str, step: Optional[int] = None) -> None:
        import torch

        with self._lock:
            for i, oom in enumerate(self.plan.ooms):
                if i in self._fired or oom.stage != stage:
                    continue
                if oom.step is not None and oom.step != step:
                    continue
                self._fired.add(i)
                where = stage if step is None else f"{stage} step {step}"
                raise torch.OutOfMemoryError(f"CUDA out of memory (injected by lowvram.sampling.faults at {where}).")


_default: Optional[FaultPlan] = None  # set by inject_oom(): seen by every thread
_current = threading.local()  # the injector of the run executing in this thread


@contextlib.contextmanager
def inject_oom(plan: Union[FaultPlan, str]) -> Iterator[FaultPlan]:
    """Every generate() started inside the block (in any thread) runs with this fault plan."""
    global _default
    plan = FaultPlan.parse(plan) if isinstance(plan, str) else plan
    previous, _default = _default, plan
    try:
        yield plan
    finally:
        _default = previous


def resolve(explicit: Optional[FaultPlan] = None) -> Optional[FaultPlan]:
    """The fault plan of a new run: the argument, else inject_oom()'s, else $LOWVRAM_INJECT_OOM."""
    if explicit is not None:
        return explicit
    if _default is not None:
        return _default
    text = os.environ.get(ENV_VAR, "").strip()
    return FaultPlan.parse(text) if text else None


@contextlib.contextmanager
def installed(plan: Optional[FaultPlan]) -> Iterator[Optional[Injector]]:
    """Make `plan` the active injector of this thread for one run."""
    injector = Injector(plan) if plan is not None and plan.ooms else None
    previous = getattr(_current, "injector", None)
    _current.injector = injector
    try:
        yield injector
    finally:
        _current.injector = previous


def check(stage: str, step: Optional[int] = None) -> None:
    """Called by the runner; raises the injected OOM when the active plan says so. No-op otherwise."""
    injector = getattr(_current, "injector", None)
    if injector is not None:
        injector.check(stage, step)
