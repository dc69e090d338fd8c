"""`lowvram models` on an empty machine and on one with a Hugging Face cache, lowvram's cache and a ComfyUI tree."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import weights_files as W
from lowvram.cli import main

MACHINE = ["--vram", "12", "--ram", "32"]


@pytest.fixture
def empty(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("LOWVRAM_CACHE_DIR", str(tmp_path / "lowvram"))
    monkeypatch.delenv("LOWVRAM_MODEL_DIRS", raising=False)
    return tmp_path


def models_json(capsys, *args) -> dict:
    assert main(["models", "--json", *MACHINE, *args]) == 0
    return json.loads(capsys.readouterr().out)


def by_name(data) -> dict:
    return {m["name"]: m for m in data["models"]}


def test_empty_machine(empty, capsys):
    data = models_json(capsys)
    models = by_name(data)
    assert {"tiny-random", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.1-i2v-14b-480p"} <= set(models)
    m = models["wan2.1-t2v-14b"]
    assert m["locations"] == [] and m["missing"] == ["everything: lowvram download wan2.1-t2v-14b"]
    assert m["transformer_params"] > 14e9 and m["weights_bytes"] > 30 * 1024**3
    assert m["fits"] is True and "peak VRAM" in m["plan"]
    assert models["tiny-random"]["missing"] == [] and "built on first use" in models["tiny-random"]["plan"]
    assert data["files"] == [] and not (empty / "lowvram").exists()  # nothing built or downloaded to answer
    assert models["wan2.2-ti2v-5b"]["task"] == models["tiny-random-ti2v"]["task"] == "ti2v"  # the demo was "i2v"
    assert main(["models", *MACHINE]) == 0
    out = capsys.readouterr().out
    assert "status:  missing everything: lowvram download wan2.1-t2v-1.3b" in out
    assert "tiny-random-ti2v  text-to-video, or image-to-video with --image" in out


def test_filled_machine(empty, capsys, demo_t2v_path, monkeypatch):
    from diffusers import WanTransformer3DModel

    # the HF cache: a complete 1.3B snapshot and a 14B one without its text encoder weights
    for repo, drop in (("Wan-AI--Wan2.1-T2V-1.3B-Diffusers", None), ("Wan-AI--Wan2.1-T2V-14B-Diffusers", "text_encoder/model.safetensors")):
        snap = empty / "hf" / f"models--{repo}" / "snapshots" / "abc"
        shutil.copytree(demo_t2v_path, snap)
        if drop:
            (snap / drop).unlink()
        (snap.parent.parent / "refs").mkdir()
        (snap.parent.parent / "refs" / "main").write_text("abc")
    # lowvram's cache: the built demo
    monkeypatch.setenv("LOWVRAM_CACHE_DIR", str(demo_t2v_path.parent.parent))
    # a ComfyUI models/ tree: a demo-shaped transformer in fp8, a transformer of no known shape, a LoRA
    comfy = empty / "ComfyUI" / "models"
    (comfy / "diffusion_models").mkdir(parents=True)
    (comfy / "loras").mkdir()
    tiny = WanTransformer3DModel.from_pretrained(demo_t2v_path / "transformer")
    W.write_safetensors(W.to_fp8(W.official_state_dict(tiny, W.COMFY_PREFIX)), comfy / "diffusion_models" / "tiny_fp8.safetensors")
    odd = WanTransformer3DModel(**dict(W.GGUF_ABLE, num_layers=1))
    W.write_gguf(W.official_state_dict(odd), comfy / "diffusion_models" / "odd-Q8_0.gguf")
    W.write_safetensors({"blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 4)}, comfy / "loras" / "style.safetensors")
    monkeypatch.setenv("LOWVRAM_MODEL_DIRS", str(comfy))

    data = models_json(capsys)
    models = by_name(data)
    small = models["wan2.1-t2v-1.3b"]
    assert small["missing"] == [] and small["locations"][0]["kind"] == "hf-cache" and small["locations"][0]["bytes"] > 0
    big = models["wan2.1-t2v-14b"]
    assert big["locations"][0]["missing"] == ["text_encoder (weights)"]
    assert big["missing"] == ["text_encoder (weights): lowvram download wan2.1-t2v-14b (fetches only what is missing)"]
    demo = models["tiny-random"]
    kinds = [loc["kind"] for loc in demo["locations"]]
    assert kinds == ["lowvram-cache", "file"] and demo["locations"][1]["what"] == "transformer file, fp8_e4m3fn"
    files = {f["path"].rsplit("/", 1)[1]: f for f in data["files"]}
    assert files["tiny_fp8.safetensors"]["model"] == "tiny-random"
    assert files["odd-Q8_0.gguf"]["model"] is None and files["odd-Q8_0.gguf"]["label"] == "Q8_0 GGUF"
    assert data["other_files"] == 1  # the LoRA
    assert main(["models", *MACHINE]) == 0
    out = capsys.readouterr().out
    assert "transformer files of no known model" in out and "odd-Q8_0.gguf (Q8_0 GGUF" in out
    assert "(1 other weight files" in out


def test_missing_model_dir(empty, capsys):
    assert main(["models", "--dir", str(empty / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
