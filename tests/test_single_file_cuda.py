"""Single files under lowvram's GPU placements (skipped without CUDA; run on the GPU machine): fp8 layers upcast
and GGUF layers dequantized on the GPU, with the weights streamed by group offload (+ streams) or from disk, give
the resident result. The CPU tests (test_single_file.py) check the values; these check the devices."""

from __future__ import annotations

import pytest
import torch

from test_placement_cuda import KINDS, cuda_plan
from test_single_file import files  # noqa: F401 (the module fixture: the pipeline folder and its files)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)")

PLACEMENTS = ("block_stream", "leaf_stream", "partial", "disk_stream")


def run(job, plan):
    from lowvram import placement
    from lowvram.models.names import resolve_model
    from lowvram.sampling import runner
    from lowvram.telemetry import ignore

    loaded = runner.load_model(resolve_model(job.model, job.base), plan)
    try:
        placement.enter_stage(loaded.pipe, plan, "encode", image=job.image is not None)
        cond = runner.encode(loaded, job, plan)
        placement.enter_stage(loaded.pipe, plan, "denoise")
        latents, _ = runner.denoise(loaded, job, plan, cond, ignore, runner.Clock())
        return latents.float().cpu()
    finally:
        placement.leave_all(loaded.pipe)


@pytest.mark.parametrize("name", ["official", "fp8", "scaled", "q8", "q6k"])
@pytest.mark.parametrize("kind", PLACEMENTS)
def test_single_file_placements_match_resident(files, name, kind):  # noqa: F811
    from lowvram.job import Job

    job = Job(prompt="a cat walks in the city", model=str(files[name]), base=str(files["folder"]), width=64, height=64, frames=5, steps=2, seed=3)
    reference = run(job, cuda_plan("bf16"))
    latents = run(job, cuda_plan("bf16", **KINDS[kind]))
    assert torch.isfinite(reference).all()
    assert (latents - reference).abs().max().item() <= 1e-6 * reference.abs().max().item()
