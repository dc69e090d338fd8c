"""TeaCache4Wan2.1's decisions for a run, computed before sampling from the fp32 timestep embedding.

TeaCache decides per transformer call, from the timestep embedding alone, whether to run the blocks.
The embedding depends only on the timestep and the time path's learned weights, so every decision is
known once the scheduler's timesteps are: this module computes them all up front, with the signal in
fp32 from the checkpoint's own weights (as the coefficients were fitted), whatever precision or
placement the transformer itself runs in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from lowvram.caching.schedule import CallDecision, SkipSchedule, force_first_calls
from lowvram.caching.search import reachable, search_threshold
from lowvram.caching.setting import MAX_THRESHOLD, CacheSetting
from lowvram.caching.teacache.coefficients import CoefficientChoice
from lowvram.errors import UserError

RETENTION_STEPS = 5  # with retention, the first 5 steps always compute (TeaCache4Wan2.1: ret_steps = 5*2 calls)


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


def decide_branch(
    rel_l1: Sequence[Optional[float]],
    coefficients: Sequence[float],
    threshold: float,
    forced: frozenset[int],
    branch: str = "cond",
    timesteps: Optional[Sequence[float]] = None,
    first_step: int = 0,
) -> list[CallDecision]:
    """The reference decision loop for one branch. rel_l1[i] compares step i's signal with step i-1's."""
    out: list[CallDecision] = []
    accumulated = 0.0
    for i, change in enumerate(rel_l1):
        step = first_step + i
        t = float(timesteps[i]) if timesteps is not None else float(step)
        if i in forced:
            accumulated = 0.0
            out.append(CallDecision(step, branch, t, True, forced=True))
            continue
        if change is None:
            raise ValueError(f"step {step} is not forced but has no previous signal to compare with")
        scaled = rescale(coefficients, change)
        accumulated += scaled
        computed = not accumulated < threshold
        if computed:
            accumulated = 0.0
        out.append(CallDecision(step, branch, t, computed, rel_l1=change, rescaled=scaled, accumulated=accumulated))
    return out


def schedule_from_rel_l1(
    rel_l1: Sequence[Optional[float]],
    choice: CoefficientChoice,
    retention: bool,
    threshold: float,
    branches: Sequence[str],
    timesteps: Sequence[float],
    component: str = "transformer",
    first_step: int = 0,
    run_steps: Optional[int] = None,
    target_speedup: Optional[float] = None,
) -> SkipSchedule:
    """The schedule of one component over its steps: TeaCache4Wan2.1's loop, each branch with its own state
    (the branches see the same signal, so they decide alike)."""
    coeffs = choice.coefficients.for_mode(retention)
    forced = forced_steps(len(rel_l1), retention)
    per_branch = [decide_branch(rel_l1, coeffs, threshold, forced, b, timesteps, first_step) for b in branches]
    calls, _ = force_first_calls([d for step_calls in zip(*per_branch) for d in step_calls], branches)
    params = dict(coefficients=choice.key, retention=retention, target_speedup=target_speedup, coefficients_reason=choice.reason)
    return SkipSchedule(
        method="teacache",
        component=component,
        branches=tuple(branches),
        first_step=first_step,
        timesteps=tuple(float(t) for t in timesteps),
        calls=tuple(calls),
        threshold=threshold,
        run_steps=run_steps if run_steps is not None else first_step + len(rel_l1),
        params=params,
        note=choice.note,
    )


def threshold_for_speedup(rel_l1: Sequence[Optional[float]], coefficients: Sequence[float], retention: bool, target: float) -> float:
    """The smallest threshold whose decisions compute at most steps/target steps; an unreachable target is a
    UserError naming the largest reachable speed-up."""
    steps = len(rel_l1)
    forced = forced_steps(steps, retention)

    def computed(threshold: float) -> int:
        return sum(d.computed for d in decide_branch(rel_l1, coefficients, threshold, forced))

    found = search_threshold(computed, steps, target)
    if found.threshold is None:
        raise UserError(
            f"TeaCache cannot reach {target:g}x here: even the largest threshold ({MAX_THRESHOLD:g}) computes "
            f"{found.computed} of {steps} steps, so the largest reachable speed-up is {reachable(found.best_speedup)}: ask for at most "
            "that, use more steps, or turn retention steps off (--no-teacache-retention)."
        )
    return found.threshold


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


def build_schedule(
    setting: CacheSetting,
    choice: CoefficientChoice,
    weights: "TimeEmbedderWeights",
    timesteps,
    branches: Sequence[str],
    component: str = "transformer",
    first_step: int = 0,
    run_steps: Optional[int] = None,
) -> SkipSchedule:
    """A TeaCache setting (threshold or target speed-up) -> the component's schedule for these timesteps."""
    if setting.threshold is None and setting.speedup is None:
        raise UserError("TeaCache needs a threshold or a target speed-up: pass --cache-threshold 0.05 or --cache-speedup 1.5.")
    ts = [float(t) for t in timesteps.tolist()] if hasattr(timesteps, "tolist") else [float(t) for t in timesteps]
    rel_l1 = rel_l1_series(time_signal(weights, ts, setting.retention))
    threshold = setting.threshold
    if threshold is None:
        threshold = threshold_for_speedup(rel_l1, choice.coefficients.for_mode(setting.retention), setting.retention, setting.speedup)
    return schedule_from_rel_l1(rel_l1, choice, setting.retention, threshold, branches, ts, component, first_step, run_steps, setting.speedup)


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
    def from_checkpoint(cls, folder: Path, freq_dim: int, retention: bool, component: str = "transformer") -> "TimeEmbedderWeights":
        """Read only the time-path tensors from <component>/*.safetensors (memory-mapped, no full load): the
        checkpoint's own values, whatever precision the loaded model holds them in."""
        from safetensors import safe_open

        tdir = Path(folder) / component
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
    x = sinusoid(torch.as_tensor(timesteps, dtype=torch.float64).to(device), weights.freq_dim)
    temb = _linear_fp32(torch.nn.functional.silu(_linear_fp32(x, weights.l1_w, weights.l1_b)), weights.l2_w, weights.l2_b)
    if not retention:
        return temb
    if weights.proj_w is None:
        raise ValueError("retention mode needs the time_proj weights")
    return _linear_fp32(torch.nn.functional.silu(temb), weights.proj_w, weights.proj_b)
