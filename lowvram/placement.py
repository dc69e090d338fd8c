"""Put a loaded pipeline's components where a Plan says, stage by stage.

This first version keeps whole components on one device and moves them per stage so that stage
peaks do not add up: the text encoder leaves before denoising, the transformer before decoding.
"""

from __future__ import annotations

from typing import Any

from planner.plan import Plan

STAGE_COMPONENTS = {
    "encode": ("text_encoder", "image_encoder"),
    "denoise": ("transformer",),
    "decode": ("vae",),
}


def compute_device(plan: Plan) -> str:
    return plan.device


def prepare(pipe: Any, plan: Plan) -> None:
    """Called once after loading: quantize and set up offloading (later: per the plan)."""
    if plan.vae == "gpu_tiled":
        pipe.vae.enable_tiling()


def enter_stage(pipe: Any, plan: Plan, stage: str) -> None:
    """Move the stage's components onto the compute device and everything else off it."""
    device = compute_device(plan)
    wanted = set(STAGE_COMPONENTS.get(stage, ()))
    for name in ("text_encoder", "image_encoder", "transformer", "vae"):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        target = device if name in wanted else "cpu"
        if name == "vae" and stage == "encode":
            target = device  # I2V encodes the first frame with the VAE
        if name == "text_encoder" and plan.text_encoder == "cpu":
            target = "cpu"
        if name == "vae" and plan.vae == "cpu":
            target = "cpu"
        module.to(target)


def leave_all(pipe: Any) -> None:
    """Move everything back to the CPU (end of run, failure, cancel)."""
    for name in ("text_encoder", "image_encoder", "transformer", "vae"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.to("cpu")


# Hook names diffusers' group offloading registers (diffusers/hooks/group_offloading.py).
_OFFLOAD_HOOKS = ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading")


def reset(pipe: Any) -> None:
    """Undo prepare(): remove offload hooks, turn VAE tiling off, everything on the CPU.

    Used by the OOM fallback (lowvram.recovery) before a leaner plan is applied to the same pipeline.
    Other hooks (TeaCache) stay. Quantized weights stay quantized: the ladder only goes leaner.
    """
    for name in ("text_encoder", "image_encoder", "transformer", "vae"):
        module = getattr(pipe, name, None)
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            for hook in _OFFLOAD_HOOKS:
                registry.remove_hook(hook, recurse=True)
    vae = getattr(pipe, "vae", None)
    if vae is not None and getattr(vae, "use_tiling", False):
        vae.disable_tiling()
    leave_all(pipe)


def reapply(pipe: Any, old_plan: Plan, new_plan: Plan) -> None:
    """Switch a loaded pipeline from `old_plan` to `new_plan` (after an OOM)."""
    reset(pipe)
    prepare(pipe, new_plan)
