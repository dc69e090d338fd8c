"""The transformer configs of the models lowvram knows by name, so that planning (planner.spec) and
recognising single files (lowvram.models.single_file) need no download."""

from __future__ import annotations

# REFERENCE.md shapes; the checkpoints' config.json files say the same.
WAN_COMMON = dict(
    patch_size=(1, 2, 2),
    attention_head_dim=128,
    text_dim=4096,
    freq_dim=256,
    out_channels=16,
    qk_norm="rms_norm_across_heads",
    cross_attn_norm=True,
    eps=1e-6,
)
_WAN_14B = dict(WAN_COMMON, num_layers=40, num_attention_heads=40, ffn_dim=13824, in_channels=16)
_WAN_I2V_14B = dict(_WAN_14B, in_channels=36, image_dim=1280, added_kv_proj_dim=5120)  # 480p and 720p: one shape
WAN_TRANSFORMER_CONFIGS: dict[str, dict] = {
    "wan2.1-t2v-1.3b": dict(WAN_COMMON, num_layers=30, num_attention_heads=12, ffn_dim=8960, in_channels=16),
    "wan2.1-t2v-14b": dict(_WAN_14B),
    "wan2.1-i2v-14b-480p": dict(_WAN_I2V_14B),
    "wan2.1-i2v-14b-720p": dict(_WAN_I2V_14B),
}
