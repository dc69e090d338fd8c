"""Quantized weights: accuracy bound of int8, the cache round trip, and no re-quantization on reload."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from lowvram.bench.quant_error import denoised_latents as denoised
from plans import TP, plan_with

# Measured on the demo model (64x64, 5 frames, 2 steps, seeds 3/4/5), relative L2 error of the
# denoised latents against float32 weights: int8 1.85e-3..1.98e-3 (text encoder int8 too: same),
# fp8 1.19e-2..1.25e-2, int4 2.96e-2..3.12e-2. The bounds below leave about 5x margin for int8.
INT8_REL_ERROR_BOUND = 1e-2


def cpu_plan(**changes):
    return plan_with("cpu", **changes)


def drop_entries(folder, level="int8", dtype="float32"):
    from lowvram.placement import quant_cache

    for component in ("transformer", "text_encoder"):
        shutil.rmtree(quant_cache.entry_path(folder, component, level, dtype), ignore_errors=True)


@pytest.fixture
def job(demo_t2v_path):
    from lowvram.job import Job

    return Job(prompt="a cat walks in the city", model="tiny-random", width=64, height=64, frames=5, steps=2, seed=4)


def test_int8_stays_within_stated_error_of_float(job):
    reference, _ = denoised(job, cpu_plan())
    quantized, loaded = denoised(job, cpu_plan(precision="int8", text_encoder_precision="int8"))
    rel = ((quantized - reference).norm() / reference.norm()).item()
    assert 0 < rel < INT8_REL_ERROR_BOUND  # > 0: the weights really were quantized
    from lowvram.placement.quantize import quantized_level

    assert quantized_level(loaded.pipe.transformer) == "int8"
    assert quantized_level(loaded.pipe.text_encoder) == "int8"


def test_cache_round_trips_and_second_load_does_not_quantize(job, demo_t2v_path, monkeypatch):
    from lowvram.placement import quant_cache, quantize

    drop_entries(demo_t2v_path)
    calls = []
    real_quantize = quantize.quantize_weights
    monkeypatch.setattr(quantize, "quantize_weights", lambda m, level, *rest: calls.append(level) or real_quantize(m, level, *rest))
    loaded_from_cache = []
    real_load = quant_cache.load
    monkeypatch.setattr(quant_cache, "load", lambda *a: loaded_from_cache.append(real_load(*a)) or loaded_from_cache[-1])

    plan = cpu_plan(precision="int8", text_encoder_precision="int8", transformer=TP("block_offload"))
    first, _ = denoised(job, plan)
    assert calls == ["int8", "int8"]  # transformer and text encoder, quantized from the checkpoint
    for component in ("transformer", "text_encoder"):
        entry = quant_cache.entry_path(demo_t2v_path, component, "int8", "float32")
        assert {p.name for p in entry.iterdir()} == {"model-00000.safetensors", "quantization_map.json", "lowvram_quant.json"}

    calls.clear()
    loaded_from_cache.clear()
    second, loaded = denoised(job, plan)
    assert calls == []  # nothing quantized again
    # from_pretrained did not load the bf16 transformer nor text encoder: both came from the cache
    assert any(m is loaded.pipe.transformer for m in loaded_from_cache)
    assert any(m is loaded.pipe.text_encoder for m in loaded_from_cache)
    assert torch.equal(first, second)


def test_a_full_disk_while_caching_does_not_fail_the_run(demo_t2v_path, monkeypatch, caplog):
    import safetensors.torch
    from safetensors import SafetensorError

    from lowvram.models.names import resolve_model
    from lowvram.placement import quant_cache
    from lowvram.placement.quantize import quantized_level
    from lowvram.sampling import runner

    def full_disk(*args, **kwargs):  # what safetensors raises when the disk is full
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    drop_entries(demo_t2v_path)
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with caplog.at_level("WARNING", logger="lowvram.placement"):
        loaded = runner.load_model(resolve_model("tiny-random"), cpu_plan(precision="int8"))
    assert quantized_level(loaded.pipe.transformer) == "int8"
    assert "could not cache the quantized transformer" in caplog.text
    assert not quant_cache.entry_path(demo_t2v_path, "transformer", "int8", "float32").exists()


def test_tied_text_encoder_weights_stay_tied(demo_t2v_path):
    from lowvram.placement import quant_cache
    from lowvram.placement.quantize import quantize_weights

    drop_entries(demo_t2v_path)
    from transformers import UMT5EncoderModel

    original = UMT5EncoderModel.from_pretrained(demo_t2v_path / "text_encoder")
    quantize_weights(original, "int8")
    quant_cache.save(original, demo_t2v_path, "text_encoder", "int8", "float32")
    cached = quant_cache.load(demo_t2v_path, "text_encoder", "int8", "float32")
    assert cached.get_input_embeddings().weight is cached.encoder.embed_tokens.weight
    ids = torch.tensor([[3, 4, 5, 1]])
    with torch.no_grad():
        assert torch.equal(cached(ids).last_hidden_state, original(ids).last_hidden_state)


def test_identity_follows_the_checkpoint_files(tmp_path):
    from lowvram.placement.quant_cache import checkpoint_identity

    (tmp_path / "transformer").mkdir()
    weights = tmp_path / "transformer" / "model.safetensors"
    weights.write_bytes(b"x" * 10)
    first = checkpoint_identity(tmp_path, "transformer")
    assert checkpoint_identity(tmp_path, "transformer") == first
    os.utime(weights, ns=(0, 12345))
    assert checkpoint_identity(tmp_path, "transformer") != first


def test_sharded_save_round_trips_and_leaves_no_temporary_folder(demo_t2v_path, monkeypatch):
    from diffusers import WanTransformer3DModel

    from lowvram.placement import quant_cache
    from lowvram.placement.quantize import quantize_weights

    monkeypatch.setattr(quant_cache, "SHARD_BYTES", 4096)  # the demo transformer is ~100 KB: many shards
    module = WanTransformer3DModel.from_pretrained(demo_t2v_path / "transformer")
    quantize_weights(module, "int4")
    entry = quant_cache.save(module, demo_t2v_path, "transformer", "int4", "float32")
    assert len(list(entry.glob("model-*.safetensors"))) > 3
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".")]
    cached = quant_cache.load(demo_t2v_path, "transformer", "int4", "float32")
    x = torch.randn(1, 16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    kwargs = dict(timestep=torch.tensor([10.0]), encoder_hidden_states=torch.zeros(1, 3, module.config.text_dim))
    with torch.no_grad():
        assert torch.equal(cached(hidden_states=x, **kwargs)[0], module(hidden_states=x, **kwargs)[0])
    shutil.rmtree(entry)


def test_missing_or_stale_entry_reads_as_none(demo_t2v_path):
    from lowvram.placement import quant_cache

    assert quant_cache.load(demo_t2v_path, "transformer", "fp8", "bfloat16") is None


def test_quantizing_lets_go_of_the_mapped_checkpoint(demo_t2v_path):
    """Unquantized leftovers are copied, so no tensor keeps the bf16 file mapping (and its pages) alive."""
    from diffusers import WanTransformer3DModel

    from lowvram.placement.quantize import quantize_weights

    module = WanTransformer3DModel.from_pretrained(demo_t2v_path / "transformer")
    loaded = {t.untyped_storage().data_ptr() for t in module.parameters()}
    quantize_weights(module, "int8")
    plain = [t for t in module.parameters() if type(t) in (torch.Tensor, torch.nn.Parameter)]
    assert plain and not {t.untyped_storage().data_ptr() for t in plain} & loaded


def test_damaged_entry_is_discarded_and_requantized(demo_t2v_path, caplog):
    """A truncated shard (a crash mid-copy, a bad disk) must not break every later run."""
    from diffusers import WanTransformer3DModel

    from lowvram.placement import quant_cache
    from lowvram.placement.quantize import quantize_weights

    module = WanTransformer3DModel.from_pretrained(demo_t2v_path / "transformer")
    quantize_weights(module, "int8")
    entry = quant_cache.save(module, demo_t2v_path, "transformer", "int8", "bfloat16")
    shard = next(entry.glob("model-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with caplog.at_level("WARNING"):
        assert quant_cache.load(demo_t2v_path, "transformer", "int8", "bfloat16") is None
    assert "damaged" in caplog.text and not entry.exists()
    entry = quant_cache.save(module, demo_t2v_path, "transformer", "int8", "bfloat16")  # the next run re-caches it
    assert quant_cache.load(demo_t2v_path, "transformer", "int8", "bfloat16") is not None
    shutil.rmtree(entry)
