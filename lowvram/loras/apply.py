"""Put a job's LoRAs into a loaded pipeline's denoisers, through diffusers and peft.

Each file is read by diffusers' `WanLoraLoaderMixin.lora_state_dict` (its converters for every layout) and
loaded into the denoiser with `load_lora_adapter` as a peft adapter, then either
- fused: `fuse_lora` (safe: a LoRA that would make a weight non-finite is refused) and `unload_lora`, so the
  denoiser holds plain weights again, before it is quantized and placed; or
- kept unfused: the adapters stay (peft's LoRA layers add B(A(x)) x scale to each adapted layer), in the
  compute dtype, marked so that the offload hooks leave them where placement puts them: resident on the GPU
  while the base weights are streamed (lowvram.placement.quanto_offload).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

from lowvram.errors import UserError

log = logging.getLogger(__name__)

ADAPTER_ATTR = "_lowvram_resident"  # lowvram.placement.quanto_offload.RESIDENT_ATTR: never streamed
ADAPTER_PREFIX = "lowvram_lora_"


def adapter_name(index: int) -> str:
    return f"{ADAPTER_PREFIX}{index}"


def loras_for(plan: Any, loras: Iterable, name: str) -> list[tuple[int, Any]]:
    """(index in the job, LoraSpec) of the LoRAs that apply to denoiser `name` under `plan`."""
    two = plan.two_experts
    return [(i, lora) for i, lora in enumerate(loras) if name in lora.components(two)]


def lora_key(pairs: list[tuple[int, Any]]) -> str:
    """lowvram.loras.spec.lora_set_key of the (index, LoraSpec) pairs."""
    from lowvram.loras.spec import lora_set_key

    return lora_set_key(lora for _, lora in pairs)


def _state_dict(path: Path, module: Any) -> tuple[dict, Any]:
    from diffusers import WanPipeline

    try:
        state, metadata = WanPipeline.lora_state_dict(
            str(path.parent), weight_name=path.name, use_safetensors=True, local_files_only=True, return_lora_metadata=True)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"--lora {path}: diffusers could not read it ({type(exc).__name__}: {exc}).") from exc
    return WanPipeline._maybe_expand_t2v_lora_for_i2v(module, state), metadata


def load_adapters(module: Any, pairs: list[tuple[int, Any]], dtype: Any) -> list[str]:
    """Load each LoRA into `module` as a peft adapter with its scale; returns the adapter names."""
    import warnings

    names, weights = [], []
    for index, lora in pairs:
        state, metadata = _state_dict(Path(lora.path), module)
        name = adapter_name(index)
        with warnings.catch_warnings():  # peft warns that a second adapter makes several: that is the point
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            module.load_lora_adapter(state, adapter_name=name, prefix="transformer", metadata=metadata)
        names.append(name)
        weights.append(float(lora.scale))
    module.set_adapters(names, weights)
    for adapter in adapter_modules(module, marked=False):
        # peft puts an adapter in its base layer's dtype: an fp8 file's (unusable) or a GGUF's (integer: left as
        # read); adapters compute in the run's dtype
        adapter.to(dtype=dtype)
        setattr(adapter, ADAPTER_ATTR, True)
        for p in adapter.parameters():
            p.requires_grad_(False)
    return names


def fuse(module: Any, pairs: list[tuple[int, Any]], dtype: Any) -> None:
    """Fuse the LoRAs into `module`'s weights and remove the adapters: plain weights again."""
    names = load_adapters(module, pairs, dtype)
    try:
        module.fuse_lora(adapter_names=names, safe_fusing=True)
    except ValueError as exc:  # peft's safe merge found non-finite weights
        raise UserError(f"fusing the LoRAs {', '.join(Path(l.path).name for _, l in pairs)} broke the weights ({exc}).") from exc
    module.unload_lora()


def adapter_modules(module: Any, marked: bool = True) -> list:
    """peft's LoRA A/B sub-modules of `module` (those marked resident by load_adapters, with `marked`)."""
    from peft.tuners.lora import LoraLayer

    out = []
    for sub in module.modules():
        if isinstance(sub, LoraLayer):
            for holder in (sub.lora_A, sub.lora_B):
                for adapter in holder.values():
                    if not marked or getattr(adapter, ADAPTER_ATTR, False):
                        out.append(adapter)
    return out


def has_adapters(module: Any) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in module.modules())
