"""Cache of quantized components: quantize once, reload without materializing bf16 weights.

Layout: cache_dir()/quantized/<identity>-<component>-<level>-<dtype>[-lora<key>]/ holding
  model-NNNNN.safetensors   the quantized state dict in <= 2 GiB shards (quanto weights flattened to _data/_scale/...,
                            torchao's to _weight_qdata/_weight_scale by torchao's own safetensors support)
  quantization_map.json     optimum.quanto.quantization_map(module) (quanto levels)
  torchao_metadata.json     torchao's per-tensor metadata (the fast levels fp8_fast / int8_fast)
  lowvram_quant.json        class, level, dtype, tied-weight aliases, the identity it was made from
The identity hashes the checkpoint folder's path and its component files' names, sizes and mtimes,
so a changed checkpoint gets a new entry. A component with LoRAs fused into it before quantizing has its own
entry per LoRA set (`-lora<key>`: lowvram.loras.apply.lora_key, the files' sha256 and scales), so a cached
int8 model is never reused for another LoRA set, nor the plain model for a fused one. Entries are written into a
scratch folder (lowvram.io.scratch: a crashed writer's folder is swept at the next start) and renamed into place.

Two processes that need the same missing entry do not both quantize it: the first one to miss holds the entry's
lock (lowvram.io.locks: `<entry>.lock`, released by the system when its process dies) from the miss until its save(); the
second waits on the lock, then loads the entry. A load that ends without saving an entry it missed (it failed,
or fell back to another level) gives the lock up then (`release_fills`, called by lowvram.sampling.runner.load_model);
a waiter never waits longer than lowvram.io.locks.FILL_WAIT_S.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from lowvram.io import locks
from lowvram.paths import cache_dir
from planner.plan import FAST_LEVELS

log = logging.getLogger(__name__)

CACHE_VERSION = 1
WEIGHTS_PATTERN = "model-{:05d}.safetensors"
# safetensors serializes a whole file in memory before writing: shards bound that transient copy.
SHARD_BYTES = 2 * 1024**3
QMAP_FILE = "quantization_map.json"
TORCHAO_FILE = "torchao_metadata.json"
INFO_FILE = "lowvram_quant.json"


def checkpoint_identity(folder: Path, component: str) -> str:
    """Hash of the component's files (relative name, size, mtime) and the folder's path."""
    folder = Path(folder).resolve()
    h = hashlib.sha256(str(folder).encode())
    sub = folder / component
    for path in sorted(p for p in sub.rglob("*") if p.is_file()):
        st = path.stat()
        h.update(f"\0{path.relative_to(sub)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def entry_path(folder: Path, component: str, level: str, dtype: str, lora_key: str = "") -> Path:
    lora = f"-lora{lora_key}" if lora_key else ""
    return cache_dir() / "quantized" / f"{checkpoint_identity(folder, component)}-{component}-{level}-{dtype}{lora}"


def _component_class(folder: Path, component: str) -> tuple[str, str]:
    index = json.loads((Path(folder) / "model_index.json").read_text())
    library, class_name = index[component]
    return library, class_name


def _aliases(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop tied duplicates (safetensors refuses shared storage); remember alias -> kept key."""
    kept: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for key, t in state_dict.items():
        ident = (t.data_ptr(), tuple(t.shape), t.dtype) if t.data_ptr() else None
        if ident is not None and ident in seen:
            aliases[key] = seen[ident]
            continue
        if ident is not None:
            seen[ident] = key
        kept[key] = t.contiguous()
    return kept, aliases


def _shards(tensors: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += nbytes
    return shards


_filling: dict[Path, Any] = {}  # entry -> the lock this process holds from its miss until its save()


def release_fills() -> None:
    """Give up the entries this process missed but has not filled (its load ended without a save for them)."""
    while _filling:
        locks.unlock(_filling.popitem()[1])


def save(module: torch.nn.Module, folder: Path, component: str, level: str, dtype: str, lora_key: str = "") -> Path:
    """Write the quantized module to its cache entry (atomically, under the entry's lock). Returns the entry's path."""
    target = entry_path(folder, component, level, dtype, lora_key)
    lock = _filling.pop(target, None) or locks.lock_entry(target)
    try:
        if (target / INFO_FILE).is_file():  # another process filled it meanwhile (our wait timed out)
            return target
        return _write(module, folder, component, level, dtype, target, lora_key)
    finally:
        locks.unlock(lock)


def _write(module: torch.nn.Module, folder: Path, component: str, level: str, dtype: str, target: Path, lora_key: str) -> Path:
    import safetensors.torch
    from optimum.quanto import quantization_map

    from lowvram.io import scratch

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch.sweep(target.parent)
    library, class_name = _component_class(folder, component)
    state = {k: v.detach().to("cpu") for k, v in module.state_dict().items()}
    torchao_meta = None
    if level in FAST_LEVELS:
        from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

        from lowvram.placement.quanto_offload import is_qtensor

        # torchao's tensors as their plain inner tensors + the metadata that rebuilds them; the rest as it is
        quantized = {k: v for k, v in state.items() if is_qtensor(v)}
        flat, torchao_meta = flatten_tensor_state_dict(quantized)
        state = {**{k: v for k, v in state.items() if k not in quantized}, **flat}
    tensors, aliases = _aliases(state)
    tmp = scratch.new_dir(target.parent, "quantized")
    try:
        for i, shard in enumerate(_shards(tensors, SHARD_BYTES)):
            safetensors.torch.save_file(shard, tmp / WEIGHTS_PATTERN.format(i))
        if torchao_meta is not None:
            (tmp / TORCHAO_FILE).write_text(json.dumps(torchao_meta, indent=1))
        else:
            (tmp / QMAP_FILE).write_text(json.dumps(quantization_map(module), indent=1))
        info = dict(
            lowvram_quant_cache_version=CACHE_VERSION,
            library=library,
            class_name=class_name,
            component=component,
            level=level,
            dtype=dtype,
            aliases=aliases,
            checkpoint=str(Path(folder).resolve()),
            fused_loras=lora_key,
        )
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1))
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / INFO_FILE).is_file():  # another process won the race with a complete entry otherwise
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _empty_module(folder: Path, component: str, library: str, class_name: str) -> torch.nn.Module:
    """The component's architecture with parameters on the meta device (buffers real: they are small and
    some, like Wan's rotary tables, are not in the state dict)."""
    import importlib

    from accelerate import init_empty_weights

    cls = getattr(importlib.import_module(library), class_name)
    path = Path(folder) / component
    with init_empty_weights(include_buffers=False):
        if hasattr(cls, "load_config"):  # diffusers ModelMixin
            return cls.from_config(cls.load_config(path))
        config = cls.config_class.from_pretrained(path)  # transformers PreTrainedModel
        return cls(config)


def load(folder: Path, component: str, level: str, dtype: str, lora_key: str = "") -> Optional[torch.nn.Module]:
    """The cached quantized component on the CPU (with the LoRA set `lora_key` fused), or None when there is no
    (valid) entry: then this process holds the entry's fill lock until its save() (another process filling it
    now is waited for first)."""
    from lowvram.io import scratch

    entry = entry_path(folder, component, level, dtype, lora_key)
    scratch.sweep(entry.parent)
    module = _load(folder, component, level, entry)
    if module is not None or entry in _filling:
        return module
    lock = locks.lock_entry(entry)
    module = _load(folder, component, level, entry)  # filled by the process we waited for
    if module is not None:
        locks.unlock(lock)
        return module
    if lock is not None:
        _filling[entry] = lock
    return None


def _load(folder: Path, component: str, level: str, entry: Path) -> Optional[torch.nn.Module]:
    try:
        info = json.loads((entry / INFO_FILE).read_text())
        qmap = json.loads((entry / (TORCHAO_FILE if level in FAST_LEVELS else QMAP_FILE)).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if info.get("lowvram_quant_cache_version") != CACHE_VERSION:
        return None
    try:
        return _load_entry(folder, component, entry, info, qmap)
    except Exception as exc:  # a damaged entry (truncated shard, wrong shapes): re-quantize, never fail the run
        log.warning("quantized cache entry %s is damaged (%s: %s); discarding it and quantizing again", entry, type(exc).__name__, exc)
        shutil.rmtree(entry, ignore_errors=True)
        return None


def _load_entry(folder: Path, component: str, entry: Path, info: dict, qmap: dict) -> Optional[torch.nn.Module]:
    import safetensors.torch

    module = _empty_module(folder, component, info["library"], info["class_name"])
    state_dict = {}
    for shard in sorted(entry.glob("model-*.safetensors")):
        state_dict.update(safetensors.torch.load_file(shard, device="cpu"))
    if info.get("level") in FAST_LEVELS:
        from lowvram.models.library_logs import quiet_torchao_import

        quiet_torchao_import()
        from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

        for alias, key in info.get("aliases", {}).items():  # a tied tensor was stored once: both names rebuild
            state_dict[alias] = state_dict[key]
        quantized, plain = unflatten_tensor_state_dict(state_dict, qmap)
        state_dict = {**plain, **quantized}
        info = dict(info, aliases={})
    else:
        _quantize_like(module, qmap)
    # assign=True: tensors are taken as they are (dtype included), nothing is copied into meta storage.
    module.load_state_dict(state_dict, strict=False, assign=True)
    for alias, key in info.get("aliases", {}).items():
        _set_tensor(module, alias, _get_tensor(module, key))
    left_on_meta = [n for n, p in list(module.named_parameters()) + list(module.named_buffers()) if p.device.type == "meta"]
    if left_on_meta:
        return None  # an incomplete entry: the caller quantizes from the checkpoint again
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def _quantize_like(module: torch.nn.Module, qmap: dict) -> None:
    """quanto's modules where the map says, so that the saved quanto tensors load into them."""
    from optimum.quanto import quantize

    by_qtype: dict[tuple[str, str], list[str]] = {}
    for name, q in qmap.items():
        by_qtype.setdefault((q["weights"], q["activations"]), []).append(name)
    for (weights, activations), names in by_qtype.items():
        quantize(
            module,
            weights=None if weights == "none" else weights,
            activations=None if activations == "none" else activations,
            include=names,
        )


def _get_tensor(module: torch.nn.Module, dotted: str) -> Any:
    owner, _, name = dotted.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, name)


def _set_tensor(module: torch.nn.Module, dotted: str, value: Any) -> None:
    owner, _, name = dotted.rpartition(".")
    setattr(module.get_submodule(owner) if owner else module, name, value)
