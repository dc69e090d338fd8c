"""The TeaCache skip schedule, computed before sampling.

TeaCache4Wan2.1 decides per transformer call, from the timestep embedding alone, whether to run the
blocks. The embedding depends only on the timestep, so every decision is known once the scheduler's
timesteps are: this module computes them all up front (one pass over the time embedder, no GPU sync
during sampling) and the hook only follows them.

The time embedder has learned weights, so a schedule needs them: `TimeEmbedderWeights` reads just
those few tensors, from a loaded transformer or lazily from the checkpoint's safetensors file, and
the signal is computed in fp32 as the coefficients were fitted.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from lowvram.caching.teacache.coefficients import CoefficientChoice
from lowvram.errors import UserError

RETENTION_STEPS = 5  # with retention, the first 5 steps always compute (TeaCache4Wan2.1: ret_steps = 5*2 calls)
MAX_THRESHOLD = 10.0  # the threshold search's upper end (TeaCacheSetting accepts 0..10)
_SEARCH_ITERATIONS = 60


# ---------------------------------------------------------------------------------------------- decisions


def rescale(coefficients: Sequence[float], x: float) -> float:
    """numpy.poly1d(coefficients)(x), evaluated the same way (Horner, highest power first)."""
    y = 0.0
    for c in coefficients:
        y = y * x + c
    return y


def forced_steps(total_steps: int, retention: bool) -> frozenset[int]:
    """Steps that always compute: the first 5 with retention (no cutoff); else the first and the last."""
    if retention:
        return frozenset(range(min(RETENTION_STEPS, total_steps)))
    return frozenset({0, total_steps - 1})


@dataclass(frozen=True)
class CallDecision:
    """What TeaCache does on one transformer call, with the numbers that led there."""

    step: int
    branch: str
    timestep: float
    rel_l1: Optional[float]  # None on forced calls (the reference does not compute it there)
    rescaled: Optional[float]
    accumulated: float  # after this call (0 after a compute)
    computed: bool
    forced: bool


def decide_branch(
    rel_l1: Sequence[Optional[float]],
    coefficients: Sequence[float],
    threshold: float,
    forced: frozenset[int],
    branch: str = "cond",
    timesteps: Optional[Sequence[float]] = None,
) -> list[CallDecision]:
    """The reference decision loop for one branch. rel_l1[i] compares step i's signal with step i-1's."""
    out: list[CallDecision] = []
    accumulated = 0.0
    for step, change in enumerate(rel_l1):
        t = float(timesteps[step]) if timesteps is not None else float(step)
        if step in forced:
            accumulated = 0.0
            out.append(CallDecision(step, branch, t, None, None, 0.0, True, True))
            continue
        if change is None:
            raise ValueError(f"step {step} is not forced but has no previous signal to compare with")
        scaled = rescale(coefficients, change)
        accumulated += scaled
        computed = not accumulated < threshold
        if computed:
            accumulated = 0.0
        out.append(CallDecision(step, branch, t, change, scaled, accumulated, computed, False))
    return out


@dataclass(frozen=True)
class SkipSchedule:
    """Every call's decision for one run, in call order (step by step, branches in order)."""

    coefficients: str  # key into COEFFICIENTS
    retention: bool
    threshold: float
    branches: tuple[str, ...]
    timesteps: tuple[float, ...]
    calls: tuple[CallDecision, ...]
    note: str = ""
    target_speedup: Optional[float] = None

    @property
    def total_steps(self) -> int:
        return len(self.timesteps)

    def decision(self, step: int, branch: str) -> CallDecision:
        return self.calls[step * len(self.branches) + self.branches.index(branch)]

    @property
    def computed_calls(self) -> int:
        return sum(c.computed for c in self.calls)

    @property
    def skipped_calls(self) -> int:
        return len(self.calls) - self.computed_calls

    @property
    def computed_steps(self) -> int:
        """Steps in which at least one branch runs the blocks (the branches decide alike: same timestep)."""
        return len({c.step for c in self.calls if c.computed})

    @property
    def step_computed(self) -> tuple[bool, ...]:
        return tuple(any(self.decision(s, b).computed for b in self.branches) for s in range(self.total_steps))

    @property
    def predicted_speedup(self) -> float:
        """Calls made / calls that run the blocks: the speed-up of the block stack, an upper bound for the
        denoising stage (a skipped call still runs the embedders and the output head)."""
        return len(self.calls) / max(1, self.computed_calls)

    def summary(self) -> str:
        how = (
            "fixed decisions"
            if self.coefficients == "fixed"
            else f"threshold {self.threshold:.4g}, {'with' if self.retention else 'without'} retention steps, "
            f"{self.coefficients} coefficients"
        )
        line = (
            f"TeaCache: computes {self.computed_steps} of {self.total_steps} steps, "
            f"predicted {self.predicted_speedup:.1f}x ({how})"
        )
        return line + (f"; note: {self.note}" if self.note else "")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            computed_steps=self.computed_steps,
            total_steps=self.total_steps,
            predicted_speedup=self.predicted_speedup,
        )
        return data


def rel_l1_series(signal) -> list[Optional[float]]:
    """mean|x - prev| / mean|prev| for each row of an fp32 [steps, ...] tensor, None for the first."""
    import torch

    flat = signal.detach().to(torch.float32).reshape(signal.shape[0], -1)
    if flat.shape[0] < 2:
        return [None] * flat.shape[0]
    # Row by row with the reference's expression (a batched mean may round differently), then one
    # transfer for the whole series: fp32 values, as the reference's .item() sees them.
    values = torch.stack([(flat[i] - flat[i - 1]).abs().mean() / flat[i - 1].abs().mean() for i in range(1, flat.shape[0])])
    return [None] + [float(v) for v in values.cpu().tolist()]


def schedule_from_rel_l1(
    rel_l1: Sequence[Optional[float]],
    choice: CoefficientChoice,
    retention: bool,
    threshold: float,
    branches: Sequence[str],
    timesteps: Sequence[float],
    target_speedup: Optional[float] = None,
) -> SkipSchedule:
    coeffs = choice.coefficients.for_mode(retention)
    forced = forced_steps(len(rel_l1), retention)
    per_branch = [decide_branch(rel_l1, coeffs, threshold, forced, b, timesteps) for b in branches]
    calls = tuple(d for step_calls in zip(*per_branch) for d in step_calls)
    return SkipSchedule(
        coefficients=choice.key,
        retention=retention,
        threshold=threshold,
        branches=tuple(branches),
        timesteps=tuple(float(t) for t in timesteps),
        calls=calls,
        note=choice.note,
        target_speedup=target_speedup,
    )


def search_threshold(
    rel_l1: Sequence[Optional[float]], coefficients: Sequence[float], retention: bool, target_speedup: float
) -> float:
    """The smallest threshold whose schedule computes at most total/target steps (bisection).

    The computed count falls as the threshold rises whenever the rescaled changes are >= 0 (then a
    larger threshold never resets earlier); the result is always checked against the target, so a
    polynomial that dips below zero can cost optimality but never correctness.
    """
    steps = len(rel_l1)
    forced = forced_steps(steps, retention)
    allowed = math.floor(steps / target_speedup + 1e-9)

    def computed(threshold: float) -> int:
        return sum(d.computed for d in decide_branch(rel_l1, coefficients, threshold, forced))

    best = computed(MAX_THRESHOLD)
    if best > allowed:
        raise UserError(
            f"TeaCache cannot reach {target_speedup:g}x here: even the largest threshold ({MAX_THRESHOLD:g}) computes "
            f"{best} of {steps} steps ({steps / max(1, best):.2f}x). Ask for at most {steps / max(1, best):.2f}x, "
            "use more steps, or turn retention steps off (--no-teacache-retention)."
        )
    lo, hi = 0.0, MAX_THRESHOLD
    if computed(lo) <= allowed:
        return lo
    for _ in range(_SEARCH_ITERATIONS):
        mid = (lo + hi) / 2
        if computed(mid) <= allowed:
            hi = mid
        else:
            lo = mid
    return hi


# ---------------------------------------------------------------------------------------------- the signal

_KEYS = {
    "l1_w": "condition_embedder.time_embedder.linear_1.weight",
    "l1_b": "condition_embedder.time_embedder.linear_1.bias",
    "l2_w": "condition_embedder.time_embedder.linear_2.weight",
    "l2_b": "condition_embedder.time_embedder.linear_2.bias",
    "proj_w": "condition_embedder.time_proj.weight",
    "proj_b": "condition_embedder.time_proj.bias",
}
_CHUNK_ROWS = 4096  # rows of a weight upcast to fp32 at a time (time_proj of the 14B is 30720 x 5120)


@dataclass(frozen=True)
class TimeEmbedderWeights:
    """The learned weights of the time path: time_embedder (always) and time_proj (retention mode)."""

    freq_dim: int
    l1_w: Any
    l1_b: Any
    l2_w: Any
    l2_b: Any
    proj_w: Any = None
    proj_b: Any = None

    @classmethod
    def from_transformer(cls, transformer) -> "TimeEmbedderWeights":
        ce = transformer.condition_embedder
        te = ce.time_embedder
        return cls(
            freq_dim=ce.timesteps_proj.num_channels,
            l1_w=_dense(te.linear_1.weight),
            l1_b=te.linear_1.bias,
            l2_w=_dense(te.linear_2.weight),
            l2_b=te.linear_2.bias,
            proj_w=_dense(ce.time_proj.weight),
            proj_b=ce.time_proj.bias,
        )

    @classmethod
    def from_checkpoint(cls, folder: Path, freq_dim: int, retention: bool) -> "TimeEmbedderWeights":
        """Read only the time-path tensors from transformer/*.safetensors (memory-mapped, no full load)."""
        from safetensors import safe_open

        tdir = Path(folder) / "transformer"
        index = tdir / "diffusion_pytorch_model.safetensors.index.json"
        wanted = [k for k in _KEYS if retention or not k.startswith("proj")]
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = {k: tdir / weight_map[_KEYS[k]] for k in wanted if _KEYS[k] in weight_map}
        else:
            single = tdir / "diffusion_pytorch_model.safetensors"
            files = {k: single for k in wanted} if single.is_file() else {}
        missing = [k for k in wanted if k not in files or not files[k].is_file()]
        if missing:
            raise UserError(
                f"{tdir}: the time-embedding weights TeaCache needs ({', '.join(_KEYS[k] for k in missing)}) are not "
                "in a local safetensors file; download the model first or run without TeaCache."
            )
        tensors = {}
        for key in wanted:
            with safe_open(str(files[key]), framework="pt") as f:
                tensors[key] = f.get_tensor(_KEYS[key])
        return cls(freq_dim=freq_dim, **tensors)


def _dense(weight):
    """A plain tensor from a possibly quantized weight (optimum-quanto QTensors dequantize)."""
    return weight.dequantize() if hasattr(weight, "dequantize") else weight


def _linear_fp32(x, weight, bias):
    """x @ weight.T + bias in fp32, upcasting the weight a block of rows at a time to cap the extra memory."""
    import torch

    weight = weight.detach()
    outs = []
    for start in range(0, weight.shape[0], _CHUNK_ROWS):
        w = weight[start : start + _CHUNK_ROWS].to(x.device, torch.float32)
        b = None if bias is None else bias.detach()[start : start + _CHUNK_ROWS].to(x.device, torch.float32)
        outs.append(torch.nn.functional.linear(x, w, b))
    return torch.cat(outs, dim=-1)


def sinusoid(timesteps, freq_dim: int):
    """Wan's sinusoidal timestep embedding (cos first), in float64 like the reference, returned as fp32."""
    import torch

    half = freq_dim // 2
    position = timesteps.detach().to(torch.float64).reshape(-1)
    freqs = torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=position.device).div(half))
    angles = torch.outer(position, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).to(torch.float32)


def time_signal(weights: TimeEmbedderWeights, timesteps, retention: bool):
    """The TeaCache signal for each timestep, fp32: `e` (temb) or, with retention, `e0` (timestep_proj)."""
    import torch

    device = weights.l1_w.device
    x = sinusoid(torch.as_tensor(timesteps).to(device), weights.freq_dim)
    temb = _linear_fp32(torch.nn.functional.silu(_linear_fp32(x, weights.l1_w, weights.l1_b)), weights.l2_w, weights.l2_b)
    if not retention:
        return temb
    if weights.proj_w is None:
        raise ValueError("retention mode needs the time_proj weights")
    return _linear_fp32(torch.nn.functional.silu(temb), weights.proj_w, weights.proj_b)


# ---------------------------------------------------------------------------------------------- timesteps and preview


def scheduler_timesteps(scheduler, steps: int):
    """The timesteps a run of `steps` steps will use: a fresh copy of the scheduler, so the caller's is untouched."""
    from diffusers import SchedulerMixin

    if isinstance(scheduler, dict):
        import diffusers

        cls = getattr(diffusers, scheduler["_class_name"])
        fresh = cls.from_config(scheduler)
    elif isinstance(scheduler, SchedulerMixin):
        fresh = type(scheduler).from_config(scheduler.config)
    else:
        raise TypeError(f"expected a diffusers scheduler or its config dict, got {type(scheduler).__name__}")
    fresh.set_timesteps(steps, device="cpu")
    return fresh.timesteps


def fixed_schedule(step_computed, branches=("cond", "uncond"), timesteps=None) -> SkipSchedule:
    """A schedule with given decisions (True = compute), for benchmarks on random weights, whose time
    embedder gives all-or-nothing schedules: the timing of "N of 50 steps" needs no real signal."""
    steps = len(step_computed)
    ts = tuple(float(t) for t in timesteps) if timesteps is not None else tuple(float(s) for s in range(steps))
    calls = tuple(
        CallDecision(s, b, ts[s], None, None, 0.0, bool(c), s == 0) for s, c in enumerate(step_computed) for b in branches
    )
    if not calls[0].computed:
        raise ValueError("the first step must compute: a skip reuses the residual of an earlier computed step")
    return SkipSchedule("fixed", False, float("nan"), tuple(branches), ts, calls)


def branches_for(guidance: float) -> tuple[str, ...]:
    """cond and uncond with classifier-free guidance; cond alone when guidance is off (<= 1)."""
    return ("cond", "uncond") if guidance > 1.0 else ("cond",)


def build_schedule(
    setting, choice: CoefficientChoice, weights: TimeEmbedderWeights, timesteps, branches: Sequence[str]
) -> SkipSchedule:
    """A TeaCacheSetting (threshold or target speed-up) -> the full schedule for these timesteps."""
    if setting.threshold is None and setting.speedup is None:
        raise UserError("TeaCache is on but has neither a threshold nor a target: pass --teacache 0.05 or --teacache-speedup 1.5.")
    rel_l1 = rel_l1_series(time_signal(weights, timesteps, setting.retention))
    threshold = setting.threshold
    if threshold is None:
        threshold = search_threshold(rel_l1, choice.coefficients.for_mode(setting.retention), setting.retention, setting.speedup)
    ts = [float(t) for t in timesteps.tolist()] if hasattr(timesteps, "tolist") else [float(t) for t in timesteps]
    return schedule_from_rel_l1(rel_l1, choice, setting.retention, threshold, branches, ts, setting.speedup)
