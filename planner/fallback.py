"""The next leaner plan after an out-of-memory error. Pure: a Plan in, a Plan (or None) out.

The ladder, one rung per call (each rung trades speed for VRAM), per component:

- VAE:           gpu -> gpu_tiled -> bf16 gpu_tiled -> cpu
- text encoder:  gpu -> offload -> cpu
- image encoder: gpu -> cpu
- denoiser(s):   resident -> partial (half the blocks resident, halved again on each call while >= 1)
                 -> block_offload (1 block/group) -> leaf_offload (not compiled) -> int8 weights (last resort, it changes
                 the numbers; from bf16/fp32 only: fp8 and int8 are already 1 byte, int4 is not worth the
                 quality). Both experts of a two-expert model step down together (they have one shape).
                 On several GPUs (a layer split, one expert per card) the first rung is one GPU, with half of
                 each denoiser's blocks resident there (the experts then take turns): the plan any one-GPU
                 machine would fall back to. A context-parallel plan falls back to one GPU in its launcher.

Which component goes first depends on the stage that ran out: decode leans the VAE, encode the text
encoder (then the image encoder and the VAE, which encode the first frame), denoise and load the
denoisers. When the failing stage's own component is at its leanest, the other components are leaned too:
a placement may keep them on the device across stages. None means every component is at its leanest.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from planner.plan import ComponentPlan, Plan, describe_change, one_gpu

LADDERS = {
    "text_encoder": ("gpu", "offload", "cpu"),
    "image_encoder": ("gpu", "cpu"),
}
TEXT_ENCODER_LADDER = LADDERS["text_encoder"]
# (precision, placement): a bf16 tiled decode on the GPU (half the memory) before the CPU (many times slower)
VAE_LADDER = (("fp32", "gpu"), ("fp32", "gpu_tiled"), ("bf16", "gpu_tiled"), ("fp32", "cpu"))

# Components (by role) in the order they are leaned, per failing stage.
STAGE_ORDER: dict[str, tuple[str, ...]] = {
    "load": ("denoiser", "text_encoder", "image_encoder", "vae"),
    "encode": ("text_encoder", "image_encoder", "vae", "denoiser"),
    "denoise": ("denoiser", "text_encoder", "image_encoder", "vae"),
    "decode": ("vae", "denoiser", "text_encoder", "image_encoder"),
}
DEFAULT_ORDER = ("vae", "text_encoder", "image_encoder", "denoiser")


def _next_on(ladder: tuple, current):
    i = ladder.index(current) if current in ladder else len(ladder) - 1
    return ladder[i + 1] if i + 1 < len(ladder) else None


def _leaner_simple(role: str) -> Callable[[Plan, Optional[int]], Optional[Plan]]:
    def lean(plan: Plan, _blocks: Optional[int]) -> Optional[Plan]:
        cp = plan.get(role)
        nxt = _next_on(LADDERS[role], cp.placement) if cp is not None else None
        return plan.with_component(dataclasses.replace(cp, placement=nxt)) if nxt else None

    return lean


def _leaner_vae(plan: Plan, _blocks: Optional[int]) -> Optional[Plan]:
    cp = plan.get("vae")
    if cp is None:
        return None
    nxt = _next_on(VAE_LADDER, (cp.precision, cp.placement))
    return plan.with_component(dataclasses.replace(cp, precision=nxt[0], placement=nxt[1])) if nxt else None


def _leaner_denoiser(cp: ComponentPlan, num_blocks: Optional[int]) -> Optional[ComponentPlan]:
    stream = cp.use_stream
    kind = cp.placement
    if kind == "resident":
        half = (num_blocks or 0) // 2
        if half >= 1:
            return dataclasses.replace(cp, placement="partial", resident_blocks=half, blocks_per_group=1, use_stream=stream)
        return dataclasses.replace(cp, placement="block_offload", resident_blocks=0, blocks_per_group=1, use_stream=stream)
    if kind == "partial":
        half = cp.resident_blocks // 2
        if half >= 1:
            return dataclasses.replace(cp, resident_blocks=half)
        return dataclasses.replace(cp, placement="block_offload", resident_blocks=0, blocks_per_group=1)
    if kind == "block_offload":
        if cp.blocks_per_group > 1:
            return dataclasses.replace(cp, blocks_per_group=1)
        # leaf offload cannot keep the blocks compiled (ComponentPlan): they run eagerly from here on
        return dataclasses.replace(cp, placement="leaf_offload", blocks_per_group=1, compile=False)
    if cp.precision in ("fp32", "bf16"):  # leaf_offload / disk_offload: only smaller weights are left
        return dataclasses.replace(cp, precision="int8")
    return None


def _leaner_denoisers(plan: Plan, num_blocks: Optional[int]) -> Optional[Plan]:
    if plan.parallel or any(c.devices for c in plan.denoisers):
        flat = one_gpu(plan)
        for cp in flat.denoisers:
            lean = _leaner_denoiser(cp, num_blocks) if cp.placement == "resident" else cp
            flat = flat.with_component(lean)
        return flat
    new = plan
    for cp in plan.denoisers:
        lean = _leaner_denoiser(cp, num_blocks)
        if lean is None:
            return None
        new = new.with_component(lean)
    return new if plan.denoisers else None


LEANERS: dict[str, Callable[[Plan, Optional[int]], Optional[Plan]]] = {
    "vae": _leaner_vae,
    "text_encoder": _leaner_simple("text_encoder"),
    "image_encoder": _leaner_simple("image_encoder"),
    "denoiser": _leaner_denoisers,
}


def leaner_plan(plan: Plan, stage: Optional[str] = None, num_blocks: Optional[int] = None) -> Optional[Plan]:
    """The next rung of the ladder for an OOM in `stage` (None: any), or None when nothing is left.

    `num_blocks` (the denoiser's layer count) lets a resident denoiser step down to a partial
    placement; without it, resident steps straight to block offload. The new plan drops the old
    predictions (they no longer hold), is marked source="fallback" and says why in its reasons.
    """
    for role in STAGE_ORDER.get(stage or "", DEFAULT_ORDER):
        new = LEANERS[role](plan, num_blocks)
        if new is not None:
            where = f" in {stage}" if stage else ""
            reason = f"fallback after out of memory{where}: {describe_change(plan, new)}"
            return dataclasses.replace(new, predicted=(), predicted_seconds=0.0, source="fallback", reasons=plan.reasons + (reason,))
    return None


def ladder(plan: Plan, stage: Optional[str] = None, num_blocks: Optional[int] = None) -> list[Plan]:
    """Every rung below `plan`, in order (for explanations and tests)."""
    out = []
    nxt = leaner_plan(plan, stage, num_blocks)
    while nxt is not None:
        out.append(nxt)
        nxt = leaner_plan(nxt, stage, num_blocks)
    return out


__all__ = ["LEANERS", "STAGE_ORDER", "TEXT_ENCODER_LADDER", "VAE_LADDER", "describe_change", "ladder", "leaner_plan"]
