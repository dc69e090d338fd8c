"""Quantize a component's weights with optimum-quanto (quantize + freeze), in place.

Weights only: activations stay in the compute dtype. diffusers' QuantoConfig is deprecated, so we
call optimum.quanto directly. Frozen weights are inference-only (requires_grad False): a parameter
that autograd holds on to cannot be swapped between devices by the offload hooks.
"""

from __future__ import annotations

from typing import Optional

import torch

# Plan level -> optimum.quanto weight qtype name. "bf16" means no quantization.
WEIGHT_QTYPES = {"fp8": "qfloat8", "int8": "qint8", "int4": "qint4"}


def qtype_for(level: str) -> Optional[str]:
    if level in ("bf16", "none", None):
        return None
    try:
        return WEIGHT_QTYPES[level]
    except KeyError:
        raise ValueError(f"unknown quantization level {level!r}; expected bf16, fp8, int8 or int4") from None


def is_quantized(module: torch.nn.Module) -> bool:
    from optimum.quanto.nn import QModuleMixin

    return any(isinstance(m, QModuleMixin) for m in module.modules())


def quantize_weights(module: torch.nn.Module, level: str) -> bool:
    """Quantize and freeze `module`'s weights at `level`. Returns False when there is nothing to do."""
    qtype = qtype_for(level)
    if qtype is None or is_quantized(module):
        return False
    from optimum.quanto import freeze, quantize

    quantize(module, weights=qtype)
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
    from optimum.quanto.tensor import QTensor

    for t in list(module.parameters()) + list(module.buffers()):
        if not isinstance(t, QTensor) and t.device.type == "cpu":
            t.data = t.data.clone()


def quantized_level(module: torch.nn.Module) -> Optional[str]:
    """The plan level of an already quantized module (from its first quantized layer), or None."""
    from optimum.quanto.nn import QModuleMixin

    names = {v: k for k, v in WEIGHT_QTYPES.items()}
    for m in module.modules():
        if isinstance(m, QModuleMixin) and m.weight_qtype is not None:
            name = m.weight_qtype.name
            return names.get(name, "fp8" if name.startswith("qfloat8") else name)
    return None
