"""Check a LoRA file against a model from its header alone, before any model loads.

The file's keys go through diffusers' own Wan LoRA reading (`WanLoraLoaderMixin.lora_state_dict`: its
converters for the original Wan / ComfyUI layout, kohya's lora_down/lora_up with alpha, and musubi-tuner's
flat names) with every weight as an empty meta tensor of its stored shape (only the small alpha scalars are
read), then against the model's layers built on the meta device from its config. So what is checked here is
what diffusers will load, and nothing is read but the header.

Refused with a message naming the fix: a pickle file (torch.save), a file of another format, keys no
converter knows, a key for a layer the model does not have or of another shape (the first one is named:
a LoRA for another model).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from lowvram.errors import UserError
from lowvram.loras.spec import LoraFootprint

PICKLE_MAGICS = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive; a raw pickle stream
# Layers that run on every video token (the others run on text / image / time tokens: few).
VIDEO_LAYER = re.compile(r"(^|\.)(attn1\.|attn2\.to_q$|attn2\.to_out\.0$|ffn\.|proj_out$)")
LAYOUT_NAMES = {"diffusers": "diffusers", "wan": "original Wan / ComfyUI", "musubi": "kohya / musubi-tuner"}
# safetensors dtype -> torch dtype name
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
           "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


@dataclass(frozen=True)
class LoraInfo:
    """What a LoRA file is, for one model: its layout, its footprint on one denoiser, its metadata."""

    layout: str  # "diffusers", "wan" (original / ComfyUI, lora_A/B or lora_down/up), "musubi"
    footprint: LoraFootprint
    metadata: dict  # the safetensors __metadata__
    keys: int  # tensors after conversion (diffusers naming)


def sniff(path: Path) -> None:
    """Refuse what is not a safetensors file before parsing it: pickles can run code when opened."""
    try:
        with Path(path).open("rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise UserError(f"--lora {path}: cannot read it ({exc.strerror or exc}).") from exc
    if head.startswith(PICKLE_MAGICS) or Path(path).suffix.lower() in (".pt", ".pth", ".ckpt", ".bin", ".pkl"):
        raise UserError(
            f"--lora {path}: a pickle file (torch.save / .pt / .ckpt / .bin). lowvram loads LoRAs from .safetensors only, "
            "because opening a pickle can run arbitrary code. Get the .safetensors version of this LoRA (most are "
            "published as one), or convert it once in a trusted environment with safetensors.torch.save_file."
        )
    if head[:4] == b"GGUF":
        raise UserError(f"--lora {path}: a GGUF file; LoRAs are read from .safetensors files only.")


def layout_of(keys) -> str:
    """Which layout diffusers will convert from (lora_pipeline.WanLoraLoaderMixin.lora_state_dict's test)."""
    if any(k.startswith("diffusion_model.") for k in keys):
        return "wan"
    if any(k.startswith("lora_unet_") for k in keys):
        return "musubi"
    return "diffusers"


def _meta_state_dict(path: Path, header) -> dict:
    """Every tensor as an empty meta tensor of its shape and dtype; the alpha scalars read for real
    (diffusers' converters fold alpha/rank into the weights with .item())."""
    import torch
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for t in header.tensors:
            if t.name.endswith(".alpha"):
                out[t.name] = f.get_tensor(t.name)
                continue
            dtype = getattr(torch, _DTYPES.get(t.dtype, "float32"))
            out[t.name] = torch.empty(t.shape, dtype=dtype, device="meta")
    return out


@functools.lru_cache(maxsize=4)
def _meta_transformer(config_json: str):
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    config = json.loads(config_json)
    with init_empty_weights():
        return WanTransformer3DModel.from_config(config)


def meta_transformer(config: dict):
    """The model's denoiser on the meta device (shapes only), built once per config."""
    return _meta_transformer(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True, default=list))


def converted_keys(path: Path, transformer) -> tuple:
    """(layout, the state dict diffusers will load into `transformer` as meta tensors, the header), or UserError."""
    from diffusers import WanPipeline

    from lowvram.models.library_logs import quiet_library_logs
    from lowvram.models.weights_header import read_header

    quiet_library_logs()
    sniff(path)
    header = read_header(path)
    if header.format != "safetensors":
        raise UserError(f"--lora {path}: not a safetensors file.")
    if not header.tensors:
        raise UserError(f"--lora {path}: the file holds no tensors.")
    names = [t.name for t in header.tensors]
    layout = layout_of(names)
    try:
        state = WanPipeline.lora_state_dict(_meta_state_dict(path, header))
        state = WanPipeline._maybe_expand_t2v_lora_for_i2v(transformer, state)
    except Exception as exc:  # diffusers' converters raise KeyError/ValueError/IndexError on keys they do not know
        text = str(exc)
        raise UserError(
            f"--lora {path}: not a Wan LoRA diffusers can read in the {LAYOUT_NAMES[layout]} layout "
            f"({type(exc).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}). The first keys of the file are "
            f"{', '.join(names[:3])}. Is it a LoRA for another model family?"
        ) from None
    return layout, state, header


def inspect_lora(path: Path, config: dict) -> LoraInfo:
    """Check the LoRA file at `path` against a denoiser of `config` (a Wan transformer config) and measure
    what it adds. UserError naming the first key that does not fit."""
    import torch

    transformer = meta_transformer(config)
    layout, state, header = converted_keys(path, transformer)
    modules = dict(transformer.named_modules())
    where = f"--lora {path}"
    if layout != "diffusers":
        where += f" ({LAYOUT_NAMES[layout]} layout, named here as diffusers converts it)"
    ranks: dict[str, int] = {}
    params = target = flops = outs = max_out = 0
    for key in state:
        if not key.startswith("transformer."):
            raise UserError(f"{where}: key {key} is not for the transformer (diffusers loads only transformer.* keys into a Wan model); this LoRA is for another model or component.")
        name = key[len("transformer."):]
        module_name, _, leaf = name.rpartition(".lora_")
        module = modules.get(module_name)
        if not leaf or module is None:
            raise UserError(f"{where}: key {key} names a layer this model does not have ({module_name}); the LoRA is for another model.")
        if not isinstance(module, torch.nn.Linear):
            raise UserError(f"{where}: key {key} adapts {module_name}, a {type(module).__name__}; lowvram applies LoRAs to Linear layers only.")
        shape = tuple(state[key].shape)
        expected = {"A.weight": None, "B.weight": None, "B.bias": (module.out_features,)}.get(leaf, ())
        if leaf == "A.weight":
            ok = len(shape) == 2 and shape[1] == module.in_features
            want = f"[rank, {module.in_features}]"
        elif leaf == "B.weight":
            ok = len(shape) == 2 and shape[0] == module.out_features
            want = f"[{module.out_features}, rank]"
        elif expected:
            ok = shape == expected
            want = str(list(expected))
        else:
            raise UserError(f"{where}: key {key} is not a LoRA A/B weight; lowvram reads plain LoRAs (no DoRA, LoKr or LoHa).")
        if not ok:
            raise UserError(
                f"{where}: key {key} has shape {list(shape)} but the model's {module_name} needs {want} "
                f"({module.in_features} inputs, {module.out_features} outputs): this LoRA is for another model "
                "(another size or family). Pick the LoRA made for this model."
            )
        if leaf in ("A.weight", "B.weight"):
            rank = shape[0] if leaf == "A.weight" else shape[1]
            if ranks.setdefault(module_name, rank) != rank:
                raise UserError(f"{where}: {module_name}'s A and B have different ranks ({ranks[module_name]} and {rank}); the file is damaged.")
        params += int(state[key].numel())
    for module_name, rank in ranks.items():
        module = modules[module_name]
        target += module.in_features * module.out_features
        if VIDEO_LAYER.search(module_name):
            flops += 2 * rank * (module.in_features + module.out_features)
            outs += module.out_features
            max_out = max(max_out, module.out_features)
    if not ranks:
        raise UserError(f"--lora {path}: no LoRA layer for this model's transformer in the file.")
    footprint = LoraFootprint(params=params, target_params=target, rank=max(ranks.values()), layers=len(ranks),
                              flops_per_token=flops, out_per_token=outs, max_out=max_out)
    return LoraInfo(layout=layout, footprint=footprint, metadata=dict(header.metadata), keys=len(state))
