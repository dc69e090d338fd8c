"""The configs of the models lowvram knows by name, so that planning (planner.known_specs builds the
planner's table from them) and recognising single files (lowvram.models.single_file) need no download.

REFERENCE.md shapes; the Wan-AI/*-Diffusers checkpoints' config.json files say the same.
"""

from __future__ import annotations

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

# Transformer config per short name (both experts of an A14B model have the same shape).
WAN_TRANSFORMER_CONFIGS: dict[str, dict] = {
    "wan2.1-t2v-1.3b": WAN_1_3B,
    "wan2.1-t2v-14b": WAN_14B,
    "wan2.1-i2v-14b-480p": WAN_I2V_14B,
    "wan2.1-i2v-14b-720p": WAN_I2V_14B,
    "wan2.2-t2v-a14b": WAN_14B,
    "wan2.2-i2v-a14b": WAN22_I2V_A14B,
    "wan2.2-ti2v-5b": WAN22_TI2V_5B,
}
