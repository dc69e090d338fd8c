"""Make quantized weights (optimum-quanto's and torchao's tensor subclasses) compose with diffusers group offloading.

diffusers' hooks move a parameter with `param.data = param.data.to(device)`. A quanto weight is a
tensor *wrapper* (`WeightQBytesTensor`, `WeightQBitsTensor`): assigning `.data` replaces the outer
wrapper only and leaves the inner `_data` / `_scale` (/ `_shift`) tensors where they were, so the
matmul later sees "mat2 is on cpu" (diffusers issue 12610). The fix here moves a quanto tensor as a
whole object: `t.to(device)` builds a new wrapper whose inner tensors live on `device`, and
`torch.utils.swap_tensors` puts it in place of the parameter, keeping the parameter's identity (the
groups key their pinned copies by parameter). Pinning and disk files work on the inner tensors.

`QuantoModuleGroup` subclasses diffusers' `ModuleGroup` and changes only the tensor-level steps;
`apply_group_offloading` is diffusers' own function, run while its module builds our group class.

torchao's quantized tensors (`Float8Tensor`, `Int8Tensor`: lowvram.placement.fast_quant) are wrappers of the
same kind and take the same path: diffusers moves them in memory itself, but its disk offload refuses them
(safetensors holds plain tensors) and its streamed offload assigns `.data` for anything not torchao-typed;
here both are handled by the wrapper's inner tensors, as for quanto.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager, nullcontext
from typing import Iterator

import safetensors.torch
import torch
from diffusers.hooks import group_offloading as _go
from optimum.quanto.tensor import QTensor

from lowvram.io.output import replacing

_PATCH_LOCK = threading.RLock()
# A module marked with this attribute keeps its tensors where placement puts them: offload groups neither
# stream nor pin them (unfused LoRA adapters: resident on the GPU while the base weights stream).
RESIDENT_ATTR = "_lowvram_resident"


def is_qtensor(t: torch.Tensor) -> bool:
    """A quantized weight made of inner tensors: optimum-quanto's QTensor or a torchao tensor subclass."""
    return isinstance(t, QTensor) or _is_torchao(t)


def _is_torchao(t: torch.Tensor) -> bool:
    utils = sys.modules.get("torchao.utils")  # no torchao tensor can exist before torchao was imported
    return utils is not None and isinstance(t, utils.TorchAOBaseTensor)


def _is_wrapper(t: torch.Tensor) -> bool:
    """A tensor subclass made of inner tensors (quanto's QTensor and its PackedTensor payloads)."""
    return type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter and hasattr(t, "__tensor_flatten__")


def leaf_tensors(t: torch.Tensor, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(dotted path, plain tensor) for every plain tensor inside `t` (itself when it is plain)."""
    if not _is_wrapper(t):
        yield prefix, t
        return
    names, _ = t.__tensor_flatten__()
    for name in names:
        yield from leaf_tensors(getattr(t, name), f"{prefix}.{name}" if prefix else name)


def storage_device(t: torch.Tensor) -> torch.device:
    """Where the bytes are: for a quanto tensor, its first inner tensor (the wrapper's .device can lie)."""
    for _, leaf in leaf_tensors(t):
        return leaf.device
    return t.device


def storage_bytes(t: torch.Tensor) -> int:
    return sum(leaf.numel() * leaf.element_size() for _, leaf in leaf_tensors(t))


def rebuild(t: torch.Tensor, fn) -> torch.Tensor:
    """A copy of wrapper `t` whose plain inner tensors are `fn(inner)`; `t` itself is not changed."""
    if not _is_wrapper(t):
        return fn(t)
    names, meta = t.__tensor_flatten__()
    inner = {name: rebuild(getattr(t, name), fn) for name in names}
    return type(t).__tensor_unflatten__(inner, meta, t.size(), t.stride())


def _fill(skeleton: torch.Tensor, tensors: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """A wrapper shaped like `skeleton` whose plain tensors are tensors[prefix + path]."""
    if not _is_wrapper(skeleton):
        return tensors[prefix]
    names, meta = skeleton.__tensor_flatten__()
    inner = {name: _fill(getattr(skeleton, name), tensors, f"{prefix}.{name}") for name in names}
    return type(skeleton).__tensor_unflatten__(inner, meta, skeleton.size(), skeleton.stride())


def put(param: torch.Tensor, value: torch.Tensor) -> None:
    """Make `param` hold `value`. Quanto tensors are swapped in whole; plain tensors via `.data`."""
    if is_qtensor(param) or is_qtensor(value):
        torch.utils.swap_tensors(param, value)
    else:
        param.data = value


def move_(param: torch.Tensor, device: torch.device | str, non_blocking: bool = False) -> None:
    """Move a parameter or buffer in place, inner tensors included."""
    source = param if is_qtensor(param) else param.data
    put(param, source.to(device, non_blocking=non_blocking))


def pin(t: torch.Tensor) -> torch.Tensor:
    return rebuild(t, lambda x: x if x.is_pinned() else x.pin_memory())


def is_pinned(t: torch.Tensor) -> bool:
    return all(leaf.is_pinned() for _, leaf in leaf_tensors(t))


def resident_tensors(modules) -> set[int]:
    """ids of the tensors of modules marked RESIDENT_ATTR under `modules`."""
    out: set[int] = set()
    for m in modules:
        for sub in m.modules():
            if getattr(sub, RESIDENT_ATTR, False):
                out.update(id(t) for t in list(sub.parameters()) + list(sub.buffers()))
    return out


def group_tensors(group: _go.ModuleGroup) -> list[torch.Tensor]:
    """Every parameter and buffer an offload group moves (its modules' and its loose ones), each once;
    resident ones (RESIDENT_ATTR) are not the group's to move."""
    out = []
    for m in group.modules:
        out.extend(m.parameters())
        out.extend(m.buffers())
    out.extend(group.parameters)
    out.extend(group.buffers)
    resident = getattr(group, "_lowvram_resident", None)
    if resident is None:
        resident = resident_tensors(group.modules)
    return [t for t in dict.fromkeys(out) if id(t) not in resident]


# Page-locked buffers handed from one streamed component to the next (a two-expert model's experts have one
# shape): {(shape, dtype): [pinned tensors]}. Filling a buffer is a host copy; page-locking a new one goes
# through cudaHostAlloc at ~1 GB/s (bench wan22 run 12), the slow part of an expert's phase start.
_PINNED_POOL: "threading.local" = threading.local()


@contextmanager
def pinned_pool(pool: dict):
    """While active, the groups being built take their pinned copies from `pool` (filled with a copy) when a
    buffer of the tensor's shape and dtype is there, instead of allocating page-locked memory."""
    previous = getattr(_PINNED_POOL, "pool", None)
    _PINNED_POOL.pool = pool
    try:
        yield pool
    finally:
        _PINNED_POOL.pool = previous


def harvest_pinned(module: torch.nn.Module, pool: dict) -> int:
    """Put the plain pinned copies of `module`'s streamed groups into `pool` (before its hooks go); returns bytes."""
    seen, total = set(), 0
    for hook in group_hooks(module):
        for t in getattr(hook.group, "cpu_param_dict", {}).values():
            if is_qtensor(t) or not t.is_pinned() or id(t) in seen:
                continue
            seen.add(id(t))
            pool.setdefault((tuple(t.shape), t.dtype), []).append(t)
            total += t.numel() * t.element_size()
        hook.group.cpu_param_dict = {}
    return total


class QuantoModuleGroup(_go.ModuleGroup):
    """diffusers' ModuleGroup with quanto-aware tensor moves (plain tensors take diffusers' own path) that
    leaves resident tensors (RESIDENT_ATTR: LoRA adapters) alone."""

    def __init__(self, modules, *args, **kwargs):
        # before diffusers' __init__: it pins (or maps to disk files) every tensor of the group
        self._lowvram_resident = resident_tensors(modules)
        super().__init__(modules, *args, **kwargs)
        if self._lowvram_resident and self.offload_to_disk_path is not None:
            self.tensor_to_key = {t: k for t, k in self.tensor_to_key.items() if id(t) not in self._lowvram_resident}
            self.key_to_tensor = {k: t for t, k in self.tensor_to_key.items()}

    def _init_cpu_param_dict(self):
        if self.stream is None:
            return {}
        return {t: self._to_cpu(t, self.low_cpu_mem_usage) for t in group_tensors(self)}

    def _process_tensors_from_modules(self, pinned_memory=None, default_stream=None):
        for t in group_tensors(self):
            source = pinned_memory[t] if pinned_memory else (t if is_qtensor(t) else t.data)
            self._transfer_tensor_to_device(t, source, default_stream)

    def _to_cpu(self, tensor, low_cpu_mem_usage):  # called as self._to_cpu by _init_cpu_param_dict
        if not is_qtensor(tensor):
            pool = getattr(_PINNED_POOL, "pool", None)
            bucket = pool.get((tuple(tensor.shape), tensor.dtype)) if pool and not low_cpu_mem_usage else None
            if bucket:
                pinned = bucket.pop()
                pinned.copy_(tensor.data)
                return pinned
            # super(), not _go.ModuleGroup: while _quanto_groups() is active that name is this class
            return super()._to_cpu(tensor, low_cpu_mem_usage)
        # A new wrapper either way (never the parameter itself); no copy when it already is on the CPU.
        t = tensor if storage_device(tensor).type == "cpu" else tensor.to("cpu")
        return rebuild(t, lambda x: x) if low_cpu_mem_usage else pin(t)

    @contextmanager
    def _pinned_memory_tensors(self):
        pinned = {}
        try:
            for param, tensor in self.cpu_param_dict.items():
                if is_qtensor(tensor):
                    pinned[param] = tensor if is_pinned(tensor) else pin(tensor)
                else:
                    pinned[param] = tensor if tensor.is_pinned() else tensor.pin_memory()
            yield pinned
        finally:
            pinned = None

    def _transfer_tensor_to_device(self, tensor, source_tensor, default_stream):
        if not is_qtensor(tensor):
            return super()._transfer_tensor_to_device(tensor, source_tensor, default_stream)
        put(tensor, source_tensor.to(self.onload_device, non_blocking=self.non_blocking))
        if self.record_stream:
            for _, leaf in leaf_tensors(tensor):
                leaf.record_stream(default_stream)

    def _offload_to_memory(self):
        if self.stream is None:
            if self._lowvram_resident:  # module.to() would take the resident tensors along
                for t in group_tensors(self):
                    move_(t, self.offload_device)
                return
            # diffusers calls module.to(), which swaps wrapper subclasses correctly; loose params/buffers
            # of the group need the same treatment.
            for group_module in self.modules:
                group_module.to(self.offload_device, non_blocking=False)
            for t in list(self.parameters) + list(self.buffers):
                move_(t, self.offload_device)
            return
        if not self.record_stream:
            self._torch_accelerator_module.current_stream().synchronize()
        for t in group_tensors(self):
            cached = self.cpu_param_dict[t]
            if is_qtensor(t):
                # A fresh wrapper around the cached inner tensors: the pinned copy itself stays untouched.
                put(t, rebuild(cached, lambda x: x))
            else:
                t.data = cached

    # -- disk: safetensors holds plain tensors, so a quanto tensor is stored as its inner tensors --

    def _has_qtensors(self) -> bool:
        return any(is_qtensor(t) for t in self.tensor_to_key)

    def _offload_to_disk(self):
        if not self._has_qtensors():
            return super()._offload_to_disk()
        if self.stream is not None and not self.record_stream:
            self._torch_accelerator_module.current_stream().synchronize()
        skeletons = self._skeletons()
        if not self._is_offloaded_to_disk and not os.path.exists(self.safetensors_file_path):
            os.makedirs(os.path.dirname(self.safetensors_file_path), exist_ok=True)
            flat = {}
            for tensor, key in self.tensor_to_key.items():
                # The file holds the device-independent layout (quanto repacks e.g. fp8 for CUDA kernels).
                source = tensor.to(self.offload_device) if is_qtensor(tensor) else tensor.data.to(self.offload_device)
                if is_qtensor(tensor):
                    skeletons[key] = rebuild(source, lambda x: torch.empty_like(x, device="meta"))
                for path, leaf in leaf_tensors(source, key):
                    flat[path] = leaf.contiguous()
            _save_atomic(flat, self.safetensors_file_path)
        elif not self._is_offloaded_to_disk:  # files of an earlier run: the layout comes from the CPU weights
            for tensor, key in self.tensor_to_key.items():
                if is_qtensor(tensor):
                    skeletons[key] = rebuild(tensor.to("cpu"), lambda x: torch.empty_like(x, device="meta"))
        self._is_offloaded_to_disk = True
        # RAM keeps empty placeholders only (never touched, so they take no resident memory). No copy of
        # the onloaded weights is made: the file already holds them.
        for tensor, key in self.tensor_to_key.items():
            if is_qtensor(tensor):
                put(tensor, rebuild(skeletons[key], lambda x: torch.empty_like(x, device=self.offload_device)))
            else:
                tensor.data = torch.empty_like(tensor.data, device=self.offload_device)

    def _skeletons(self) -> dict:
        """key -> the quanto tensor's structure on the meta device, as stored in this group's file."""
        if not hasattr(self, "_lowvram_skeletons"):
            self._lowvram_skeletons = {}
        return self._lowvram_skeletons

    def _onload_from_disk(self):
        if not self._has_qtensors():
            return super()._onload_from_disk()
        if self.stream is not None:
            self.stream.synchronize()
        context = nullcontext() if self.stream is None else self._torch_accelerator_module.stream(self.stream)
        current_stream = self._torch_accelerator_module.current_stream() if self.record_stream else None
        with context:
            load_device = "cpu" if self.stream is not None else self.onload_device.type
            loaded = safetensors.torch.load_file(self.safetensors_file_path, device=load_device)
            if self.stream is not None:
                loaded = {k: v.pin_memory() for k, v in loaded.items()}
            for key, tensor in self.key_to_tensor.items():
                if is_qtensor(tensor):
                    value = _fill(self._skeletons()[key], loaded, key).to(self.onload_device, non_blocking=self.non_blocking)
                    put(tensor, value)
                    leaves = [leaf for _, leaf in leaf_tensors(tensor)]
                else:
                    tensor.data = loaded[key].to(self.onload_device, non_blocking=self.non_blocking)
                    leaves = [tensor.data]
                if self.record_stream:
                    for leaf in leaves:
                        leaf.record_stream(current_stream)


def _save_atomic(tensors: dict[str, torch.Tensor], path: str) -> None:
    # A crash mid-write must not leave a truncated file that a later run would load.
    with replacing(path, f"{path}.tmp-{os.getpid()}") as tmp:
        safetensors.torch.save_file(tensors, tmp)


@contextmanager
def _quanto_groups():
    """While active, diffusers' group offloading builds QuantoModuleGroup instead of ModuleGroup."""
    with _PATCH_LOCK:
        original = _go.ModuleGroup
        _go.ModuleGroup = QuantoModuleGroup
        try:
            yield
        finally:
            _go.ModuleGroup = original


def apply_group_offloading(module: torch.nn.Module, **kwargs) -> None:
    """diffusers.hooks.apply_group_offloading, with groups that move quanto tensors whole."""
    with _quanto_groups():
        _go.apply_group_offloading(module, **kwargs)


def hooked_modules(root: torch.nn.Module) -> Iterator[tuple[torch.nn.Module, _go.GroupOffloadingHook]]:
    """(module, its group-offloading hook) for every module under `root` that has one (diffusers
    registers them per submodule; several may share one group)."""
    for sub in root.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        hook = registry.get_hook(_go._GROUP_OFFLOADING) if registry is not None else None
        if hook is not None:
            yield sub, hook


def group_hooks(module: torch.nn.Module) -> list:
    """Every group-offloading hook under `module`."""
    return [hook for _, hook in hooked_modules(module)]
