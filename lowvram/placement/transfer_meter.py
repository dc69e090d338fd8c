"""Count the bytes diffusers' group offloading moves onto the compute device.

Every onload of a group goes through `ModuleGroup.onload_()`. The meter wraps that method on each
group under a module and adds the group's tensor bytes per call, split into block groups (under
`blocks.`) and the rest. It observes; it changes no placement. A transformer without group offloading
moves nothing per call, and the meter reads zero.

On a CPU-only machine (onload_device="cpu", as the tests run it) the copies are no-ops but the count
is still the number of bytes the offload hooks asked to move, which is what a GPU would move.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lowvram.placement.quanto_offload import group_tensors, hooked_modules
from lowvram.placement.quanto_offload import (
    storage_bytes as tensor_bytes,  # QTensors count their inner (int8 ...) bytes
)

GROUP_OFFLOADING_HOOK = "group_offloading"  # diffusers.hooks.group_offloading._GROUP_OFFLOADING


@dataclass(frozen=True)
class Moved:
    """Bytes onloaded, in total and of transformer blocks."""

    total: int = 0
    blocks: int = 0

    def __sub__(self, other: "Moved") -> "Moved":
        return Moved(self.total - other.total, self.blocks - other.blocks)


def offload_groups(root: Any) -> list[tuple[Any, bool]]:
    """(ModuleGroup, is_block_group) for every group-offloading hook under `root`, each group once."""
    names = {id(m): name for name, m in root.named_modules()}
    seen: dict[int, tuple[Any, bool]] = {}
    for module, hook in hooked_modules(root):
        if id(hook.group) in seen:
            continue
        group = hook.group
        members = list(group.modules) or [module]
        is_block = any(names.get(id(m), "").startswith("blocks.") for m in members)
        seen[id(group)] = (group, is_block)
    return list(seen.values())


def group_bytes(group: Any) -> int:
    return sum(tensor_bytes(t) for t in group_tensors(group))


class TransferMeter:
    """Context manager: while inside, counts onloaded bytes under `root`."""

    def __init__(self, root: Any):
        self.root = root
        self.total = 0
        self.blocks = 0
        self._wrapped: list[Any] = []

    def read(self) -> Moved:
        return Moved(self.total, self.blocks)

    def __enter__(self) -> "TransferMeter":
        for group, is_block in offload_groups(self.root):
            if "onload_" in vars(group):
                continue  # already metered by an enclosing meter
            self._wrap(group, group_bytes(group), is_block)
        return self

    def _wrap(self, group: Any, size: int, is_block: bool) -> None:
        original = group.onload_

        def counted_onload():
            self.total += size
            if is_block:
                self.blocks += size
            return original()

        group.onload_ = counted_onload
        self._wrapped.append(group)

    def __exit__(self, *exc) -> bool:
        for group in self._wrapped:
            vars(group).pop("onload_", None)
        self._wrapped.clear()
        return False
