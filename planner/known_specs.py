"""The known checkpoints' specs, generated from their configs: `python -m planner.known_specs` rewrites
planner/known_specs.json (it builds every component on the meta device, so it needs diffusers and
transformers; planning itself then needs neither). tests/test_planner_spec.py checks the file is current.

The configs are the checkpoints' own (REFERENCE.md shapes; Wan-AI/*-Diffusers config.json files).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

from planner.spec import (
    ModelSpec,
    detect_family,
    detect_task,
    image_encoder_on_meta,
    text_dims,
    text_encoder_on_meta,
    transformer_dims,
    transformer_on_meta,
    vae_dims,
    vae_on_meta,
)

WAN_COMMON = dict(
    patch_size=[1, 2, 2], attention_head_dim=128, text_dim=4096, freq_dim=256, out_channels=16,
    qk_norm="rms_norm_across_heads", cross_attn_norm=True, eps=1e-6,
)
WAN_1_3B = dict(WAN_COMMON, num_layers=30, num_attention_heads=12, ffn_dim=8960, in_channels=16)
WAN_14B = dict(WAN_COMMON, num_layers=40, num_attention_heads=40, ffn_dim=13824, in_channels=16)
WAN_I2V_14B = dict(WAN_14B, in_channels=36, image_dim=1280, added_kv_proj_dim=5120)
WAN22_I2V_A14B = dict(WAN_14B, in_channels=36)  # Wan2.2 I2V conditions on the VAE latents only: no CLIP branch
WAN22_TI2V_5B = dict(WAN_COMMON, num_layers=30, num_attention_heads=24, ffn_dim=14336, in_channels=48, out_channels=48)
# google/umt5-xxl, encoder only (the text encoder of every Wan model).
UMT5_XXL = dict(
    vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
)
# open-clip ViT-H/14 vision tower, the Wan2.1 I2V image encoder (257 = 16 x 16 patches + class token).
CLIP_VIT_H = dict(
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
    patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu",
)
WAN21_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True])
WAN22_VAE = dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                 patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4)

# name -> (model_index.json essentials, transformer config, second expert?, VAE config, image encoder?, scheduler flow_shift)
KNOWN = {
    "wan2.1-t2v-1.3b": ({"_class_name": "WanPipeline"}, WAN_1_3B, False, WAN21_VAE, False, 3.0),
    "wan2.1-t2v-14b": ({"_class_name": "WanPipeline"}, WAN_14B, False, WAN21_VAE, False, 3.0),
    "wan2.1-i2v-14b-480p": ({"_class_name": "WanImageToVideoPipeline"}, WAN_I2V_14B, False, WAN21_VAE, True, 3.0),
    "wan2.1-i2v-14b-720p": ({"_class_name": "WanImageToVideoPipeline"}, WAN_I2V_14B, False, WAN21_VAE, True, 5.0),
    "wan2.2-t2v-a14b": ({"_class_name": "WanPipeline", "boundary_ratio": 0.875}, WAN_14B, True, WAN21_VAE, False, 3.0),
    "wan2.2-i2v-a14b": ({"_class_name": "WanImageToVideoPipeline", "boundary_ratio": 0.9}, WAN22_I2V_A14B, True, WAN21_VAE, False, 3.0),
    "wan2.2-ti2v-5b": ({"_class_name": "WanPipeline", "expand_timesteps": True}, WAN22_TI2V_5B, False, WAN22_VAE, False, 5.0),
}


def build(name: str) -> ModelSpec:
    index, transformer, second, vae, image, shift = KNOWN[name]
    components = [text_encoder_on_meta(UMT5_XXL)]
    if image:
        components.append(image_encoder_on_meta(CLIP_VIT_H))
    t = transformer_on_meta("transformer", transformer)
    components.append(t)
    if second:
        components.append(replace(t, name="transformer_2"))
    components.append(vae_on_meta(vae))
    return ModelSpec(
        name=name, family=detect_family(transformer, index, vae, second), task=detect_task(index, transformer),
        components=tuple(components), dims=transformer_dims(transformer), text_dims=text_dims(UMT5_XXL),
        vae_dims=vae_dims(vae), patch_size=tuple(transformer["patch_size"]), boundary_ratio=index.get("boundary_ratio"),
        expand_timesteps=bool(index.get("expand_timesteps", False)), flow_shift=shift,
    )


def table() -> dict:
    return {name: build(name).to_dict() for name in KNOWN}


def main() -> int:
    from planner.spec import KNOWN_SPECS_FILE

    KNOWN_SPECS_FILE.write_text(json.dumps(table(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {KNOWN_SPECS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
