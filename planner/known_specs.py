"""The known checkpoints' specs, generated from their configs: `python -m planner.known_specs` rewrites
planner/known_specs.json (it builds every component on the meta device, so it needs diffusers and
transformers; planning itself then needs neither). tests/test_planner_model.py checks the file has every known model.

The configs are the checkpoints' own (planner.known_configs: REFERENCE.md shapes, the Wan-AI/*-Diffusers
config.json files).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

from planner.known_configs import CLIP_VIT_H, KNOWN, UMT5_XXL
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


def build(name: str) -> ModelSpec:
    known = KNOWN[name]
    index, transformer, vae = known.index, known.transformer, known.vae
    components = [text_encoder_on_meta(UMT5_XXL)]
    if known.image_encoder:
        components.append(image_encoder_on_meta(CLIP_VIT_H))
    t = transformer_on_meta("transformer", transformer)
    components.append(t)
    if known.two_experts:
        components.append(replace(t, name="transformer_2"))
    components.append(vae_on_meta(vae))
    return ModelSpec(
        name=name, family=detect_family(transformer, index, vae, known.two_experts), task=detect_task(index, transformer),
        components=tuple(components), dims=transformer_dims(transformer), text_dims=text_dims(UMT5_XXL),
        vae_dims=vae_dims(vae), patch_size=tuple(transformer["patch_size"]), boundary_ratio=index.get("boundary_ratio"),
        expand_timesteps=bool(index.get("expand_timesteps", False)), flow_shift=known.flow_shift,
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
