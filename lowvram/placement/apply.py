"""Apply a Plan to a loaded pipeline: quantize, attach offload hooks, move components per stage.

`prepare` runs once after loading, in a fixed order: attention (SDPA) -> fuse LoRAs (ComponentPlan.lora
"fused") -> quantize (and cache the quantized weights, keyed by the fused LoRAs too) -> unfused LoRA adapters
-> VAE tiling -> regional compile -> offload hooks (which wrap the compiled blocks and leave the adapters alone:
they move with the denoiser's phase). `enter_stage` then puts the stage's components on
the compute device and takes the others off it, so stage peaks do not add up: the text encoder leaves
before denoising, the denoiser before decoding, and at a two-expert model's boundary the active expert
leaves before the next one arrives. Components under offload hooks are never moved with `.to()`: their
hooks move each group on demand.

An expert that waits in its weights file (`idle="mmap"`) gets its offload hooks (and so its page-locked
copies) only for its own phase: on leaving, the hooks go and its tensors point at the memory-mapped
checkpoint again, so the pinned RAM is freed.

Several GPUs (lowvram.placement.devices): a layer-split denoiser moves block by block onto its cards; two
experts on their own cards both arrive for the denoise stage, the second one copied in the background while
the first computes. (A context-parallel plan places each process's components as a one-GPU plan; the runner
adds diffusers' context parallel hooks when it knows the job's token count: lowvram.parallel.group.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from planner.plan import ComponentPlan, Plan

log = logging.getLogger(__name__)

DENOISERS = ("transformer", "transformer_2")
COMPONENTS = ("text_encoder", "image_encoder", "transformer", "transformer_2", "vae")
STATE_ATTR = "_lowvram_placement"
# Hook names diffusers' group offloading registers (diffusers/hooks/group_offloading.py).
_OFFLOAD_HOOKS = ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading")


@dataclass
class PlacementState:
    """What prepare() did to a pipeline; read by enter_stage / leave_all / describe_device_state."""

    plan: Plan
    offloaded: set = field(default_factory=set)  # component names under group-offload hooks now
    resident_blocks: dict = field(default_factory=dict)  # denoiser -> indices of blocks moved whole per phase
    deferred: set = field(default_factory=set)  # denoisers whose hooks are attached only for their phase
    quantized: dict = field(default_factory=dict)  # component -> level
    quantized_from_cache: set = field(default_factory=set)
    compiled: set = field(default_factory=set)  # denoisers whose repeated blocks are compiled
    disk_dirs: dict = field(default_factory=dict)  # denoiser -> its disk-offload folder
    checkpoint: Optional[Path] = None
    # component (or "name.blocks.i") -> its CPU tensors while it sits on the GPU (moved whole): leaving is
    # then a pointer swap, not a copy back
    host: dict = field(default_factory=dict)
    # deferred denoiser -> its CPU tensors before its hooks pinned copies of them
    unpinned: dict = field(default_factory=dict)
    # page-locked buffers a detached expert leaves for the next one (lowvram.placement.quanto_offload.pinned_pool)
    pinned_pool: dict = field(default_factory=dict)
    # denoiser -> how it carries the job's LoRAs now: "fused" or "unfused" (may differ from the plan's when
    # a stored fp8 / GGUF file cannot be fused into)
    lora_modes: dict = field(default_factory=dict)
    # component -> (thread, errors) copying it onto its own GPU in the background (two experts on two cards)
    arriving: dict = field(default_factory=dict)

    @property
    def disk_dir(self) -> Optional[str]:
        return next(iter(self.disk_dirs.values()), None)


def compute_device(plan: Plan) -> str:
    return plan.device


def _device_of(plan: Plan, name: str) -> str:
    """Where a component runs: its own device when the plan names one, else the plan's ("cuda": the current
    device, which in a context-parallel process is that process's GPU)."""
    cp = plan.get(name)
    if cp is None or cp.placement == "cpu":
        return "cpu"
    if cp.devices:
        return cp.devices[0]
    return "cpu" if plan.device == "cpu" else plan.device


def component_device(plan: Plan, name: str) -> str:
    """The device a component computes on (cuda:N when the plan names one; "cuda" is the current device)."""
    return _device_of(plan, name)


def home_device(plan: Plan) -> str:
    """Where the latents and the denoisers' non-block modules live in a one-process plan."""
    return "cuda:0" if plan.device == "cuda" else "cpu"


def encode_device(plan: Plan) -> str:
    """Where the text encoder runs: the CPU for placement "cpu", else the compute device."""
    return _device_of(plan, "text_encoder")


def image_encoder_device(plan: Plan) -> str:
    return _device_of(plan, "image_encoder")


def vae_device(plan: Plan) -> str:
    return _device_of(plan, "vae")


def state(pipe: Any) -> Optional[PlacementState]:
    return getattr(pipe, STATE_ATTR, None)


def checkpoint_folder_of(pipe: Any) -> Optional[Path]:
    """The folder the pipeline was loaded from (diffusers records it), if it is a local folder."""
    name = getattr(getattr(pipe, "config", None), "_name_or_path", None) or getattr(pipe, "name_or_path", None)
    if name and (Path(name) / "model_index.json").is_file():
        return Path(name)
    return None


def quant_levels(plan: Plan) -> tuple[tuple[str, str], ...]:
    """(component, level) for the components the plan quantizes."""
    return tuple((c.name, c.precision) for c in plan.components if c.quantized)


def _blocks(module: Any) -> Any:
    from lowvram.placement.offload import _block_list_name

    return getattr(module, _block_list_name(module))


def prepare(pipe: Any, plan: Plan, checkpoint: Optional[Path] = None, loras: tuple = ()) -> PlacementState:
    """Called once after loading, with every component on the CPU. `loras`: the job's LoraSpecs (resolved),
    carried per the plan's ComponentPlan.lora."""
    from safetensors import SafetensorError

    from lowvram.placement import offload, quant_cache
    from lowvram.placement.quantize import is_quantized, quantize_weights, quantized_level

    if state(pipe) is not None:
        raise RuntimeError("placement.prepare() was already applied to this pipeline; load it again for a new plan")
    checkpoint = checkpoint or checkpoint_folder_of(pipe)
    st = PlacementState(plan=plan, checkpoint=checkpoint)
    use_sdpa(pipe)
    applied = getattr(pipe, LORAS_ATTR, None)  # kept through reset(): a fallback plan keeps the LoRAs as they are
    if applied is None:
        applied = _fuse_loras(pipe, plan, loras)
    st.lora_modes = dict(applied)

    for name, level in quant_levels(plan):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        if getattr(module, "_lowvram_stored", None) is not None:  # fp8/GGUF file: kept as stored (models/file_loading.py)
            log.info("%s is stored as %s; not quantized again", name, module._lowvram_stored.label)
            continue
        if is_quantized(module):  # from the quantized cache, or kept through reset() (levels only go leaner)
            have = quantized_level(module)
            if have != level:
                log.warning("%s is already quantized at %s; the plan asks for %s: keeping %s", name, have, level, have)
            st.quantized_from_cache.add(name)
            st.quantized[name] = have
            continue
        # a single-file transformer is not the checkpoint folder's: the cache would key it by the wrong files; a
        # denoiser holding adapters already (an OOM fallback to a quantized plan) is quantized but not cached
        cacheable = checkpoint is not None and not hasattr(module, "_lowvram_source_file") and not _has_adapters(module)
        if quantize_weights(module, level, plan.device) and cacheable:
            dtype = plan.component(name).dtype
            fused = getattr(module, FUSED_KEY_ATTR, "")
            try:
                # fused LoRAs key their own entry (the key stays on the module through an OOM fallback's re-prepare)
                quant_cache.save(module, checkpoint, name, level, dtype, fused)
            # A full disk must not fail the run: next start quantizes again. safetensors reports its
            # I/O errors (full disk included) as SafetensorError, not OSError.
            except (OSError, SafetensorError) as exc:
                log.warning("could not cache the quantized %s: %s", name, exc)
            else:
                # The quantized weights were built in process memory; the cache entry just written holds the
                # same tensors and loads memory-mapped: swap it in so this run, too, holds them as page cache
                # (a first run of a two-expert model would otherwise keep both quantized experts in RAM).
                cached = quant_cache.load(checkpoint, name, level, dtype, fused)
                if cached is not None:
                    if fused:
                        setattr(cached, FUSED_KEY_ATTR, fused)
                    setattr(pipe, name, cached)
                    module = cached
        st.quantized[name] = level

    if getattr(pipe, LORAS_ATTR, None) is None:
        _add_adapters(pipe, plan, loras, st.lora_modes)
        setattr(pipe, LORAS_ATTR, dict(st.lora_modes))

    import torch

    vae_plan = plan.get("vae")
    if vae_plan is not None and getattr(pipe, "vae", None) is not None:
        if vae_plan.placement == "gpu_tiled":
            pipe.vae.enable_tiling()
        # fp32 as loaded; bf16 is the planner's leanest GPU rung (half the memory). The pipeline's encode and
        # decode cast their inputs to the VAE's dtype.
        want = getattr(torch, vae_plan.dtype)
        if pipe.vae.dtype != want:
            pipe.vae.to(want)

    from lowvram.placement.compile import apply_compile, is_compiled

    for cp in plan.denoisers:  # before the offload hooks: they wrap the compiled blocks
        module = getattr(pipe, cp.name, None)
        if module is not None and (cp.compile or is_compiled(module)):
            apply_compile(module, cp.compile, cp.precision)
            if cp.compile:
                st.compiled.add(cp.name)

    from lowvram.placement.devices import apply_device_hooks

    for cp in plan.denoisers:
        module = getattr(pipe, cp.name, None)
        if module is None:
            continue
        streamed = offload.settings_for(cp, torch.device(plan.device)) is not None
        if plan.two_experts and cp.idle == "mmap" and streamed and not plan.experts_apart:
            st.deferred.add(cp.name)  # hooked (pinned) when its phase starts, unhooked when it ends
        else:
            _attach(pipe, cp, st)
        apply_device_hooks(module, cp, home_device(plan))
    text_encoder = getattr(pipe, "text_encoder", None)
    te = plan.get("text_encoder")
    if text_encoder is not None and te is not None and te.placement == "offload":
        # On a CPU plan the hooks still run (onload = offload = CPU): the same code path as on a GPU.
        offload.apply_text_encoder(text_encoder, torch.device(plan.device))
        st.offloaded.add("text_encoder")
    setattr(pipe, STATE_ATTR, st)
    return st


LORAS_ATTR = "_lowvram_loras"  # on the pipeline: {denoiser: "fused" | "unfused"} once its LoRAs are in
FUSED_KEY_ATTR = "_lowvram_fused_loras"  # on a denoiser: lowvram.loras.apply.lora_key of its fused LoRAs


def fused_key(plan: Plan, loras: tuple, name: str) -> str:
    """The fused LoRA set of denoiser `name` for the caches' keys ("" when it carries none fused)."""
    from lowvram.loras.apply import lora_key, loras_for

    cp = plan.get(name)
    return lora_key(loras_for(plan, loras, name)) if cp is not None and cp.lora == "fused" else ""


def _fuse_loras(pipe: Any, plan: Plan, loras: tuple) -> dict:
    """Fuse the LoRAs of denoisers the plan carries them "fused" into; returns {denoiser: mode} of every
    denoiser with LoRAs. A denoiser that came from the quantized cache has its LoRAs fused already (its entry
    is keyed by them); a stored fp8 / GGUF file cannot be fused into and keeps them as adapters."""
    import torch

    from lowvram.loras.apply import fuse, loras_for
    from lowvram.placement.quantize import is_quantized

    modes = {}
    for cp in plan.denoisers:
        module = getattr(pipe, cp.name, None)
        pairs = loras_for(plan, loras, cp.name)
        if module is None or not pairs or not cp.lora:
            continue
        mode = cp.lora
        if mode == "fused" and getattr(module, "_lowvram_stored", None) is not None:
            log.warning("%s is stored as %s: its LoRAs are kept as adapters (there are no full-precision weights to fuse into)",
                        cp.name, module._lowvram_stored.label)
            mode = "unfused"
        if mode == "fused":
            if not is_quantized(module):  # a quantized one came from the cache entry of these LoRAs
                fuse(module, pairs, getattr(torch, cp.dtype))
            setattr(module, FUSED_KEY_ATTR, fused_key(plan, loras, cp.name))
        modes[cp.name] = mode
    return modes


def _has_adapters(module: Any) -> bool:
    from lowvram.placement.quanto_offload import RESIDENT_ATTR

    return any(getattr(m, RESIDENT_ATTR, False) for m in module.modules())


def _add_adapters(pipe: Any, plan: Plan, loras: tuple, modes: dict) -> None:
    """Load the unfused LoRAs as adapters, after quantization (the base weights are quantized, not them)."""
    import torch

    from lowvram.loras.apply import load_adapters, loras_for

    for name, mode in modes.items():
        if mode == "unfused":
            load_adapters(getattr(pipe, name), loras_for(plan, loras, name), getattr(torch, plan.component(name).dtype))


def _attach(pipe: Any, cp: ComponentPlan, st: PlacementState) -> None:
    """Attach a denoiser's offload hooks per its placement (pinning its streamed weights)."""
    import torch

    from lowvram.placement import offload
    from lowvram.placement.quanto_offload import pinned_pool

    from lowvram.placement.devices import current_device

    module = getattr(pipe, cp.name)
    device = torch.device(_device_of(st.plan, cp.name))
    disk_dir = None
    if cp.placement == "disk_offload":
        disk_dir = _disk_dir(module, st.checkpoint, cp)
        st.disk_dirs[cp.name] = str(disk_dir)
    if cp.name in st.deferred:
        st.unpinned[cp.name] = _host_tensors(module)  # the memory-mapped tensors, to point back at on leaving
    # the other expert's page-locked buffers, refilled: no new pinning; streams made on the expert's own GPU
    with pinned_pool(st.pinned_pool), current_device(str(device)):
        st.resident_blocks[cp.name] = offload.apply_transformer(module, cp, device, disk_dir)
    if offload.settings_for(cp, device) is not None and len(st.resident_blocks[cp.name]) < len(_blocks(module)):
        st.offloaded.add(cp.name)


def _detach(pipe: Any, name: str, st: PlacementState) -> None:
    """Remove a deferred denoiser's hooks and point it back at its memory-mapped tensors; its pinned copies go to
    the pool the next expert refills."""
    from lowvram.placement import offload
    from lowvram.placement.quanto_offload import harvest_pinned

    module = getattr(pipe, name)
    offload.offload_groups(module)
    _move_blocks(module, name, st.resident_blocks.get(name, []), "cpu", st)
    _move_adapters(module, name, st.resident_blocks.get(name, []), "cpu", st)
    saved = st.unpinned.pop(name, None)
    if saved is not None:
        _restore_host(saved)  # the module points at its memory-mapped tensors again, not at the pinned copies
    harvest_pinned(module, st.pinned_pool)  # kept for the next expert to refill
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None:
        offload.materialize_on_cpu(module)
        for hook in _OFFLOAD_HOOKS:
            registry.remove_hook(hook, recurse=True)
    st.offloaded.discard(name)
    st.resident_blocks.pop(name, None)


def _disk_dir(module: Any, checkpoint: Optional[Path], cp: ComponentPlan) -> Path:
    """A folder of this run's own for the offloaded weights (lowvram.io.scratch): another run never shares,
    reuses or deletes it. It goes with the module (or at exit); a crashed run's is swept by the next one."""
    import shutil
    import weakref

    from lowvram.io import scratch
    from lowvram.paths import cache_dir

    root = cache_dir() / "offload"
    root.mkdir(parents=True, exist_ok=True)
    scratch.sweep(root)
    private = scratch.new_dir(root, "offload")
    weakref.finalize(module, shutil.rmtree, private, True)
    return private


def _used(plan: Plan, stage: str, phase: Optional[str], image: bool = False) -> tuple[str, ...]:
    """The components a stage (or a denoise phase) runs. `image`: the encode stage conditions on an image (the
    image encoder and the VAE's first-frame encode run then; a text-only encode leaves the VAE off the GPU, as
    the planner counts it)."""
    if stage == "encode":
        return ("text_encoder", "image_encoder", "vae") if image else ("text_encoder",)
    if stage == "denoise":
        if plan.experts_apart:  # each on its own card for the whole stage
            return tuple(c.name for c in plan.denoisers)
        return (phase,) if phase else tuple(c.name for c in plan.denoisers[:1])
    if stage == "decode":
        return ("vae",)
    return ()


def _targets(plan: Plan, stage: str, phase: Optional[str], image: bool = False) -> dict[str, str]:
    """Where each component should be for a stage: its device when the stage uses it, else the CPU."""
    used = _used(plan, stage, phase, image)
    return {name: (_device_of(plan, name) if name in used else "cpu") for name in COMPONENTS}


def enter_stage(pipe: Any, plan: Plan, stage: str, phase: Optional[str] = None, image: bool = False) -> None:
    """Move the stage's components onto the compute device and everything else off it.

    `phase`: for the denoise stage of a two-expert model, the denoiser that runs now ("transformer" or
    "transformer_2"); the other one leaves first. `image`: the encode stage conditions on an image (the VAE
    and the image encoder arrive too).
    """
    st = state(pipe) or PlacementState(plan=plan)
    targets = _targets(plan, stage, phase, image)
    used = _used(plan, stage, phase, image)
    _arrived(st)  # an expert still being copied in the background gets there first
    later = _background(plan, stage, phase)
    left_gpu = False
    # Leave before arriving: free the GPU (and pinned RAM) of what goes, then bring what comes. On a CPU plan
    # everything "arrives" on the CPU, through the same hooks as on a GPU.
    for arriving in (False, True):
        for name in COMPONENTS:
            module = getattr(pipe, name, None)
            if module is None:
                continue
            target = targets[name]
            if (name in used) != arriving:
                continue
            if name in st.deferred:
                if not arriving:
                    if name in st.unpinned:
                        _detach(pipe, name, st)
                        left_gpu = True
                    continue
                if name not in st.unpinned:
                    if left_gpu:
                        _release_cached_vram()
                        left_gpu = False
                    _attach(pipe, plan.component(name), st)
            if arriving and name in later:
                _arrive_in_background(pipe, plan, name, target, st)
                continue
            left_gpu |= _move(pipe, plan, name, target, st)
        if left_gpu and not arriving:
            _release_cached_vram()
            left_gpu = False
    if left_gpu:
        _release_cached_vram()
    if stage != "denoise" and st.pinned_pool:
        release_pinned_pool(st)


def _move(pipe: Any, plan: Plan, name: str, target: str, st: PlacementState) -> bool:
    """Put one component where `target` says (its device, or "cpu"), the way its placement holds it. Returns True
    when something left a GPU."""
    from lowvram.placement import offload

    module = getattr(pipe, name)
    if name in st.offloaded:
        if target == "cpu":
            offload.offload_groups(module)
        if name in DENOISERS:
            resident = st.resident_blocks.get(name, [])
            left = _move_blocks(module, name, resident, target, st)
            return _move_adapters(module, name, resident, target, st) or left
        return False
    cp = plan.get(name)
    if cp is not None and cp.layer_split:
        return _move_split(module, name, cp, target != "cpu", st)
    return _move_whole(module, name, target, st)


def _background(plan: Plan, stage: str, phase: Optional[str]) -> tuple[str, ...]:
    """Components to copy onto their GPU in a background thread: with two experts on two cards, the one whose phase
    is not first, while the first computes."""
    first = plan.denoisers[0].name if plan.denoisers else ""
    if stage != "denoise" or not plan.experts_apart or (phase or first) != first:
        return ()
    return tuple(c.name for c in plan.denoisers if c.name != first)


def _arrive_in_background(pipe: Any, plan: Plan, name: str, target: str, st: PlacementState) -> None:
    import threading

    from lowvram.placement.devices import current_device

    errors: list = []

    def copy() -> None:
        try:
            with current_device(target):
                _move(pipe, plan, name, target, st)
        except BaseException as exc:  # re-raised in the run's thread by _arrived (an OOM there falls back as usual)
            errors.append(exc)

    thread = threading.Thread(target=copy, name=f"lowvram-arrive-{name}", daemon=True)
    st.arriving[name] = (thread, errors)
    thread.start()


def _arrived(st: PlacementState) -> None:
    """Wait for the background copies; raise what one of them raised."""
    for name in list(st.arriving):
        thread, errors = st.arriving.pop(name)
        thread.join()
        if errors:
            raise errors[0]


def _release_cached_vram() -> None:
    """Give the blocks the leaving components held back to the driver, so the next stage's peak is its own."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def release_pinned_pool(st: PlacementState) -> int:
    """Free the page-locked buffers the experts handed each other once no expert streams any more (the decode
    must not hold an expert's worth of pinned RAM), and give the pinned allocator's cache back to the OS.
    Returns the bytes released."""
    import torch

    released = sum(t.numel() * t.element_size() for bucket in st.pinned_pool.values() for t in bucket)
    st.pinned_pool.clear()
    empty = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None)  # torch >= 2.9
    if empty is None:
        empty = getattr(torch._C, "_host_emptyCache", None)
    if empty is not None and torch.cuda.is_available():
        empty()
    return released


def _on_cpu(module: Any) -> bool:
    from lowvram.placement.quanto_offload import storage_device

    for t in list(module.parameters()) + list(module.buffers()):
        return storage_device(t).type == "cpu"
    return True


def _host_tensors(module: Any) -> list:
    """(owner, name, is_param, CPU tensor) for every tensor of a module on the CPU: references, no copies."""
    from lowvram.placement.quanto_offload import is_qtensor, rebuild

    saved = []
    for owner in module.modules():
        for leaf, p in owner._parameters.items():
            if p is not None:
                saved.append((owner, leaf, True, rebuild(p, lambda x: x) if is_qtensor(p) else p.data))
        for leaf, b in owner._buffers.items():
            if b is not None:
                saved.append((owner, leaf, False, b))
    return saved


def _restore_host(saved: list) -> None:
    import torch

    from lowvram.placement.quanto_offload import put, rebuild

    for owner, leaf, is_param, tensor in saved:
        if is_param:
            param = owner._parameters[leaf]
            try:
                put(param, rebuild(tensor, lambda x: x))
            except RuntimeError:  # a device whose tensors cannot take CPU data in place: a new Parameter
                owner._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=param.requires_grad)
        else:
            owner._buffers[leaf] = tensor


def _move_whole(module: Any, name: str, target: str, st: PlacementState) -> bool:
    """Move a module that has no offload hooks. Its CPU tensors are kept while it is on the GPU (weights
    are read-only), so leaving the GPU drops the GPU copy instead of copying it back: a device-to-pageable
    copy runs at ~2 GB/s (bench run 1), 2.7 s for an int8 UMT5 at every stage change. Returns True when
    the module left the GPU."""
    on_cpu = _on_cpu(module)
    if target == "cpu":
        if on_cpu:
            st.host.pop(name, None)
            return False
        saved = st.host.pop(name, None)
        if saved is not None:
            _restore_host(saved)
        else:
            module.to("cpu")
        return True
    if on_cpu:
        st.host[name] = _host_tensors(module)
    module.to(target)
    return False


def _move_split(module: Any, name: str, cp: ComponentPlan, on_gpu: bool, st: PlacementState) -> bool:
    """Move a layer-split denoiser: its non-block modules to its first device, each block to its own (whole,
    keeping their CPU tensors), or all of it back to the CPU."""
    import contextlib

    from lowvram.placement.devices import blocks_of

    blocks = blocks_of(module)
    where = cp.block_devices(len(blocks))
    list_name = next(n for n, child in module.named_children() if child is blocks)
    left = False
    with contextlib.ExitStack() as undo:  # the module without its blocks: its own tensors and other children
        del module._modules[list_name]
        undo.callback(module._modules.__setitem__, list_name, blocks)
        left |= _move_whole(module, name, cp.devices[0] if on_gpu else "cpu", st)
    for i, block in enumerate(blocks):
        left |= _move_whole(block, f"{name}.blocks.{i}", where[i] if on_gpu else "cpu", st)
    return left


def _move_blocks(module: Any, name: str, indices: list, device: str, st: PlacementState) -> bool:
    """Move a partially resident denoiser's resident blocks (whole, keeping their CPU tensors)."""
    blocks = _blocks(module)
    left = False
    for i in indices:
        left |= _move_whole(blocks[i], f"{name}.blocks.{i}", device, st)
    return left


def _move_adapters(module: Any, name: str, resident: list, device: str, st: PlacementState) -> bool:
    """Move a streamed denoiser's LoRA adapters (resident on the GPU for its phase; those of its resident
    blocks move with their block)."""
    from lowvram.placement.quanto_offload import RESIDENT_ATTR

    blocks = _blocks(module)
    skip = {id(m) for i in resident for m in blocks[i].modules()}
    left = False
    for i, adapter in enumerate(m for m in module.modules() if getattr(m, RESIDENT_ATTR, False)):
        if id(adapter) not in skip:
            left |= _move_whole(adapter, f"{name}.lora.{i}", device, st)
    return left


def leave_all(pipe: Any) -> None:
    """Move everything back to the CPU (end of run, failure, cancel)."""
    from lowvram.placement import offload

    st = state(pipe)
    if st is not None:
        try:
            _arrived(st)
        except RuntimeError:  # an expert that could not arrive (out of memory) leaves like the others
            pass
    for name in COMPONENTS:
        module = getattr(pipe, name, None)
        if module is None:
            continue
        if st is not None and name in st.deferred and name in st.unpinned:
            _detach(pipe, name, st)
        elif st is not None and name in st.offloaded:
            offload.offload_groups(module)
            if name in DENOISERS:
                _move_blocks(module, name, st.resident_blocks.get(name, []), "cpu", st)
                _move_adapters(module, name, st.resident_blocks.get(name, []), "cpu", st)
        elif st is not None:
            _move(pipe, st.plan, name, "cpu", st)
        else:
            module.to("cpu")
    _release_cached_vram()


def use_sdpa(pipe: Any) -> None:
    """Torch's fused scaled_dot_product_attention everywhere, whatever DIFFUSERS_ATTN_BACKEND says."""
    for name in DENOISERS:
        transformer = getattr(pipe, name, None)
        if transformer is not None and hasattr(transformer, "set_attention_backend"):
            transformer.set_attention_backend("native")
    for name in ("text_encoder", "image_encoder"):
        module = getattr(pipe, name, None)
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "_attn_implementation", "sdpa") not in ("sdpa", None):
            if hasattr(module, "set_attn_implementation"):
                module.set_attn_implementation("sdpa")


def describe_device_state(pipe: Any) -> dict:
    """Where each component's (and each denoiser block's) bytes are: plain data for benchmarks."""
    from lowvram.placement.quanto_offload import storage_bytes, storage_device

    def by_device(module) -> dict:
        out: dict = {}
        for t in list(module.parameters()) + list(module.buffers()):
            dev = str(storage_device(t))
            out[dev] = out.get(dev, 0) + storage_bytes(t)
        return out

    st = state(pipe)
    components = {}
    gpu_bytes = 0
    for name in COMPONENTS:
        module = getattr(pipe, name, None)
        if module is None:
            continue
        where = by_device(module)
        gpu_bytes += sum(b for d, b in where.items() if d.startswith("cuda"))
        components[name] = {
            "bytes_by_device": where,
            "offloaded": bool(st and name in st.offloaded),
            "compiled": bool(st and name in st.compiled),
            "quantized": (st.quantized.get(name) if st else None),
        }
    result = {"components": components, "gpu_bytes": gpu_bytes}
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None:
        result["transformer_blocks"] = [sorted(by_device(b)) for b in _blocks(transformer)]
        result["resident_blocks"] = list(st.resident_blocks.get("transformer", [])) if st else []
    try:
        import torch

        if torch.cuda.is_available():
            result["cuda_allocated_bytes"] = torch.cuda.memory_allocated()
            result["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    except Exception:  # no CUDA runtime: CPU numbers only
        pass
    return result


def load_cached_components(folder: Path, plan: Plan, loras: tuple = ()) -> dict:
    """Quantized components from the cache, built without bf16 weights; pass them to from_pretrained. A
    denoiser with fused LoRAs comes from the entry of its LoRA set (files' hashes and scales), never another's."""
    from lowvram.placement import quant_cache

    out = {}
    for name, level in quant_levels(plan):
        if not (Path(folder) / name).is_dir():
            continue
        module = quant_cache.load(folder, name, level, plan.component(name).dtype, fused_key(plan, loras, name))
        if module is not None:
            out[name] = module
    return out


def reset(pipe: Any) -> None:
    """Undo prepare(): remove offload hooks, turn VAE tiling off, everything on the CPU.

    Used by the OOM fallback (lowvram.sampling.recovery) before a leaner plan is applied to the same pipeline.
    Other hooks (TeaCache) stay. Quantized weights stay quantized: the ladder only goes leaner.
    """
    from lowvram.placement import offload
    from lowvram.placement.devices import remove_device_hooks

    leave_all(pipe)
    for name in COMPONENTS:
        module = getattr(pipe, name, None)
        if module is not None and name in DENOISERS:
            remove_device_hooks(module)
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            # Disk-offloaded groups hold empty skeletons in RAM: read their weights back first.
            offload.materialize_on_cpu(module)
            for hook in _OFFLOAD_HOOKS:
                registry.remove_hook(hook, recurse=True)
    vae = getattr(pipe, "vae", None)
    if vae is not None and getattr(vae, "use_tiling", False):
        vae.disable_tiling()
    if state(pipe) is not None:
        delattr(pipe, STATE_ATTR)
    leave_all(pipe)


def reapply(pipe: Any, old_plan: Plan, new_plan: Plan, loras: tuple = ()) -> None:
    """Switch a loaded pipeline from `old_plan` to `new_plan` (after an OOM). Its LoRAs stay as they are."""
    reset(pipe)
    prepare(pipe, new_plan, loras=loras)
