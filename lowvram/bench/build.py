"""Build the real Wan2.1 shapes with random weights, fast: on the meta device, then filled where they run.

Random weights have the real sizes and the real kernels; the numbers they compute mean nothing, which is
fine for timing and memory. `HostCopy` keeps one pageable CPU copy of a model so each benchmark case gets
a fresh module sharing those tensors (no copy, no re-init) as a freshly loaded checkpoint would be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from lowvram.bench.shapes import (
    TEXT_DIM,
    TEXT_TOKENS,
    TRANSFORMERS,
    UMT5_XXL,
    latent_shape,
)

INIT_STD = 0.02  # small enough that 40 random blocks stay finite in bf16


def _keep_fp32(name: str, keep: list[str]) -> bool:
    parts = name.split(".")
    return any(k in parts for k in keep)


def _cast_like_from_pretrained(model: nn.Module, dtype: torch.dtype) -> None:
    """dtype everywhere except the modules diffusers keeps in fp32 when loading (`_keep_in_fp32_modules`)."""
    keep = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, param in model.named_parameters():
        target = torch.float32 if _keep_fp32(name, keep) else dtype
        param.data = param.data.to(target)


@torch.no_grad()
def init_random_(model: nn.Module, seed: int = 0, std: float = INIT_STD) -> None:
    """Fill every parameter in place: weights ~ N(0, std), 1-D tensors (biases, norms) 0 or 1."""
    gen_device = next(model.parameters()).device
    gen = torch.Generator(device=gen_device).manual_seed(seed)
    for name, param in model.named_parameters():
        if param.dim() >= 2:
            param.normal_(0.0, std, generator=gen)
        elif name.endswith("weight"):
            param.fill_(1.0)
        else:
            param.zero_()


def _materialize(model: nn.Module, device: str | torch.device, seed: int) -> nn.Module:
    model.to_empty(device=device)
    init_random_(model, seed)
    return model


def transformer_on_meta(key: str, config: dict | None = None, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel(**(config or TRANSFORMERS[key]))
    _cast_like_from_pretrained(model, dtype)
    return model.eval().requires_grad_(False)


def _real_rope(model: nn.Module, device) -> None:
    """The rotary tables are computed buffers, not weights: rebuild them for real (to_empty leaves garbage)."""
    rope = model.rope
    model.rope = type(rope)(rope.attention_head_dim, rope.patch_size, rope.max_seq_len).to(device)


def build_transformer(key: str, device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0, config: dict | None = None) -> nn.Module:
    model = transformer_on_meta(key, config, dtype)
    _materialize(model, device, seed)
    _real_rope(model, device)
    return model


def build_vae(device: str | torch.device = "cuda", dtype: torch.dtype = torch.float32, seed: int = 0, config: dict | None = None) -> nn.Module:
    """AutoencoderKLWan with its default config, which is Wan2.1's VAE."""
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        vae = AutoencoderKLWan(**(config or {}))
    vae.to(dtype)
    return _materialize(vae.eval().requires_grad_(False), device, seed)


def build_umt5(device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0, config: dict | None = None) -> nn.Module:
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(**(config or UMT5_XXL))
    with torch.device("meta"):
        model = UMT5EncoderModel(cfg)
    model.to(dtype)
    model.eval().requires_grad_(False)
    model.to_empty(device=device)
    # to_empty gives each tied parameter its own storage: tie the input embedding to `shared` again,
    # as the checkpoint has it (else the encoder weighs 1 B params more than the real one)
    model.encoder.embed_tokens.weight = model.shared.weight
    init_random_(model, seed)
    return model


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class HostCopy:
    """One pageable CPU copy of every parameter and buffer, and a factory of modules that share it."""

    tensors: dict[str, torch.Tensor]
    make_meta: Callable[[], nn.Module]

    @classmethod
    def of(cls, model: nn.Module, make_meta: Callable[[], nn.Module]) -> "HostCopy":
        tensors = {n: t.detach().to("cpu") for n, t in model.named_parameters()}
        tensors.update({n: b.detach().to("cpu") for n, b in model.named_buffers()})
        return cls(tensors, make_meta)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def fresh(self) -> nn.Module:
        """A module on the CPU whose tensors are this copy's (hooks that replace `.data` leave it intact).
        Tied parameters (one tensor under several names) stay tied."""
        model = self.make_meta()
        owners: dict = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            owners.setdefault(id(param), []).append(name)
        first_name = {names[0]: names for names in owners.values()}
        for name, tensor in self.tensors.items():
            names = first_name.get(name, [name])
            shared = None
            for each in names:
                owner_name, _, leaf = each.rpartition(".")
                owner = model.get_submodule(owner_name) if owner_name else model
                if leaf in owner._parameters:
                    if shared is None:
                        shared = nn.Parameter(tensor, requires_grad=False)
                    owner._parameters[leaf] = shared
                else:
                    owner._buffers[leaf] = tensor
        return model


@dataclass(frozen=True)
class TransformerInputs:
    hidden_states: torch.Tensor
    timestep: torch.Tensor
    encoder_hidden_states: torch.Tensor

    def kwargs(self) -> dict:
        return dict(hidden_states=self.hidden_states, timestep=self.timestep, encoder_hidden_states=self.encoder_hidden_states, return_dict=False)


def transformer_inputs(height: int, width: int, frames: int, device="cuda", dtype=torch.bfloat16, seed: int = 0, text_tokens: int = TEXT_TOKENS, text_dim: int = TEXT_DIM, in_channels: int = 16) -> TransformerInputs:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shape = list(latent_shape(height, width, frames))
    shape[1] = in_channels
    hs = torch.randn(shape, generator=gen).to(device, dtype)
    text = (torch.randn(1, text_tokens, text_dim, generator=gen) * 0.1).to(device, dtype)
    return TransformerInputs(hs, torch.tensor([500.0], device=device), text)
