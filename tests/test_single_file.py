"""Single-file transformers: the official and ComfyUI layouts, fp32/bf16, fp8_e4m3fn, fp8 scaled and GGUF
(Q8_0, Q6_K), loaded through lowvram and compared with the same transformer loaded from its diffusers folder."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import weights_files as W
from lowvram.cli import main
from lowvram.errors import UserError
from lowvram.models.file_loading import load_transformer_file
from lowvram.models.names import resolve_model
from lowvram.models.single_file import inspect_file
from lowvram.models.weights_header import describe_stored, read_header, stored_weights

# Relative L2 error of one transformer forward against the float32 folder model, measured on this
# random-weight transformer (fp8 4.1e-3, fp8 scaled 4.0e-3, Q8_0 6.3e-4, Q6_K 2.5e-3); bounds ~3x that.
ERROR_BOUNDS = {"fp8": 1.5e-2, "scaled": 1.5e-2, "q8": 2e-3, "q6k": 8e-3}


@pytest.fixture(scope="module")
def files(demo_t2v_path, tmp_path_factory):
    """The pipeline folder (transformer with 128-wide heads) and its transformer written as single files."""
    from diffusers import WanTransformer3DModel

    tmp = tmp_path_factory.mktemp("single-file")
    folder = W.build_pipeline_folder(demo_t2v_path, tmp / "pipe")
    model = WanTransformer3DModel.from_pretrained(folder / "transformer")
    sd = W.official_state_dict(model)
    comfy = {W.COMFY_PREFIX + k: v for k, v in sd.items()}
    folder_bf16 = W.build_pipeline_folder(demo_t2v_path, tmp / "pipe-bf16")  # the same weights, saved in bf16
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(folder_bf16 / "transformer", safe_serialization=True)
    out = {
        "folder": folder,
        "folder_bf16": folder_bf16,
        "state_dict": sd,
        "official": W.write_safetensors(sd, tmp / "wan_official_fp32.safetensors"),
        "comfy_bf16": W.write_safetensors({k: v.to(torch.bfloat16) for k, v in comfy.items()}, tmp / "wan_comfy_bf16.safetensors"),
        "diffusers": W.write_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "diffusion_pytorch_model.safetensors"),
        "fp8": W.write_safetensors(W.to_fp8(sd), tmp / "wan_fp8_e4m3fn.safetensors"),
        "scaled": W.write_safetensors(W.to_scaled_fp8(comfy, W.COMFY_PREFIX), tmp / "wan_fp8_scaled.safetensors"),
        "q8": W.write_gguf(sd, tmp / "wan-Q8_0.gguf", "Q8_0"),
        "q6k": W.write_gguf(sd, tmp / "wan-Q6_K.gguf", "Q6_K"),
    }
    return out


def forward(model):
    g = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, 16, 2, 8, 8, generator=g),
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
    )
    with torch.no_grad():
        return model(**{k: v.to(model.dtype) if v.is_floating_point() else v for k, v in inputs.items()}, return_dict=False)[0].float()


def folder_model(files, dtype=torch.float32):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(files["folder"] / "transformer", torch_dtype=dtype)


def rel_error(got, want) -> float:
    return ((got - want).norm() / want.norm()).item()


def test_q6_k_writer_matches_gguf_reader():
    import gguf
    from gguf.quants import dequantize

    x = np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32)
    back = dequantize(W.quantize_q6_k(x).reshape(4, -1), gguf.GGMLQuantizationType.Q6_K)
    assert np.abs(back - x).max() / np.abs(x).max() < 0.03  # 6-bit values in 16-value sub-blocks


def test_official_names_are_what_diffusers_converts(files):
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    converted = convert_wan_transformer_to_diffusers(dict(files["state_dict"]))
    assert set(converted) == set(folder_model(files).state_dict())
    assert "head.modulation" in files["state_dict"] and "blocks.0.self_attn.q.weight" in files["state_dict"]


@pytest.mark.parametrize("name, layout", [("official", "official"), ("diffusers", "diffusers")])
def test_float32_file_equals_the_folder_model(files, name, layout):
    assert inspect_file(files[name]).layout == layout
    model = load_transformer_file(files[name], files["folder"], "transformer", torch.float32)
    assert torch.equal(forward(model), forward(folder_model(files)))


def test_bf16_comfyui_file_equals_the_folder_model_in_bf16(files):
    tf = inspect_file(files["comfy_bf16"])
    assert (tf.layout, tf.label) == ("comfyui", "bf16")
    model = load_transformer_file(files["comfy_bf16"], files["folder"], "transformer", torch.bfloat16)
    from diffusers import WanTransformer3DModel

    want = WanTransformer3DModel.from_pretrained(files["folder_bf16"] / "transformer", torch_dtype=torch.bfloat16)
    assert torch.equal(forward(model), forward(want))


@pytest.mark.parametrize("name, label", [("fp8", "fp8_e4m3fn"), ("scaled", "fp8_e4m3fn scaled"), ("q8", "Q8_0 GGUF"), ("q6k", "Q6_K GGUF")])
def test_stored_file_within_its_level_error(files, name, label):
    model = load_transformer_file(files[name], files["folder"], "transformer", torch.float32)
    assert model._lowvram_stored.label == label
    err = rel_error(forward(model), forward(folder_model(files)))
    assert 0 < err < ERROR_BOUNDS[name], err
    q = model.blocks[0].attn1.to_q.weight
    if name in ("fp8", "scaled"):
        assert q.dtype == torch.float8_e4m3fn  # still fp8 after computing: upcast per layer only
        assert model.dtype == torch.float32  # diffusers sees the compute dtype
    else:
        assert q.dtype == torch.uint8 and q.quant_type.name == label.split()[0]


def test_scaled_fp8_uses_its_scales(files):
    # The same fp8 values without their scales are a different (wrong) model.
    sd = {k: v for k, v in W.to_scaled_fp8(files["state_dict"]).items() if not k.endswith((".scale_weight", "scaled_fp8"))}
    unscaled = W.write_safetensors(sd, files["folder"].parent / "scales_dropped.safetensors")
    want = forward(folder_model(files))
    scaled = load_transformer_file(files["scaled"], files["folder"], "transformer", torch.float32)
    dropped = load_transformer_file(unscaled, files["folder"], "transformer", torch.float32)
    assert rel_error(forward(scaled), want) < ERROR_BOUNDS["scaled"] < rel_error(forward(dropped), want)


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@pytest.mark.parametrize("name", ["official", "fp8", "scaled"])
def test_safetensors_sizes_are_the_stored_bytes(files, name):
    from safetensors.torch import load_file

    sd = load_file(str(files[name]))
    blocks = [sum(_tensor_bytes(v) for k, v in sd.items() if k.removeprefix(W.COMFY_PREFIX).startswith(f"blocks.{i}.")) for i in range(2)]
    rest = sum(_tensor_bytes(v) for k, v in sd.items() if not k.removeprefix(W.COMFY_PREFIX).startswith("blocks."))
    stored = stored_weights(read_header(files[name]))
    assert (stored.block_bytes, stored.rest_bytes) == (max(blocks), rest)
    assert stored.rest_bytes + 2 * stored.block_bytes <= files[name].stat().st_size


@pytest.mark.parametrize("name, bytes_per_32", [("q8", 34), ("q6k", 210 / 8)])
def test_gguf_sizes_are_the_quantized_bytes(files, name, bytes_per_32):
    expected_block = 0
    for k, v in files["state_dict"].items():
        if k.startswith("blocks.0."):
            quantized = v.dim() == 2 and k.endswith(".weight") and v.shape[-1] % (256 if name == "q6k" else 32) == 0
            expected_block += int(v.numel() / 32 * bytes_per_32) if quantized else v.numel() * 4
    stored = stored_weights(read_header(files[name]))
    assert stored.block_bytes == expected_block
    assert stored.dequant_bytes_per_param > 0
    assert describe_stored(stored, 2).startswith(stored.label + ", ")


def test_gguf_file_type_names_the_mix(files, tmp_path):
    path = W.write_gguf(files["state_dict"], tmp_path / "mix.gguf", "Q6_K", file_type=18)  # llama.cpp's MOSTLY_Q6_K
    assert stored_weights(read_header(path)).label == "Q6_K GGUF"


def test_generate_with_single_files_through_lowvram(files, small_job, cpu_plan):
    from lowvram.sampling.runner import generate

    want = generate(small_job(model=str(files["folder"])), plan=cpu_plan).latents
    same = generate(small_job(model=str(files["official"]), base=str(files["folder"])), plan=cpu_plan).latents
    assert torch.equal(same, want)
    for name in ("scaled", "q8"):
        got = generate(small_job(model=str(files[name]), base=str(files["folder"])), plan=cpu_plan).latents
        assert rel_error(got, want) < ERROR_BOUNDS[name] * 4, name  # 2 steps: the transformer error, compounded


def test_base_inferred_from_the_file_shape(demo_t2v_path, demo_i2v_path, tmp_path):
    from diffusers import WanTransformer3DModel

    for demo, name in ((demo_t2v_path, "tiny-random"), (demo_i2v_path, "tiny-random-i2v")):
        model = WanTransformer3DModel.from_pretrained(demo / "transformer")
        path = W.write_safetensors(W.official_state_dict(model, W.COMFY_PREFIX), tmp_path / f"{name}.safetensors")
        ref = resolve_model(str(path))
        assert (ref.base, ref.kind, ref.files) == (name, "demo", (str(path),))


def test_generate_cli_with_inferred_base(demo_t2v_path, tmp_path):
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel.from_pretrained(demo_t2v_path / "transformer")
    path = W.write_safetensors(W.to_fp8(W.official_state_dict(model)), tmp_path / "tiny_fp8.safetensors")
    out = tmp_path / "v.mp4"
    code = main(["generate", "a cat", "--model", str(path), "--width", "64", "--height", "64", "--frames", "5", "--steps", "1", "--out", str(out), "--quiet"])
    assert code == 0 and out.is_file()


# --- Bad input: exit 2 with the fix, before anything loads, nothing written ------------------------------------


def _generate(tmp_path, *model_args):
    out = tmp_path / "bad.mp4"
    code = main(["generate", "a cat", *model_args, "--width", "64", "--height", "64", "--frames", "5", "--steps", "1", "--out", str(out)])
    assert not out.exists() and not out.with_suffix(".json").exists()
    return code


@pytest.mark.parametrize("suffix, content", [(".safetensors", b"not a weights file at all"), (".ckpt", b"PK\x03\x04" + b"\0" * 64)])
def test_neither_safetensors_nor_gguf(tmp_path, capsys, suffix, content):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(content)
    assert _generate(tmp_path, "--model", str(path)) == 2
    err = capsys.readouterr().err
    assert "neither a safetensors nor a GGUF file" in err and ".safetensors and .gguf" in err


@pytest.mark.parametrize("keys, looks", [
    ({"decoder.middle.0.residual.0.gamma": (4, 1, 1, 1), "encoder.conv1.weight": (4, 3, 3, 3, 3)}, "a Wan VAE"),
    ({"encoder.block.0.layer.0.SelfAttention.q.weight": (4, 4), "shared.weight": (8, 4)}, "a T5/UMT5 text encoder"),
    ({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": (2, 4)}, "a LoRA"),
    ({"double_blocks.0.img_attn.qkv.weight": (12, 4)}, "a FLUX or HunyuanVideo transformer"),
])
def test_another_architecture_is_named(tmp_path, capsys, keys, looks):
    path = W.write_safetensors({k: torch.zeros(s) for k, s in keys.items()}, tmp_path / "other.safetensors")
    assert _generate(tmp_path, "--model", str(path)) == 2
    assert f"this is {looks}" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["fp8", "q8"])
def test_truncated_file(files, tmp_path, capsys, name):
    path = tmp_path / files[name].name
    data = files[name].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert _generate(tmp_path, "--model", str(path), "--base", str(files["folder"])) == 2
    err = capsys.readouterr().err
    assert "truncated" in err and "download the file again" in err.replace("download it again", "download the file again")


def test_gguf_type_diffusers_cannot_run(files, tmp_path, capsys):
    path = W.write_gguf(files["state_dict"], tmp_path / "wan-TQ2_0.gguf", "TQ2_0")
    assert _generate(tmp_path, "--model", str(path), "--base", str(files["folder"])) == 2
    err = capsys.readouterr().err
    assert "GGUF type TQ2_0" in err and "Q8_0" in err


def test_file_of_another_model_than_the_base(demo_t2v_path, files, tmp_path, capsys):
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel.from_pretrained(demo_t2v_path / "transformer")
    path = W.write_safetensors(W.official_state_dict(model), tmp_path / "tiny.safetensors")
    assert _generate(tmp_path, "--model", str(path), "--base", str(files["folder"])) == 2
    err = capsys.readouterr().err
    assert "a Wan transformer of width 24, 2 blocks" in err and "It fits tiny-random: use that as --base" in err


def test_incomplete_file(files, tmp_path):
    sd = {k: v for k, v in files["state_dict"].items() if not k.startswith("blocks.1.cross_attn.")}
    path = W.write_safetensors(sd, tmp_path / "partial.safetensors")
    with pytest.raises(UserError, match="incomplete: 10 of the transformer's .* tensors are missing"):
        load_transformer_file(path, files["folder"], "transformer", torch.float32)


def test_pair_needs_a_two_expert_base(files, tmp_path, capsys):
    pair = f"{files['official']},{files['fp8']}"
    assert _generate(tmp_path, "--model", pair, "--base", str(files["folder"])) == 2
    assert "has 1 transformer(s) and 2 file(s) were given" in capsys.readouterr().err


def test_base_only_with_a_file(files, tmp_path, capsys):
    assert _generate(tmp_path, "--model", str(files["folder"]), "--base", "tiny-random") == 2
    assert "--base tiny-random: only for a single-file --model" in capsys.readouterr().err


def test_missing_file(tmp_path, capsys):
    assert _generate(tmp_path, "--model", str(tmp_path / "nope.gguf")) == 2
    assert "no such file" in capsys.readouterr().err


def test_profile_keeps_the_base(files, tmp_path, capsys):
    from lowvram.profiles.apply import apply_profile, load_profile_file

    path = tmp_path / "p.toml"
    assert main(["profile", "save", str(path), "--model", str(files["q8"]), "--base", str(files["folder"]), "--vram", "8", "--ram", "16"]) == 0
    profile = load_profile_file(str(path))
    assert (profile.model, profile.base) == (str(files["q8"]), str(files["folder"]))
    from lowvram.job import Job

    job, _ = apply_profile(Job(prompt="a cat"), profile)
    assert (job.model, job.base) == (str(files["q8"]), str(files["folder"]))


def test_two_expert_pair_loads_one_file_per_expert(demo_t2v_path, tmp_path):
    """Wan2.2 A14B layout (transformer = high noise, transformer_2 = low noise) on the demo: --model HIGH,LOW."""
    import json
    import shutil

    from diffusers import WanTransformer3DModel

    from lowvram.models.loading import load_pipeline

    base = tmp_path / "two-experts"
    shutil.copytree(demo_t2v_path, base)
    shutil.copytree(base / "transformer", base / "transformer_2")
    index = json.loads((base / "model_index.json").read_text())
    index.update(transformer_2=["diffusers", "WanTransformer3DModel"], boundary_ratio=0.875)
    (base / "model_index.json").write_text(json.dumps(index))
    experts = []
    for i, name in enumerate(("high_noise", "low_noise")):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(i)
            model = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(base / "transformer"))
        experts.append(model)
        W.write_safetensors(W.official_state_dict(model), tmp_path / f"{name}.safetensors")
    pair = f"{tmp_path / 'high_noise.safetensors'},{tmp_path / 'low_noise.safetensors'}"
    ref = resolve_model(pair, str(base))
    assert len(ref.files) == 2 and [s.label for s in ref.stored] == ["fp32", "fp32"]
    pipe, _ = load_pipeline(ref, dtypes={"default": "float32"})
    for loaded, want in zip((pipe.transformer, pipe.transformer_2), experts):
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), want.state_dict().values()))
    with pytest.raises(UserError, match="has 2 transformer.* and 1 file"):
        resolve_model(str(tmp_path / "high_noise.safetensors"), str(base))
