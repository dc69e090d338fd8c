"""The known checkpoints' specs, generated from their configs: `python -m planner.known_specs` rewrites
planner/known_specs.json (it builds every component on the meta device, so it needs diffusers and
transformers; planning itself then needs neither). tests/test_planner_spec.py checks the file is current.

The configs are the checkpoints' own (lowvram.models.known_configs: REFERENCE.md shapes, the Wan-AI/*-Diffusers
config.json files).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

from lowvram.models.known_configs import (
    CLIP_VIT_H,
    UMT5_XXL,
    WAN21_VAE,
    WAN22_I2V_A14B,
    WAN22_TI2V_5B,
    WAN22_VAE,
    WAN_1_3B,
    WAN_14B,
    WAN_I2V_14B,
)
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
