"""A skip schedule: every transformer call's decision, known before sampling. Shared by TeaCache and MagCache.

Both caches decide from data that exists before the first step (TeaCache: the timestep embedding,
a function of the timesteps and the checkpoint's time-path weights; MagCache: the model's magnitude
ratios), so a whole run's decisions are computed up front and the hooks only follow them. A run of
a two-expert model has one schedule per denoiser component, each covering that expert's steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence


@dataclass(frozen=True)
class CallDecision:
    """What the cache does on one transformer call, with the numbers that led there (None where the
    method does not compute them, or on forced calls)."""

    step: int  # index in the whole run
    branch: str
    timestep: float
    computed: bool
    forced: bool = False  # computed whatever the numbers say (retention steps, first call of an expert)
    rel_l1: Optional[float] = None  # TeaCache: relative L1 change of the timestep embedding
    rescaled: Optional[float] = None  # TeaCache: the coefficients' polynomial of rel_l1
    # TeaCache: the accumulated rescaled change after this call (0 after a compute, as the reference keeps it).
    # MagCache: the accumulated error this call was decided on (a compute resets it afterwards).
    accumulated: float = 0.0
    ratio: Optional[float] = None  # MagCache: this call's magnitude ratio
    accumulated_ratio: Optional[float] = None  # MagCache: product of the ratios since the last computed call, this one included
    skips: Optional[int] = None  # MagCache: calls accumulated since the last computed one, this one included (skips need <= K)


@dataclass(frozen=True)
class SkipSchedule:
    """One denoiser component's decisions for its steps of a run, in call order (step by step, branches in order)."""

    method: str  # "teacache", "magcache", "calibrate" (every call computed) or "fixed" (benchmarks)
    component: str
    branches: tuple[str, ...]
    first_step: int
    timesteps: tuple[float, ...]  # of the steps this schedule covers
    calls: tuple[CallDecision, ...]
    threshold: float = float("nan")
    run_steps: int = 0  # steps of the whole run (all components)
    params: dict = field(default_factory=dict)  # the method's settings and data sources, for people and the sidecar
    note: str = ""

    def __post_init__(self) -> None:
        if len(self.calls) != len(self.timesteps) * len(self.branches):
            raise ValueError(f"{len(self.calls)} calls for {len(self.timesteps)} steps x {len(self.branches)} branches")

    @property
    def total_steps(self) -> int:
        """Steps this component runs."""
        return len(self.timesteps)

    @property
    def steps(self) -> range:
        return range(self.first_step, self.first_step + self.total_steps)

    def covers(self, step: int) -> bool:
        return self.first_step <= step < self.first_step + self.total_steps

    def decision(self, step: int, branch: str) -> CallDecision:
        return self.calls[(step - self.first_step) * len(self.branches) + self.branches.index(branch)]

    @property
    def computed_calls(self) -> int:
        return sum(c.computed for c in self.calls)

    @property
    def total_calls(self) -> int:
        return len(self.calls)

    @property
    def skipped_calls(self) -> int:
        return self.total_calls - self.computed_calls

    @property
    def computed_steps(self) -> int:
        """Steps in which at least one branch runs the blocks."""
        return len({c.step for c in self.calls if c.computed})

    @property
    def step_computed(self) -> tuple[bool, ...]:
        return tuple(any(self.decision(s, b).computed for b in self.branches) for s in self.steps)

    @property
    def predicted_speedup(self) -> float:
        """Calls made / calls that run the blocks: the speed-up of the block stack, an upper bound for the
        denoising stage (a skipped call still runs the embedders and the output head)."""
        return self.total_calls / max(1, self.computed_calls)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(computed_calls=self.computed_calls, total_calls=self.total_calls, predicted_speedup=self.predicted_speedup)
        return data


def fixed_schedule(step_computed: Sequence[bool], branches=("cond", "uncond"), timesteps=None, component: str = "transformer",
                   first_step: int = 0, method: str = "fixed") -> SkipSchedule:
    """A schedule with given decisions (True = compute): for benchmarks on random weights (whose time embedder
    gives all-or-nothing TeaCache schedules) and for calibration runs (every call computed)."""
    steps = len(step_computed)
    ts = tuple(float(t) for t in timesteps) if timesteps is not None else tuple(float(first_step + s) for s in range(steps))
    calls = tuple(
        CallDecision(first_step + s, b, ts[s], bool(c), forced=s == 0) for s, c in enumerate(step_computed) for b in branches
    )
    if calls and not calls[0].computed:
        raise ValueError("the first step must compute: a skip reuses the residual of an earlier computed step")
    return SkipSchedule(method, component, tuple(branches), first_step, ts, calls, run_steps=first_step + steps)


def force_first_calls(calls: list[CallDecision], branches: Sequence[str]) -> tuple[list[CallDecision], int]:
    """A skip reuses the residual of an earlier computed call of the same branch on the same component;
    the first call of each branch has none, so it computes. Returns the calls and how many were changed."""
    seen: set[str] = set()
    out, changed = [], 0
    for c in calls:
        if c.branch not in seen:
            seen.add(c.branch)
            if not c.computed:
                c = CallDecision(**{**asdict(c), "computed": True, "forced": True})
                changed += 1
        out.append(c)
    return out, changed


def branches_for(guidance: float) -> tuple[str, ...]:
    """cond and uncond with classifier-free guidance; cond alone when guidance is off (<= 1)."""
    return ("cond", "uncond") if guidance > 1.0 else ("cond",)
