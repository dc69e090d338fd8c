"""Activations between GPUs, for plans that put a denoiser on more than one card or on another card than the
latents (planner.plan: `ComponentPlan.devices`).

- A layer split: a hook on the first block of each card moves the block's inputs (hidden states, text states,
  time projection, rotary tables) onto that card, and one on the last block moves its output back to the
  first card, where the denoiser's other modules are. So the activations cross once per forward each way.
- An expert on its own card: a hook on the denoiser moves its inputs onto that card and its output back to the
  device the hidden states came from.

diffusers ModelHooks (registered under DEVICE_HOOK, removable), registered at placement time: the step cache's
hooks, attached for each run, wrap them, so they see the output back on the first card. On a CPU plan the
"devices" are all the CPU and the hooks move nothing: the same code path runs in the tests.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
from diffusers.hooks.hooks import HookRegistry, ModelHook

from planner.plan import ComponentPlan

DEVICE_HOOK = "lowvram_device"


def to_device(obj: Any, device: torch.device) -> Any:
    """`obj` with every tensor in it (in tuples, lists and dicts too) on `device`; other values as they are."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.device == device else obj.to(device, non_blocking=False)
    if isinstance(obj, tuple):
        return type(obj)(*(to_device(x, device) for x in obj)) if hasattr(obj, "_fields") else tuple(to_device(x, device) for x in obj)
    if isinstance(obj, list):
        return [to_device(x, device) for x in obj]
    if isinstance(obj, dict):
        moved = {k: to_device(v, device) for k, v in obj.items()}
        try:
            return type(obj)(**moved)
        except TypeError:
            return moved
    return obj


def _first_tensor(args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


class DeviceHook(ModelHook):
    """Inputs onto `device` (None: left where they are); the output onto `output_device`, or with `back` onto the
    device the first input tensor came from."""

    def __init__(self, device: Optional[str], output_device: Optional[str] = None, back: bool = False) -> None:
        super().__init__()
        self.device = torch.device(device) if device else None
        self.output_device = torch.device(output_device) if output_device else None
        self.back = back
        self._came_from: Optional[torch.device] = None

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        if self.back:
            first = _first_tensor(args, kwargs)
            self._came_from = first.device if first is not None else None
        if self.device is not None:
            args, kwargs = to_device(args, self.device), to_device(kwargs, self.device)
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output):
        target = self._came_from if self.back else self.output_device
        self._came_from = None
        return to_device(output, target) if target is not None else output


def blocks_of(module: torch.nn.Module) -> torch.nn.ModuleList:
    from lowvram.placement.offload import _block_list_name

    return getattr(module, _block_list_name(module))


def apply_device_hooks(module: torch.nn.Module, cp: ComponentPlan, home: str) -> None:
    """Hook a denoiser per its plan: a layer split (`cp.layer_split`), or a whole denoiser on another device than
    `home` (where the runner keeps the latents). Nothing to do otherwise."""
    if cp.layer_split:
        blocks = blocks_of(module)
        where = cp.block_devices(len(blocks))
        for i, block in enumerate(blocks):
            enter = where[i] if i == 0 or i in cp.split else None  # the first block of each card
            leave = cp.devices[0] if i == len(blocks) - 1 else None  # back to where the other modules are
            if enter or leave:
                HookRegistry.check_if_exists_or_initialize(block).register_hook(DeviceHook(enter, leave), DEVICE_HOOK)
    elif cp.devices and cp.devices[0] != home:
        HookRegistry.check_if_exists_or_initialize(module).register_hook(DeviceHook(cp.devices[0], back=True), DEVICE_HOOK)


def remove_device_hooks(module: torch.nn.Module) -> None:
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None:
        registry.remove_hook(DEVICE_HOOK, recurse=True)


def has_device_hooks(module: torch.nn.Module) -> bool:
    return any(getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook(DEVICE_HOOK) is not None
               for m in module.modules())


@contextlib.contextmanager
def current_device(device: str) -> Iterator[None]:
    """Make `device` (cuda:N) the current CUDA device inside the block: streams that group offloading creates and
    waits on belong to the current device, so a denoiser streamed on cuda:1 is set up and run under it."""
    if device.startswith("cuda:") and torch.cuda.is_available():
        with torch.cuda.device(torch.device(device)):
            yield
    else:
        yield


__all__ = ["DEVICE_HOOK", "DeviceHook", "apply_device_hooks", "blocks_of", "current_device", "has_device_hooks",
           "remove_device_hooks", "to_device"]
