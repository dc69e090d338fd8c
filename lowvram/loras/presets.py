"""Sampling settings a LoRA calls for: steps, guidance and flow shift (step-distillation LoRAs: 4 steps, no CFG).

Where a preset comes from, first match wins per LoRA:
1. the file's own safetensors metadata: `lowvram.steps`, `lowvram.guidance`, `lowvram.shift` (and
   `lowvram.distilled` = "true" for a step-distillation LoRA), for LoRA makers to record their settings;
2. lowvram's table of well-known distillation LoRAs below, keyed by the file's sha256.
A profile's job settings and the options given on the command line win over both (lowvram.loras.resolve).

The table's hashes are the files' SHA256 as their Hugging Face pages list them; the settings are those of
LightX2V's own configs for these LoRAs (ModelTC/LightX2V configs/distill/wan_t2v_distill_4step_cfg_lora.json
and wan_i2v_distill_4step_cfg_lora.json: infer_steps 4, enable_cfg false, sample_shift 5; configs/wan22/
wan_moe_t2v_distill_lora.json and wan_moe_i2v_distill_with_lora.json: the same, with the high-noise LoRA on
the high-noise expert and the low-noise one on the low-noise expert, strength 1.0). Kijai's files are LoRAs
extracted from the same LightX2V distilled models (Kijai/WanVideo_comfy). LightX2V runs its distilled models
with feature caching off ("NoCaching"), so lowvram turns TeaCache / MagCache off under such a preset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

# Metadata keys a LoRA file may carry (strings, as safetensors metadata is).
META_STEPS, META_GUIDANCE, META_SHIFT, META_DISTILLED = "lowvram.steps", "lowvram.guidance", "lowvram.shift", "lowvram.distilled"


@dataclass(frozen=True)
class Preset:
    steps: Optional[int] = None
    guidance: Optional[float] = None  # both experts' guidance; 1.0 = no unconditional pass
    shift: Optional[float] = None
    distilled: bool = False  # a step-distillation LoRA: step skipping has nothing to skip
    expert: str = ""  # the expert the file is made for ("high" / "low"), "" for any
    source: str = ""  # where the preset comes from, for the user

    def describe(self) -> str:
        parts = []
        if self.steps is not None:
            parts.append(f"steps {self.steps}")
        if self.guidance is not None:
            parts.append(f"guidance {self.guidance:g}" + (" (no unconditional pass)" if self.guidance <= 1.0 else ""))
        if self.shift is not None:
            parts.append(f"shift {self.shift:g}")
        return ", ".join(parts)


_LX_T2V = "LightX2V configs/distill/wan_t2v_distill_4step_cfg_lora.json"
_LX_I2V = "LightX2V configs/distill/wan_i2v_distill_4step_cfg_lora.json"
_LX22_T2V = "LightX2V configs/wan22/wan_moe_t2v_distill_lora.json"
_LX22_I2V = "LightX2V configs/wan22/wan_moe_i2v_distill_with_lora.json"
_HF = "https://huggingface.co/"

# sha256 -> (file name, what it is, expert, settings source, file page)
KNOWN: dict[str, tuple[str, str, str, str, str]] = {
    "1c918df9eaa102766d8f99104209ce55fe7a892278a667a63d721c5d1c18efb1": (
        "wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors", "LightX2V's 4-step T2V-14B LoRA, rank 64", "", _LX_T2V,
        _HF + "lightx2v/Wan2.1-Distill-Loras/blob/main/wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors"),
    "914fafa5dded72e6c470d6f764b97fe4d71567dae7cc01d1181b310efd5c37a6": (
        "Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank32.safetensors", "LightX2V's T2V-14B step+CFG distillation, rank 32 (Kijai)", "",
        _LX_T2V, _HF + "Kijai/WanVideo_comfy/blob/main/Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank32.safetensors"),
    "ef33de1ae634c5f583920b38748553cb2e68f4b811be2ccabde20aa9affb5e21": (
        "lightx2v_T2V_14B_cfg_step_distill_v2_lora_rank128_bf16.safetensors", "LightX2V's T2V-14B step+CFG distillation v2, rank 128 (Kijai)", "",
        _LX_T2V, _HF + "Kijai/WanVideo_comfy/tree/main/Lightx2v"),
    "2a7e5419ad4a4954eb7344bbdb85a86f1c989534a16fd961e769c4b812612995": (
        "lightx2v_14B_T2V_cfg_step_distill_lora_adaptive_rank_quantile_0.15_bf16.safetensors",
        "LightX2V's T2V-14B step+CFG distillation, adaptive rank (Kijai)", "", _LX_T2V,
        _HF + "Kijai/WanVideo_comfy/blob/main/Lightx2v/lightx2v_14B_T2V_cfg_step_distill_lora_adaptive_rank_quantile_0.15_bf16.safetensors"),
    "85c4a61c30e0497aa44b91d93a893b624708461a56fe5485183b28fa07e2dfb3": (
        "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors", "LightX2V's I2V-14B-480P step+CFG distillation, rank 64 (Kijai)", "",
        _LX_I2V, _HF + "Kijai/WanVideo_comfy/blob/main/Lightx2v/lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors"),
    "89003385f8a9d53ba58fd6ede647fdc90292e8568a54683fcfe6db5556a31769": (
        "wan2.2_t2v_A14b_high_noise_lora_rank64_lightx2v_4step_1217.safetensors", "LightX2V's 4-step Wan2.2 T2V-A14B high-noise LoRA",
        "high", _LX22_T2V, _HF + "lightx2v/Wan2.2-Distill-Loras/blob/main/wan2.2_t2v_A14b_high_noise_lora_rank64_lightx2v_4step_1217.safetensors"),
    "4df7c206f3189472da2f92c0a42dcf308f04433d9c14302d08d56e99a3f51322": (
        "wan2.2_t2v_A14b_low_noise_lora_rank64_lightx2v_4step_1217.safetensors", "LightX2V's 4-step Wan2.2 T2V-A14B low-noise LoRA",
        "low", _LX22_T2V, _HF + "lightx2v/Wan2.2-Distill-Loras/blob/main/wan2.2_t2v_A14b_low_noise_lora_rank64_lightx2v_4step_1217.safetensors"),
    "887c3bdeb74e83859c920438e16ca31f39ab18ce189abc5f0e36f8348c5bbb19": (
        "wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors", "LightX2V's 4-step Wan2.2 I2V-A14B high-noise LoRA",
        "high", _LX22_I2V, _HF + "lightx2v/Wan2.2-Distill-Loras/blob/main/wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors"),
    "8833bd4fd7c8eabebf0bc8ee5cfaf47f4f310ce116928a02c1adf8941dd4b0f1": (
        "wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors", "LightX2V's 4-step Wan2.2 I2V-A14B low-noise LoRA",
        "low", _LX22_I2V, _HF + "lightx2v/Wan2.2-Distill-Loras/blob/main/wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors"),
}
# Every file in the table is LightX2V step + CFG distillation: 4 steps, no CFG, shift 5.
DISTILL_4STEP = dict(steps=4, guidance=1.0, shift=5.0, distilled=True)


def from_table(sha256: str) -> Optional[Preset]:
    entry = KNOWN.get(sha256)
    if entry is None:
        return None
    name, what, expert, settings, page = entry
    return Preset(**DISTILL_4STEP, expert=expert, source=f"lowvram's table: {what} ({page}; settings from {settings})")


def from_metadata(metadata: dict, name: str) -> Optional[Preset]:
    """The file's own settings (lowvram.* metadata keys); None when it has none. Malformed values are ignored
    with their key named in the source line, never guessed."""
    values: dict = {}
    bad = []
    for key, field, kind in ((META_STEPS, "steps", int), (META_GUIDANCE, "guidance", float), (META_SHIFT, "shift", float)):
        raw = metadata.get(key)
        if raw is None:
            continue
        try:
            value = kind(str(raw).strip())
        except ValueError:
            bad.append(key)
            continue
        limits = {"steps": (1, 1000), "guidance": (0.0, 50.0), "shift": (0.01, 100.0)}[field]
        if isinstance(value, float) and not math.isfinite(value) or not limits[0] <= value <= limits[1]:
            bad.append(key)
            continue
        values[field] = value
    if not values:
        return None
    distilled = str(metadata.get(META_DISTILLED, "")).strip().lower() in ("1", "true", "yes")
    note = f" (ignored malformed {', '.join(bad)})" if bad else ""
    return Preset(**values, distilled=distilled, source=f"the file's own metadata{note}")


def preset_for(sha256: str, metadata: dict, name: str) -> Optional[Preset]:
    return from_metadata(metadata, name) or from_table(sha256)
