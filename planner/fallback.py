"""The next leaner plan after an out-of-memory error. Pure: a Plan in, a Plan (or None) out.

The ladder, one rung per call (each rung trades speed for VRAM):

- VAE:          gpu -> gpu_tiled -> cpu
- text encoder: gpu -> offload -> cpu
- transformer:  resident -> partial (half the blocks resident, halved again on each call while >= 1)
                -> block_offload (1 block/group) -> leaf_offload -> int8 weights (last resort, it changes
                the numbers; bf16 only: fp8 and int8 are already 1 byte, int4 is not worth the quality)

Which component goes first depends on the stage that ran out: decode leans the VAE, encode the text
encoder (then the VAE, which I2V uses to encode the first frame), denoise and load the transformer.
When the failing stage's own component is at its leanest, the other components are leaned too: a
placement may keep them on the device across stages. None means every component is at its leanest.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from planner.plan import Plan, TransformerPlacement

VAE_LADDER = ("gpu", "gpu_tiled", "cpu")
TEXT_ENCODER_LADDER = ("gpu", "offload", "cpu")

# Components in the order they are leaned, per failing stage.
STAGE_ORDER: dict[str, tuple[str, ...]] = {
    "load": ("transformer", "text_encoder", "vae"),
    "encode": ("text_encoder", "vae", "transformer"),
    "denoise": ("transformer", "text_encoder", "vae"),
    "decode": ("vae", "transformer", "text_encoder"),
}
DEFAULT_ORDER = ("vae", "text_encoder", "transformer")


def _next_on(ladder: tuple[str, ...], current: str) -> Optional[str]:
    i = ladder.index(current) if current in ladder else len(ladder) - 1
    return ladder[i + 1] if i + 1 < len(ladder) else None


def _leaner_vae(plan: Plan, _blocks: Optional[int]) -> Optional[Plan]:
    nxt = _next_on(VAE_LADDER, plan.vae)
    return dataclasses.replace(plan, vae=nxt) if nxt else None


def _leaner_text_encoder(plan: Plan, _blocks: Optional[int]) -> Optional[Plan]:
    nxt = _next_on(TEXT_ENCODER_LADDER, plan.text_encoder)
    return dataclasses.replace(plan, text_encoder=nxt) if nxt else None


def _leaner_transformer(plan: Plan, num_blocks: Optional[int]) -> Optional[Plan]:
    tp = plan.transformer
    stream = tp.use_stream
    new: Optional[TransformerPlacement] = None
    if tp.kind == "resident":
        half = (num_blocks or 0) // 2
        new = TransformerPlacement("partial", resident_blocks=half, use_stream=stream) if half >= 1 else None
        new = new or TransformerPlacement("block_offload", blocks_per_group=1, use_stream=stream)
    elif tp.kind == "partial":
        half = tp.resident_blocks // 2
        if half >= 1:
            new = TransformerPlacement("partial", resident_blocks=half, use_stream=stream)
        else:
            new = TransformerPlacement("block_offload", blocks_per_group=1, use_stream=stream)
    elif tp.kind == "block_offload":
        if tp.blocks_per_group > 1:
            new = TransformerPlacement("block_offload", blocks_per_group=1, use_stream=stream)
        else:
            new = TransformerPlacement("leaf_offload", use_stream=stream)
    if new is not None:
        return dataclasses.replace(plan, transformer=new)
    if plan.transformer_quant == "bf16":  # leaf_offload / disk_offload: only smaller weights are left
        return dataclasses.replace(plan, transformer_quant="int8")
    return None


LEANERS: dict[str, Callable[[Plan, Optional[int]], Optional[Plan]]] = {
    "vae": _leaner_vae,
    "text_encoder": _leaner_text_encoder,
    "transformer": _leaner_transformer,
}


def leaner_plan(plan: Plan, stage: Optional[str] = None, num_blocks: Optional[int] = None) -> Optional[Plan]:
    """The next rung of the ladder for an OOM in `stage` (None: any), or None when nothing is left.

    `num_blocks` (the transformer's layer count) lets a resident transformer step down to a partial
    placement; without it, resident steps straight to block offload. The new plan drops the old
    predictions (they no longer hold), is marked source="fallback" and says why in its reasons.
    """
    for component in STAGE_ORDER.get(stage or "", DEFAULT_ORDER):
        new = LEANERS[component](plan, num_blocks)
        if new is not None:
            where = f" in {stage}" if stage else ""
            reason = f"fallback after out of memory{where}: {describe_change(plan, new)}"
            return dataclasses.replace(new, predicted=(), predicted_seconds=0.0, source="fallback", reasons=plan.reasons + (reason,))
    return None


def describe_change(old: Plan, new: Plan) -> str:
    """What differs between two plans, in words: 'VAE gpu -> gpu_tiled'."""
    changes = []
    if old.vae != new.vae:
        changes.append(f"VAE {old.vae} -> {new.vae}")
    if old.text_encoder != new.text_encoder:
        changes.append(f"text encoder {old.text_encoder} -> {new.text_encoder}")
    if old.transformer != new.transformer:
        changes.append(f"transformer {old.transformer.describe()} -> {new.transformer.describe()}")
    if old.transformer_quant != new.transformer_quant:
        changes.append(f"transformer weights {old.transformer_quant} -> {new.transformer_quant}")
    return "; ".join(changes) or "no change"


def ladder(plan: Plan, stage: Optional[str] = None, num_blocks: Optional[int] = None) -> list[Plan]:
    """Every rung below `plan`, in order (for explanations and tests)."""
    out = []
    nxt = leaner_plan(plan, stage, num_blocks)
    while nxt is not None:
        out.append(nxt)
        nxt = leaner_plan(nxt, stage, num_blocks)
    return out
