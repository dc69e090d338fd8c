"""fp8 weights kept fp8 in memory and upcast one layer at a time when it computes.

This is diffusers' layerwise casting (hooks/layerwise_casting.py), registered under its name so
that diffusers sees the model's compute dtype, with two differences that files need:
- only the layer's `weight` is stored in fp8; its bias and everything else stay in the compute
  dtype (diffusers' hook casts the whole layer, which would round a bf16 bias to fp8);
- a "scaled fp8" file's per-layer scale (ComfyUI's `.scale_weight` / `.weight_scale`) multiplies the
  upcast weight: weight = fp8 x scale. The scale is a buffer of the layer, so offload hooks move it.
"""

from __future__ import annotations

from typing import Optional

import torch
from diffusers.hooks import HookRegistry
from diffusers.hooks.layerwise_casting import _LAYERWISE_CASTING_HOOK, LayerwiseCastingHook

SCALE_BUFFER = "weight_scale"
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


class StoredFp8Hook(LayerwiseCastingHook):
    """Upcast (and scale) the layer's fp8 weight before its forward; put the fp8 tensor back after."""

    def __init__(self, storage_dtype: torch.dtype, compute_dtype: torch.dtype, non_blocking: bool = False) -> None:
        super().__init__(storage_dtype, compute_dtype, non_blocking)
        self._stored: Optional[torch.Tensor] = None

    def initialize_hook(self, module: torch.nn.Module):
        return module  # loaded as stored: nothing to cast now

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        weight = module.weight
        self._stored = weight.data
        upcast = weight.data.to(self.compute_dtype, non_blocking=self.non_blocking)
        scale = getattr(module, SCALE_BUFFER, None)
        if scale is not None:
            upcast.mul_(scale.to(self.compute_dtype))  # in place: one compute-dtype copy of the layer at a time
        weight.data = upcast
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output):
        if self._stored is not None:
            module.weight.data = self._stored
            self._stored = None
        return output


def shaped_scale(scale: torch.Tensor, weight_shape: torch.Size) -> Optional[torch.Tensor]:
    """A per-tensor or per-output-channel scale, shaped to broadcast over the weight; None if it fits neither."""
    scale = scale.to(torch.float32)
    if scale.numel() == 1:
        return scale.reshape(())
    if scale.numel() == weight_shape[0]:
        return scale.reshape((-1,) + (1,) * (len(weight_shape) - 1))
    return None


def apply_stored_fp8(model: torch.nn.Module, compute_dtype: torch.dtype, scales: dict[str, torch.Tensor]) -> int:
    """Hook every layer whose weight is fp8; `scales` maps a layer's name to its shaped scale. Returns the count."""
    count = 0
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.nn.Parameter) or weight.dtype not in FP8_DTYPES:
            continue
        if name in scales:
            module.register_buffer(SCALE_BUFFER, scales[name], persistent=False)
        registry = HookRegistry.check_if_exists_or_initialize(module)
        registry.register_hook(StoredFp8Hook(weight.dtype, compute_dtype), _LAYERWISE_CASTING_HOOK)
        count += 1
    return count
