"""Quantize a component's weights in place: optimum-quanto's weight-only levels, or torchao's fast levels.

quanto (fp8, int8, int4): weights only, activations stay in the compute dtype; it saves memory, not time.
diffusers' QuantoConfig is deprecated, so we call optimum.quanto directly. Frozen weights are inference-only
(requires_grad False): a parameter that autograd holds on to cannot be swapped between devices by the
offload hooks. The fast levels (fp8_fast, int8_fast: fp8 / int8 matmuls) are lowvram.placement.fast_quant's.
"""

from __future__ import annotations

from typing import Optional

import torch

from planner.plan import FAST_LEVELS

# Plan level -> optimum.quanto weight qtype name. "bf16" means no quantization.
WEIGHT_QTYPES = {"fp8": "qfloat8", "int8": "qint8", "int4": "qint4"}


def qtype_for(level: str) -> Optional[str]:
    if level in ("bf16", "none", None) or level in FAST_LEVELS:
        return None
    try:
        return WEIGHT_QTYPES[level]
    except KeyError:
        raise ValueError(f"unknown quantization level {level!r}; expected bf16, fp8, int8 or int4") from None


def is_quantized(module: torch.nn.Module) -> bool:
    from optimum.quanto.nn import QModuleMixin

    from lowvram.placement.fast_quant import fast_level

    return any(isinstance(m, QModuleMixin) for m in module.modules()) or fast_level(module) is not None


def quantize_weights(module: torch.nn.Module, level: str, device: str = "cuda") -> bool:
    """Quantize and freeze `module`'s weights at `level` (`device`: where it will compute, for the fast
    levels' hardware check). Returns False when there is nothing to do."""
    if level in FAST_LEVELS:
        from lowvram.placement.fast_quant import quantize_fast

        if is_quantized(module):
            return False
        quantize_fast(module, level, device)
        _own_storage(module)
        return True
    qtype = qtype_for(level)
    if qtype is None or is_quantized(module):
        return False
    from optimum.quanto import freeze, quantize

    # unfused LoRA adapters (peft's lora_A / lora_B) stay in the compute dtype: only the base weights are quantized
    quantize(module, weights=qtype, exclude=["*lora_A*", "*lora_B*"])
    freeze(module)
    for p in module.parameters():
        p.requires_grad_(False)
    _own_storage(module)
    return True


def _own_storage(module: torch.nn.Module) -> None:
    """Copy the tensors left unquantized (biases, norms, embeddings: small) out of the checkpoint file.

    diffusers loads safetensors memory-mapped; while any tensor still points into the mapping, the bf16
    pages that quantizing read stay resident (and count in RSS) although no weight uses them anymore.
    """
    from lowvram.placement.quanto_offload import is_qtensor

    for t in list(module.parameters()) + list(module.buffers()):
        if not is_qtensor(t) and t.device.type == "cpu":
            t.data = t.data.clone()


def quantized_level(module: torch.nn.Module) -> Optional[str]:
    """The plan level of an already quantized module (from its first quantized layer), or None."""
    from optimum.quanto.nn import QModuleMixin

    from lowvram.placement.fast_quant import fast_level

    fast = fast_level(module)
    if fast is not None:
        return fast
    names = {v: k for k, v in WEIGHT_QTYPES.items()}
    for m in module.modules():
        if isinstance(m, QModuleMixin) and m.weight_qtype is not None:
            name = m.weight_qtype.name
            return names.get(name, "fp8" if name.startswith("qfloat8") else name)
    return None
