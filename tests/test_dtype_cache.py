"""Components stored in another dtype than the plan's are converted once into lowvram's cache and then load
memory-mapped (no converted copy held in process memory), with the same numbers as a converting load."""

from __future__ import annotations

import torch

from lowvram.models import dtype_cache
from lowvram.models.names import resolve_model
from lowvram.sampling.runner import load_model
from plans import plan_with


def _bf16_plan():
    import dataclasses

    plan = plan_with("cpu", "bf16")
    return dataclasses.replace(plan, components=tuple(
        dataclasses.replace(c, compute_dtype="bfloat16") if c.role in ("denoiser", "text_encoder") else c for c in plan.components))


def test_float32_checkpoint_converts_once_and_loads_mapped(demo_t2v_path, monkeypatch, small_job):
    import shutil

    from lowvram.sampling.runner import generate

    assert dtype_cache.stored_dtype(demo_t2v_path / "transformer") == "float32"  # the demo, like Wan's checkpoints
    plan = _bf16_plan()
    monkeypatch.setattr(dtype_cache, "MIN_BYTES", 0)  # the demo is tiny; real transformers are GBs
    entry = dtype_cache.entry_path(demo_t2v_path, "transformer", "bfloat16")
    shutil.rmtree(entry, ignore_errors=True)
    loaded = load_model(resolve_model("tiny-random"), plan)
    assert (entry / dtype_cache.COMPLETE).is_file()
    assert dtype_cache.stored_dtype(entry) == "bfloat16"
    assert loaded.pipe.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    converted = generate(small_job(), plan=plan, loaded=loaded).latents

    monkeypatch.setattr(dtype_cache, "MIN_BYTES", 10**15)  # no cache: diffusers converts while loading
    direct = generate(small_job(out=str(small_job().out).replace("out.mp4", "direct.mp4")), plan=plan,
                      loaded=load_model(resolve_model("tiny-random"), plan)).latents
    assert torch.equal(converted, direct)


def test_no_room_for_the_cache_falls_back_to_converting_in_memory(demo_t2v_path, monkeypatch, caplog):
    import shutil

    monkeypatch.setattr(dtype_cache, "MIN_BYTES", 0)
    shutil.rmtree(dtype_cache.entry_path(demo_t2v_path, "transformer", "bfloat16"), ignore_errors=True)
    out = dtype_cache.preload(demo_t2v_path, {"transformer": "bfloat16"}, free_bytes=lambda p: 0)
    assert out == {} and "no room to cache transformer" in caplog.text
    assert not dtype_cache.entry_path(demo_t2v_path, "transformer", "bfloat16").exists()
