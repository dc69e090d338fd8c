"""Set up streaming of weights (diffusers group offloading, quanto-aware) per component.

Transformer kinds: partial (first K blocks resident, the rest streamed block by block),
block_offload, leaf_offload, disk_offload. Text encoder "offload": block level WITHOUT streams
(streams on a text encoder corrupted its output upstream, diffusers issues 11041 / 12673).
Streams exist only on CUDA; on a CPU plan the same hooks run with nothing to overlap.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from lowvram.placement.quanto_offload import (
    apply_group_offloading,
    group_hooks,
    group_tensors,
    storage_device,
)
from planner.plan import ComponentPlan

DISK_COMPLETE_MARKER = "lowvram_complete"


@dataclass(frozen=True)
class OffloadSettings:
    """What apply_group_offloading receives, decided from a placement and the device (pure)."""

    offload_type: str  # "block_level" or "leaf_level"
    num_blocks_per_group: Optional[int]
    use_stream: bool
    disk: bool


def settings_for(placement: ComponentPlan, device: torch.device) -> Optional[OffloadSettings]:
    """None when nothing is streamed (resident, or partial with every block resident)."""
    streams = placement.use_stream and device.type == "cuda"
    if placement.placement == "resident":
        return None
    if placement.placement == "leaf_offload":
        return OffloadSettings("leaf_level", None, streams, disk=False)
    if placement.placement == "disk_offload":
        return OffloadSettings("block_level", 1, streams, disk=True)
    # block_offload and partial: diffusers supports streams only with one block per group.
    per_group = 1 if streams else placement.blocks_per_group
    return OffloadSettings("block_level", per_group, streams, disk=False)


def _block_list_name(module: torch.nn.Module) -> str:
    for name, child in module.named_children():
        if isinstance(child, torch.nn.ModuleList):
            return name
    raise ValueError(f"{type(module).__name__} has no ModuleList of blocks to stream")


def apply_transformer(
    transformer: torch.nn.Module,
    placement: ComponentPlan,
    device: torch.device,
    disk_dir: Optional[Path] = None,
) -> list[int]:
    """Attach offload hooks per the placement. Returns the indices of blocks that stay resident
    (moved to the device on entering denoise, off it afterwards, by placement.py)."""
    settings = settings_for(placement, device)
    name = _block_list_name(transformer)
    blocks = getattr(transformer, name)
    if settings is None:
        return list(range(len(blocks)))
    resident = list(range(min(placement.resident_blocks, len(blocks)))) if placement.placement == "partial" else []
    if len(resident) == len(blocks):
        return resident
    kwargs = dict(
        onload_device=device,
        offload_device=torch.device("cpu"),
        offload_type=settings.offload_type,
        num_blocks_per_group=settings.num_blocks_per_group,
        use_stream=settings.use_stream,
        # Pinned copies are what makes the copies asynchronous; they cost RAM the planner counted.
        low_cpu_mem_usage=False,
    )
    if settings.disk:
        kwargs["offload_to_disk_path"] = str(_fresh_disk_dir(disk_dir))
    if resident:
        # Stream only blocks[K:]: diffusers builds its groups from the module tree, so show it a tree
        # whose block list holds only the streamed blocks, then put the full list back. The resident
        # blocks get no hooks; the prefetch chain starts at the first streamed block.
        full = blocks
        setattr(transformer, name, torch.nn.ModuleList(list(full)[len(resident):]))
        try:
            apply_group_offloading(transformer, **kwargs)
        finally:
            setattr(transformer, name, full)
    else:
        apply_group_offloading(transformer, **kwargs)
    if settings.offload_type == "block_level" and not settings.disk:
        keep_root_group_resident(transformer)
    if settings.disk:
        (Path(kwargs["offload_to_disk_path"]) / DISK_COMPLETE_MARKER).write_text("ok\n")
    return resident


def _fresh_disk_dir(disk_dir: Optional[Path]) -> Path:
    """diffusers reuses group files that exist; a folder left by an interrupted setup is removed first."""
    if disk_dir is None:
        raise ValueError("disk_offload needs a folder for the offloaded weights")
    disk_dir = Path(disk_dir)
    if disk_dir.exists() and not (disk_dir / DISK_COMPLETE_MARKER).is_file():
        shutil.rmtree(disk_dir)
    disk_dir.mkdir(parents=True, exist_ok=True)
    return disk_dir


def _block_container(module: torch.nn.Module) -> Optional[str]:
    """For models whose block list sits one level down (T5/UMT5: encoder.block): that child's name."""
    if any(isinstance(c, torch.nn.ModuleList) for c in module.children()):
        return None
    for name, child in module.named_children():
        if any(isinstance(c, torch.nn.ModuleList) for c in child.children()):
            return name
    return None


def apply_text_encoder(text_encoder: torch.nn.Module, device: torch.device) -> None:
    """Block-level group offload, no streams (see the module docstring)."""
    container = _block_container(text_encoder)
    apply_group_offloading(
        text_encoder,
        onload_device=device,
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=False,
        block_modules=[container] if container else None,
    )


ROOT_HOME_ATTR = "_lowvram_home"


def keep_root_group_resident(transformer: torch.nn.Module) -> None:
    """Keep the non-block part of a block-offloaded transformer on the GPU while denoising.

    diffusers' block-level offload puts the modules outside the block list (embeddings, head, the root's
    own parameters) in a group without a stream that is copied in from pageable memory before every
    forward and copied back out (device to pageable, ~2 GB/s) after it: 300 ms of every 3.3 s forward of
    the 14B (bench run 2 profile, docs/benchmarks.md). The planner already counts those weights on the GPU
    ("rest" bytes), so they stay there: the group's offload becomes a no-op, and offload_groups() sends
    them home when the transformer leaves the GPU.
    """
    registry = getattr(transformer, "_diffusers_hook", None)
    hook = registry.get_hook("group_offloading") if registry is not None else None
    group = getattr(hook, "group", None)
    if group is None or group.stream is not None or group.offload_to_disk_path is not None:
        return
    setattr(group, ROOT_HOME_ATTR, group.offload_device)
    group.offload_device = group.onload_device


def offload_groups(module: torch.nn.Module) -> None:
    """Send every onloaded group back (after a failure mid-forward the hooks may not have)."""
    for hook in group_hooks(module):
        group = hook.group
        home = getattr(group, ROOT_HOME_ATTR, None)
        target = home if home is not None else group.offload_device
        if any(storage_device(t) != target for t in group_tensors(group)):
            if home is None:
                group.offload_()
                continue
            resident_on = group.offload_device
            group.offload_device = home
            try:
                group.offload_()
            finally:
                group.offload_device = resident_on


def materialize_on_cpu(module: torch.nn.Module) -> None:
    """Load disk-offloaded groups back into RAM (before their hooks are removed)."""
    for hook in group_hooks(module):
        group = hook.group
        if group.offload_to_disk_path is None:
            continue
        onload, stream = group.onload_device, group.stream
        group.onload_device, group.stream = torch.device("cpu"), None
        try:
            group.onload_()
        finally:
            group.onload_device, group.stream = onload, stream
