"""A checkpoint's components converted once to the plan's dtype, so that they load memory-mapped.

The Wan diffusers checkpoints store their transformers in float32 (a Wan2.2 A14B expert is 57 GB on disk);
lowvram runs them in bfloat16. Loading with a dtype conversion builds the whole converted component in process
memory (26.7 GB per expert): two experts do not fit a 32 or 64 GB machine, and that memory cannot be dropped.
Converted once into lowvram's cache (shard by shard, so the transient is one shard), the component then loads
memory-mapped: its pages are page cache the kernel can drop and read again, which is what the planner assumes
(planner.memory).

Layout: cache_dir()/converted/<identity>-<component>-<dtype>/ holds the component's config files and its
safetensors shards under their original names (the index too, when sharded), so diffusers' / transformers'
from_pretrained reads it like the original. Entries are written into a scratch folder (lowvram.io.scratch: a
converter killed half-way leaves nothing for good) and renamed, under the entry's lock (lowvram.io.locks: two
processes that miss one entry convert it once).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

from lowvram.io import locks, scratch
from lowvram.paths import cache_dir

log = logging.getLogger(__name__)

COMPLETE = "lowvram_converted.json"
VERSION = 1
# safetensors dtype names -> torch dtype names (floating types only: integer tensors are never converted)
FLOAT_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# below this size converting costs more time than the process memory it saves
MIN_BYTES = 256 * 1024**2


def stored_dtype(component_folder: Path) -> Optional[str]:
    """The torch dtype name most of a component's floating weights are stored in (from the headers), or None."""
    from planner.spec import read_safetensors_header

    counts: Counter = Counter()
    for path in sorted(Path(component_folder).glob("*.safetensors")):
        for info in read_safetensors_header(path).values():
            name = FLOAT_DTYPES.get(info.get("dtype", ""))
            if name:
                n = 1
                for s in info.get("shape", ()):
                    n *= int(s)
                counts[name] += n
    return counts.most_common(1)[0][0] if counts else None


def _weights_bytes(component_folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(component_folder).glob("*.safetensors"))


def needs_conversion(component_folder: Path, dtype: str) -> bool:
    """Whether loading `component_folder` at `dtype` would convert (and so hold the converted copy in memory)."""
    have = stored_dtype(component_folder)
    return have is not None and have != dtype and _weights_bytes(component_folder) >= MIN_BYTES


def entry_path(folder: Path, component: str, dtype: str) -> Path:
    from lowvram.placement.quant_cache import checkpoint_identity

    return cache_dir() / "converted" / f"{checkpoint_identity(folder, component)}-{component}-{dtype}"


def convert(folder: Path, component: str, dtype: str, keep: tuple[str, ...] = ()) -> Path:
    """Write (once) the component converted to `dtype`; returns the entry. Raises OSError on a full disk.

    `keep`: module names whose weights the model class keeps in float32 (`_keep_in_fp32_modules`: Wan's norms,
    time embedder, ...): they stay as stored, as a converting load leaves them."""
    target = entry_path(folder, component, dtype)
    if (target / COMPLETE).is_file():
        return target
    with locks.entry_locked(target):  # another process converting the same entry is waited for, not raced
        if (target / COMPLETE).is_file():
            return target
        return _write(folder, component, dtype, keep, target)


def _write(folder: Path, component: str, dtype: str, keep: tuple[str, ...], target: Path) -> Path:
    import safetensors.torch
    import torch
    from safetensors import safe_open

    source = Path(folder) / component
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch.sweep(target.parent)  # what a converter killed half-way left (up to a whole shard)
    tmp = scratch.new_dir(target.parent, "converted")
    try:
        for path in sorted(source.iterdir()):
            if path.is_file() and not path.name.endswith(".safetensors"):
                shutil.copy2(path, tmp / path.name)  # config.json, the shard index: unchanged
        to = getattr(torch, dtype)
        for path in sorted(source.glob("*.safetensors")):  # one shard in memory at a time
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata()
                tensors = {}
                for key in f.keys():
                    t = f.get_tensor(key)
                    kept = any(m in key.split(".") for m in keep)
                    tensors[key] = t.to(to) if t.is_floating_point() and not kept else t
            safetensors.torch.save_file(tensors, str(tmp / path.name), metadata=metadata)
            del tensors
        (tmp / COMPLETE).write_text(json.dumps({"version": VERSION, "dtype": dtype, "source": str(source.resolve())}))
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / COMPLETE).is_file():  # another process finished the same entry first: use it
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_converted(folder: Path, component: str, dtype: str, library: str, class_name: str) -> Any:
    """The component from its converted entry (converting first if needed), loaded memory-mapped at `dtype`."""
    import importlib

    import torch

    cls = getattr(importlib.import_module(library), class_name)
    entry = convert(folder, component, dtype, tuple(getattr(cls, "_keep_in_fp32_modules", None) or ()))
    return cls.from_pretrained(str(entry), dtype=getattr(torch, dtype))


def preload(folder: Path, dtypes: dict[str, str], skip: tuple[str, ...] = (), free_bytes: Optional[Callable[[Path], int]] = None) -> dict:
    """Components of `folder` whose stored dtype differs from the plan's, from the converted cache (made on first
    use). A component is left to the normal (converting) load when the cache folder has no room for it."""
    from safetensors import SafetensorError

    index = json.loads((Path(folder) / "model_index.json").read_text())
    free = free_bytes or (lambda p: shutil.disk_usage(p).free)
    out = {}
    for component, dtype in dtypes.items():
        entry = index.get(component)
        sub = Path(folder) / component
        if component in skip or not (isinstance(entry, list) and entry[0]) or not sub.is_dir():
            continue
        if not needs_conversion(sub, dtype):
            continue
        target = entry_path(folder, component, dtype)
        if not (target / COMPLETE).is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            need = _weights_bytes(sub)  # an upper bound: the converted copy is no larger than the source
            if free(target.parent) < need:
                log.warning("no room to cache %s converted to %s (%.1f GiB needed): it is converted in memory instead",
                            component, dtype, need / 1024**3)
                continue
        try:
            out[component] = load_converted(folder, component, dtype, entry[0], entry[1])
        except (OSError, SafetensorError) as exc:  # a disk that filled while writing: the normal load still works
            log.warning("could not cache %s converted to %s: %s", component, dtype, exc)
    return out
