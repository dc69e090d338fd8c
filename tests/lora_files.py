"""LoRAs for the demo transformers, made with peft and written in the key layouts people have.

- "diffusers": what diffusers' save_lora_weights writes (`transformer.blocks.0.attn1.to_q.lora_A.weight`),
  with its adapter metadata (rank, alpha);
- "wan": the original Wan / ComfyUI layout (`diffusion_model.blocks.0.self_attn.q.lora_A.weight`);
- "kohya": the same names with kohya's `lora_down`/`lora_up` and an `.alpha` per layer, as ComfyUI and
  kohya-style trainers save them (`diffusion_model.blocks.0.self_attn.q.lora_down.weight`);
- "musubi": musubi-tuner's flat names (`lora_unet_blocks_0_self_attn_q.lora_down.weight` + `.alpha`).

The renaming below is the inverse of diffusers' converters, for writing test files only: lowvram reads
every layout through diffusers' own WanLoraLoaderMixin.lora_state_dict.
"""

from __future__ import annotations

from pathlib import Path

import torch

LAYOUTS = ("diffusers", "wan", "kohya", "musubi")
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "net.0.proj", "net.2"]  # every Linear of a block (musubi needs all)
_ATTN = {"attn1": "self_attn", "attn2": "cross_attn"}
_PROJ = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o", "add_k_proj": "k_img", "add_v_proj": "v_img"}


def demo_transformer(model: str = "tiny-random", subfolder: str = "transformer"):
    from diffusers import WanTransformer3DModel

    from lowvram.models.demo import ensure_demo

    return WanTransformer3DModel.from_pretrained(str(ensure_demo(model)), subfolder=subfolder).eval()


def lora_tensors(model: str = "tiny-random", rank: int = 4, seed: int = 0, subfolder: str = "transformer",
                 targets=None) -> dict[str, torch.Tensor]:
    """peft LoRA weights (diffusers names without prefix: blocks.0.attn1.to_q.lora_A.weight ...), random A and B."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = demo_transformer(model, subfolder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets or TARGETS, init_lora_weights=False))
        state = get_peft_model_state_dict(transformer)
        # peft's non-default init leaves B small; make the effect large enough to see in a tiny model
        return {k: (v * 3.0 if "lora_B" in k else v).contiguous() for k, v in state.items()}


def _wan_name(module: str) -> str:
    """blocks.0.attn1.to_q -> blocks.0.self_attn.q; blocks.0.ffn.net.0.proj -> blocks.0.ffn.0."""
    parts = module.split(".")
    if parts[0] == "blocks":
        i, rest = parts[1], ".".join(parts[2:])
        if rest.startswith(("attn1.", "attn2.")):
            attn, proj = rest.split(".", 1)
            return f"blocks.{i}.{_ATTN[attn]}.{_PROJ[proj]}"
        return f"blocks.{i}.ffn.{ {'ffn.net.0.proj': '0', 'ffn.net.2': '2'}[rest] }"
    if module == "proj_out":
        return "head.head"
    raise KeyError(module)


def write_lora(path: Path, tensors: dict[str, torch.Tensor], layout: str = "diffusers", alpha_over_rank: float = 1.0,
               metadata: dict | None = None) -> Path:
    """Write peft LoRA tensors (diffusers names) to `path` in `layout`. With alpha_over_rank != 1 the file
    stores alpha = that x rank and A divided by it (the same LoRA, as trainers that save alpha write it)."""
    from safetensors.torch import save_file

    path = Path(path)
    out: dict[str, torch.Tensor] = {}
    if layout == "diffusers":
        from diffusers import WanPipeline
        from peft import LoraConfig

        # as a diffusers training script saves it: its adapter config as metadata
        rank = next(v.shape[0] for k, v in tensors.items() if k.endswith("lora_A.weight"))
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=sorted({k.rpartition(".lora_")[0] for k in tensors}))
        WanPipeline.save_lora_weights(str(path.parent), transformer_lora_layers=tensors, weight_name=path.name,
                                      transformer_lora_adapter_metadata=config.to_dict())
        if metadata:  # extra metadata (lowvram.* keys): written again with it
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta, data = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
            save_file(data, str(path), metadata={**meta, **metadata})
        return path
    for key, value in tensors.items():
        module, _, leaf = key.rpartition(".lora_")
        kind = leaf.split(".")[0]  # "A" or "B"
        name = _wan_name(module)
        if layout == "musubi":
            name = "lora_unet_" + name.replace(".", "_")
        down, up = ("lora_A", "lora_B") if layout == "wan" else ("lora_down", "lora_up")
        prefix = "" if layout == "musubi" else "diffusion_model."
        if kind == "A":
            out[f"{prefix}{name}.{down}.weight"] = (value / alpha_over_rank).contiguous()
            if layout in ("kohya", "musubi") or alpha_over_rank != 1.0:
                out[f"{prefix}{name}.alpha"] = torch.tensor(float(value.shape[0] * alpha_over_rank))
        else:
            out[f"{prefix}{name}.{up}.weight"] = value
    save_file(out, str(path), metadata={"format": "pt", **(metadata or {})})
    return path


def make_lora(path: Path, model: str = "tiny-random", layout: str = "diffusers", rank: int = 4, seed: int = 0,
              subfolder: str = "transformer", **kwargs) -> Path:
    return write_lora(path, lora_tensors(model, rank, seed, subfolder), layout, **kwargs)
