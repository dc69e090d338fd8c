"""The sampler's timesteps, computed without diffusers (the planner splits the denoise stage by them).

Wan pipelines sample with UniPC on flow sigmas: sigma_i = linspace(1, 1/1000, steps + 1)[i], shifted by
s * sigma / (1 + (s - 1) * sigma), timestep = int(sigma * 1000) (diffusers' UniPCMultistepScheduler
with use_flow_sigmas; tests/test_planner_schedule.py checks it against the scheduler itself). A two-expert
model runs its high-noise expert while t >= boundary_ratio * 1000 and its low-noise expert after.
"""

from __future__ import annotations

from planner.spec import NUM_TRAIN_TIMESTEPS


def flow_timesteps(steps: int, shift: float, train_steps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    out = []
    for i in range(steps):
        sigma = 1.0 + (1.0 / train_steps - 1.0) * i / steps  # linspace(1, 1/T, steps + 1)[i]
        sigma = shift * sigma / (1.0 + (shift - 1.0) * sigma)
        if i == 0 and abs(sigma - 1.0) < 1e-6:
            sigma -= 1e-6
        out.append(int(sigma * train_steps))
    return out


def expert_steps(steps: int, shift: float, boundary_ratio: float | None, train_steps: int = NUM_TRAIN_TIMESTEPS) -> tuple[int, int]:
    """(steps of the high-noise expert, steps of the low-noise expert); (steps, 0) for a one-denoiser model."""
    if boundary_ratio is None:
        return steps, 0
    boundary = boundary_ratio * train_steps
    high = sum(1 for t in flow_timesteps(steps, shift, train_steps) if t >= boundary)
    return high, steps - high
