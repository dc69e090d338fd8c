"""lowvram's own sampling loop gives the latents of diffusers' Wan pipelines, for every demo model.

lowvram keeps its own loop (checkpoints, resume, expert phases, telemetry) but must sample exactly as
diffusers' WanPipeline / WanImageToVideoPipeline do for the same model, seed, prompt, negative prompt,
size, steps, guidance (per expert) and shift: the expert switch at the boundary, guidance_scale_2,
TI2V-5B's expand_timesteps and its image mode (diffusers runs that one with WanImageToVideoPipeline).
"""

from __future__ import annotations

import pytest
import torch

from lowvram.models.demo import ensure_demo
from lowvram.sampling.runner import generate
from lowvram.telemetry import EventLog, PhaseStarted, StepFinished

PROMPT, NEGATIVE = "a red fox runs through a snowy forest", "blurry, static"


def diffusers_latents(name: str, job, image_path=None, pipeline_class=None) -> torch.Tensor:
    from diffusers import DiffusionPipeline, UniPCMultistepScheduler, WanImageToVideoPipeline

    pipe = DiffusionPipeline.from_pretrained(str(ensure_demo(name)), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    if job.shift is not None:
        pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=job.shift)
    if pipeline_class is WanImageToVideoPipeline and not isinstance(pipe, WanImageToVideoPipeline):
        # TI2V-5B's image mode: diffusers loads the same checkpoint as an image-to-video pipeline
        pipe = WanImageToVideoPipeline(**pipe.components, expand_timesteps=pipe.config.expand_timesteps)
    kwargs = dict(prompt=job.prompt, negative_prompt=job.negative_prompt, height=job.height, width=job.width,
                  num_frames=job.frames, num_inference_steps=job.steps, guidance_scale=job.guidance,
                  generator=torch.Generator("cpu").manual_seed(job.seed), output_type="latent")
    if pipe.config.boundary_ratio is not None:
        kwargs["guidance_scale_2"] = job.guidance_2
    if image_path is not None:
        from PIL import Image

        kwargs["image"] = Image.open(image_path).convert("RGB")
    with torch.no_grad():
        return pipe(**kwargs).frames


CASES = [
    # (demo model, image?, extra job fields)
    ("tiny-random", False, {}),
    ("tiny-random-i2v", True, {}),
    ("tiny-random-a14b", False, {"guidance_2": 2.5}),
    ("tiny-random-a14b-i2v", True, {"guidance_2": 6.0, "shift": 5.0}),
    ("tiny-random-ti2v", False, {}),
    ("tiny-random-ti2v", True, {"shift": 7.0}),
]


@pytest.mark.parametrize("name, with_image, extra", CASES, ids=[f"{c[0]}{'-image' if c[1] else ''}" for c in CASES])
def test_latents_equal_diffusers(name, with_image, extra, small_job, cpu_plan, tmp_path):
    from diffusers import WanImageToVideoPipeline

    image = None
    if with_image:
        from PIL import Image

        image = tmp_path / "first.png"
        Image.new("RGB", (80, 56), (200, 30, 40)).save(image)
    size = dict(width=64, height=64) if "ti2v" not in name else dict(width=64, height=96)
    job = small_job(model=name, prompt=PROMPT, negative_prompt=NEGATIVE, frames=9, steps=6, guidance=4.0,
                    image=str(image) if image else None, seed=11, **size, **extra)
    log = EventLog()
    ours = generate(job, plan=cpu_plan, on_event=log).latents
    theirs = diffusers_latents(name, job, image, WanImageToVideoPipeline if with_image else None)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs.cpu(), rtol=1e-5, atol=1e-5)
    if "a14b" in name:  # both experts ran, each from the step the boundary gives, high noise first
        phases = log.of(PhaseStarted)
        assert [p.component for p in phases] == ["transformer", "transformer_2"]
        experts = [s.expert for s in log.of(StepFinished)]
        assert experts == sorted(experts) and experts[0] == "transformer" and experts[-1] == "transformer_2"


def test_the_second_expert_matters(small_job, cpu_plan, tmp_path):
    """The switch is real: guidance_2 changes the latents of a two-expert model (and nothing else does)."""
    job = small_job(model="tiny-random-a14b", frames=5, steps=6, guidance=4.0, guidance_2=1.5)
    a = generate(job.with_(out=str(tmp_path / "a.mp4")), plan=cpu_plan).latents
    b = generate(job.with_(out=str(tmp_path / "b.mp4"), guidance_2=6.0), plan=cpu_plan).latents
    assert not torch.allclose(a, b)
