"""Sanity limits for the numbers in a checkpoint's component configs, checked before anything is built from them.

The planner builds each component on the meta device from its config and counts parameters; an absurd
number (a billion layers, a head dimension of 10^12) would make that loop for ever or allocate without bound.
The limits are several times the largest Wan model (REFERENCE.md: 40 layers, 40 heads of 128, ffn 13824), so no
real checkpoint comes near them. Pure: plain dicts in, a list of problems (or a UserError) out.
"""

from __future__ import annotations

from typing import Any, Mapping

from lowvram.errors import UserError

# key -> (lowest, highest) for integers; keys not listed are not checked here (the constructors check types).
LIMITS: dict[str, dict[str, tuple[int, int]]] = {
    "transformer": {
        "num_layers": (1, 256),
        "num_attention_heads": (1, 512),
        "attention_head_dim": (1, 1024),
        "ffn_dim": (1, 262_144),
        "in_channels": (1, 1024),
        "out_channels": (1, 1024),
        "text_dim": (1, 65_536),
        "freq_dim": (1, 65_536),
        "image_dim": (1, 65_536),
        "added_kv_proj_dim": (1, 65_536),
        "rope_max_seq_len": (1, 1 << 20),
        "pos_embed_seq_len": (1, 1 << 20),
        "patch_size": (1, 64),
    },
    "text_encoder": {
        "num_layers": (1, 256),
        "num_decoder_layers": (0, 256),
        "num_heads": (1, 512),
        "d_model": (1, 65_536),
        "d_kv": (1, 4096),
        "d_ff": (1, 262_144),
        "vocab_size": (1, 1 << 22),
        "relative_attention_num_buckets": (1, 4096),
        "relative_attention_max_distance": (1, 1 << 20),
    },
    "image_encoder": {
        "hidden_size": (1, 65_536),
        "intermediate_size": (1, 262_144),
        "num_hidden_layers": (1, 256),
        "num_attention_heads": (1, 512),
        "patch_size": (1, 1024),
        "image_size": (1, 8192),
        "projection_dim": (1, 65_536),
        "num_channels": (1, 64),
    },
    "vae": {
        "base_dim": (1, 4096),
        "decoder_base_dim": (1, 4096),
        "z_dim": (1, 1024),
        "dim_mult": (1, 64),
        "num_res_blocks": (1, 64),
        "in_channels": (1, 64),
        "out_channels": (1, 64),
        "patch_size": (1, 64),
        "scale_factor_spatial": (1, 64),
        "scale_factor_temporal": (1, 64),
    },
}
# The sampler allocates tables of num_train_timesteps entries when it is built (4e9 asked 16 GB before loading)
LIMITS["scheduler"] = {"num_train_timesteps": (1, 100_000), "solver_order": (1, 16), "num_inference_steps": (1, 100_000)}
FILE_NAMES = {"scheduler": "scheduler_config.json"}  # the others are <component>/config.json
LIMITS["transformer_2"] = LIMITS["transformer"]  # the second expert of Wan2.2 A14B has the first one's shape
MAX_LIST = 16  # dim_mult, patch_size, temperal_downsample, attn_scales: a handful of entries each
# lists with an entry per channel: the VAE's latent statistics have z_dim entries (16 in Wan2.1, 48 in Wan2.2)
LONG_LISTS = {"latents_mean": LIMITS["vae"]["z_dim"][1], "latents_std": LIMITS["vae"]["z_dim"][1]}


def config_problems(component: str, config: Mapping[str, Any]) -> list[str]:
    """What is out of range in one component's config (empty when everything is sane)."""
    limits = LIMITS.get(component, {})
    problems = []
    for key, value in config.items():
        most = LONG_LISTS.get(key, MAX_LIST)
        if isinstance(value, list) and len(value) > most:
            problems.append(f"{key} has {len(value)} entries (at most {most})")
            continue
        if key not in limits or value is None:
            continue
        lo, hi = limits[key]
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool) or not isinstance(item, int):
                problems.append(f"{key} = {str(item)[:40]} is not a whole number")
            elif not lo <= item <= hi:
                problems.append(f"{key} = {item} is outside {lo}..{hi}")
            else:
                continue
            break
    return problems


def check_configs(folder: Any, configs: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise UserError naming every out-of-range value of the given component configs ({component: config})."""
    problems = [f"{name}/{FILE_NAMES.get(name, 'config.json')}: {p}" for name, config in configs.items() for p in config_problems(name, config)]
    if problems:
        raise UserError(
            f"{folder}: the model's configs hold numbers no Wan checkpoint has ({'; '.join(problems[:5])}). "
            "The checkpoint is damaged or not a Wan pipeline: use a Wan2.1 / Wan2.2 diffusers checkpoint folder "
            "(download or convert it again)."
        )
