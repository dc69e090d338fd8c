"""The one table of the checkpoints lowvram knows by name, with their configs, so that planning
(planner.known_specs builds the planner's table from it), naming models (lowvram.models.names) and
recognising single files (lowvram.models.single_file) need no download. It lives in the planner because
the planner may not import lowvram, while lowvram may import the planner.

REFERENCE.md shapes; the Wan-AI/*-Diffusers checkpoints' config.json files say the same.
"""

from __future__ import annotations

from typing import NamedTuple

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


class KnownModel(NamedTuple):
    hub_id: str
    index: dict  # model_index.json essentials
    transformer: dict  # both experts of an A14B model have this shape
    two_experts: bool
    vae: dict
    image_encoder: bool  # CLIP_VIT_H (Wan2.1 I2V only)
    flow_shift: float  # the scheduler's


_T2V, _I2V = {"_class_name": "WanPipeline"}, {"_class_name": "WanImageToVideoPipeline"}

# Short name -> model; the order is the one `lowvram models` and the error messages list them in.
KNOWN: dict[str, KnownModel] = {
    "wan2.1-t2v-1.3b": KnownModel("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", _T2V, WAN_1_3B, False, WAN21_VAE, False, 3.0),
    "wan2.1-t2v-14b": KnownModel("Wan-AI/Wan2.1-T2V-14B-Diffusers", _T2V, WAN_14B, False, WAN21_VAE, False, 3.0),
    "wan2.1-i2v-14b-480p": KnownModel("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", _I2V, WAN_I2V_14B, False, WAN21_VAE, True, 3.0),
    "wan2.1-i2v-14b-720p": KnownModel("Wan-AI/Wan2.1-I2V-14B-720P-Diffusers", _I2V, WAN_I2V_14B, False, WAN21_VAE, True, 5.0),
    "wan2.2-t2v-a14b": KnownModel("Wan-AI/Wan2.2-T2V-A14B-Diffusers", dict(_T2V, boundary_ratio=0.875), WAN_14B, True,
                                  WAN21_VAE, False, 3.0),
    "wan2.2-i2v-a14b": KnownModel("Wan-AI/Wan2.2-I2V-A14B-Diffusers", dict(_I2V, boundary_ratio=0.9), WAN22_I2V_A14B, True,
                                  WAN21_VAE, False, 3.0),
    "wan2.2-ti2v-5b": KnownModel("Wan-AI/Wan2.2-TI2V-5B-Diffusers", dict(_T2V, expand_timesteps=True), WAN22_TI2V_5B, False,
                                 WAN22_VAE, False, 5.0),
}
