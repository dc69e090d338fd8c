"""Test checkpoints for step skipping, built from the demo model without changing it.

- `smooth_copy`: the demo with its time embedder's high-frequency inputs zeroed. With random weights
  every step changes the timestep embedding by 50-150%, so every TeaCache schedule is all-compute or
  all-skip; damped, the relative changes are 1-4% as in real models and schedules mix.
- `two_expert_copy`: the demo as a two-expert Wan2.2-style pipeline (`transformer` for t >= boundary,
  `transformer_2` below), the second expert a differently seeded copy of the first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

TIME_L1 = "condition_embedder.time_embedder.linear_1.weight"


def _rewrite(file: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def smooth_copy(demo: Path, dst: Path) -> Path:
    """A copy of a demo checkpoint whose time embedder ignores the fastest-changing timestep features."""
    if (dst / "model_index.json").is_file():
        return dst
    shutil.copytree(demo, dst)
    freq_index = torch.arange(256) % 128  # cos half then sin half; index 0 is the highest frequency

    def damp(t):
        t[TIME_L1][:, freq_index < 96] = 0

    _rewrite(dst / "transformer" / "diffusion_pytorch_model.safetensors", damp)
    return dst


def two_expert_copy(demo: Path, dst: Path, boundary_ratio: float = 0.875) -> Path:
    """The (smooth) demo as a two-expert pipeline: transformer_2 = the transformer with its weights shuffled."""
    if (dst / "model_index.json").is_file():
        return dst
    shutil.copytree(demo, dst)
    shutil.copytree(dst / "transformer", dst / "transformer_2")
    gen = torch.Generator().manual_seed(2)

    def perturb(t):
        for name, value in t.items():
            if value.is_floating_point() and name != TIME_L1:
                t[name] = value + 0.05 * value.std().nan_to_num() * torch.randn(value.shape, generator=gen)

    _rewrite(dst / "transformer_2" / "diffusion_pytorch_model.safetensors", perturb)
    index = json.loads((dst / "model_index.json").read_text())
    index["transformer_2"] = index["transformer"]
    index["boundary_ratio"] = boundary_ratio
    (dst / "model_index.json").write_text(json.dumps(index, indent=2))
    return dst
