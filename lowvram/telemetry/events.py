"""Telemetry events: frozen dataclasses the runtime emits to one callback.

The runtime never imports a UI. The CLI prints these, the TUI turns them into messages, and the
sidecar stores them. Every event carries `t`, seconds since the run started.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class Event:
    t: float = 0.0

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        out = {"event": self.kind}
        out.update(dataclasses.asdict(self))
        return out


@dataclass(frozen=True)
class RunStarted(Event):
    model: str = ""
    task: str = ""
    prompt: str = ""
    plan_summary: str = ""
    total_steps: int = 0


@dataclass(frozen=True)
class StageStarted(Event):
    stage: str = ""  # load, encode, denoise, decode, write


@dataclass(frozen=True)
class StageFinished(Event):
    stage: str = ""
    seconds: float = 0.0
    peak_vram_bytes: int = 0  # the fullest GPU's
    peak_ram_bytes: int = 0
    peak_vram_by_gpu: tuple = ()  # (("cuda:0", bytes), ("cuda:1", bytes)) when the run uses several GPUs


@dataclass(frozen=True)
class StepFinished(Event):
    step: int = 0  # 0-based index of the finished denoising step
    total: int = 0
    seconds: float = 0.0
    eta_seconds: float = 0.0
    computed_calls: int = 0  # transformer calls of this step that ran the blocks
    skipped_calls: int = 0  # transformer calls of this step served from the step cache
    remaining_calls: int = 0  # transformer calls still to come in the run
    remaining_computed_calls: int = 0  # of which the cache's schedule computes (all of them without a cache)
    expert: str = ""  # two-expert models: the denoiser that ran this step (transformer / transformer_2)


@dataclass(frozen=True)
class PhaseStarted(Event):
    """A two-expert model's expert became active (the other one has left the GPU)."""

    stage: str = "denoise"
    phase: str = ""  # "high" / "low"
    component: str = ""  # "transformer" / "transformer_2"
    step: int = 0  # the first step it runs


@dataclass(frozen=True)
class DecodeProgress(Event):
    """The VAE decoded one more chunk: a latent frame (of one tile, when tiled)."""

    done: int = 0
    total: int = 0
    seconds: float = 0.0  # since the decode started
    eta_seconds: float = 0.0


@dataclass(frozen=True)
class TransformerCall(Event):
    """One transformer forward under a step cache (a step has one per guidance branch), with the numbers
    behind its decision: TeaCache's rel_l1 / rescaled / accumulated change, or MagCache's ratio /
    accumulated ratio / accumulated error (`accumulated`) / consecutive skips."""

    component: str = "transformer"
    step: int = 0
    branch: str = "cond"
    timestep: float = 0.0
    rel_l1: Optional[float] = None
    rescaled: Optional[float] = None
    accumulated: Optional[float] = None
    ratio: Optional[float] = None
    accumulated_ratio: Optional[float] = None
    skips: Optional[int] = None
    computed: bool = True
    seconds: float = 0.0
    bytes_moved: int = 0  # bytes group offloading onloaded during the call
    block_bytes_moved: int = 0  # of which transformer-block weights (0 on a skipped call)


@dataclass(frozen=True)
class CacheScheduled(Event):
    """A denoiser component's skip schedule for the run, known before the first step (one event per
    component: a two-expert model has two, each covering its own steps)."""

    method: str = ""  # teacache, magcache, calibrate
    component: str = "transformer"
    summary: str = ""  # the whole run's: "MagCache: computes 61 of 100 transformer calls ..."
    threshold: float = 0.0
    first_step: int = 0
    total_steps: int = 0  # steps of this component
    run_steps: int = 0
    branches: tuple[str, ...] = ("cond", "uncond")
    computed: tuple[bool, ...] = ()  # per call, step by step, branches in order
    computed_calls: int = 0
    total_calls: int = 0
    predicted_speedup: float = 1.0
    params: dict = field(default_factory=dict)  # coefficients and retention, or K, retention ratio and the ratios' source
    note: str = ""

    def decisions(self) -> list[tuple[int, str, bool]]:
        """(step, branch, computed) of every call this component makes."""
        nb = len(self.branches)
        return [(self.first_step + i // nb, self.branches[i % nb], c) for i, c in enumerate(self.computed)]


@dataclass(frozen=True)
class MemorySample(Event):
    vram_allocated: int = 0
    vram_reserved: int = 0
    vram_free: int = 0
    vram_total: int = 0
    ram_used: int = 0  # this process's RAM that cannot be dropped (resident set minus memory-mapped file pages)
    ram_available: int = 0
    ram_mapped: int = 0  # memory-mapped file pages (weights in the page cache: the kernel can drop them)
    device: str = ""  # the GPU of the vram_* fields ("cuda:1"); "" for the process's only (current) GPU


@dataclass(frozen=True)
class PlanSwitched(Event):
    stage: str = ""
    reason: str = ""
    old_summary: str = ""
    new_summary: str = ""


@dataclass(frozen=True)
class LogMessage(Event):
    level: str = "info"
    message: str = ""


@dataclass(frozen=True)
class RunFinished(Event):
    video_path: str = ""
    sidecar_path: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class RunCancelled(Event):
    stage: str = ""
    step: int = -1
    latents_path: str = ""


@dataclass(frozen=True)
class RunFailed(Event):
    stage: str = ""
    message: str = ""
    latents_path: str = ""


EventSink = Callable[[Event], None]


def ignore(_event: Event) -> None:
    """An event sink that drops everything."""


@dataclass
class EventLog:
    """Collects events; also forwards them to another sink. Used for the sidecar and in tests."""

    forward: EventSink = ignore
    events: list[Event] = field(default_factory=list)

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self.forward(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]
