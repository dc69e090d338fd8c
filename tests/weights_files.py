"""Writing a diffusers Wan transformer as the single files people have: the official layout, ComfyUI's
repackaged layout, fp8_e4m3fn, "fp8 scaled", GGUF (Q8_0 with the gguf package, Q6_K with the encoder below)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

COMFY_PREFIX = "model.diffusion_model."

# diffusers -> official names: the inverse of diffusers' convert_wan_transformer_to_diffusers.
_TO_OFFICIAL = (
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    ("attn1", "self_attn"),
    ("attn2", "cross_attn"),
    (".to_out.0.", ".o."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    (".add_k_proj.", ".k_img."),
    (".add_v_proj.", ".v_img."),
    (".norm_added_k.", ".norm_k_img."),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    ("proj_out", "head.head"),
)


def official_key(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    for a, b in _TO_OFFICIAL:
        key = key.replace(a, b)
    key = key.replace(".scale_shift_table", ".modulation")
    if key.startswith("blocks.") and ".norm2." in key:
        key = key.replace(".norm2.", ".norm3.")
    return key


def official_state_dict(model, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + official_key(k): v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _is_big_weight(key: str, t: torch.Tensor) -> bool:
    """What converters quantize: the 2-D weights of the repeated blocks' layers."""
    return ".blocks." in f".{key}" and key.endswith(".weight") and t.dim() == 2


def to_fp8(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.to(torch.float8_e4m3fn) if _is_big_weight(k, v) else v) for k, v in sd.items()}


def to_scaled_fp8(sd: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """ComfyUI's "fp8 scaled": weight / scale in fp8, the per-tensor scale in `.scale_weight`, a `scaled_fp8` marker."""
    out = {}
    for k, v in sd.items():
        if _is_big_weight(k, v):
            scale = v.abs().max().float() / 448.0
            out[k] = (v.float() / scale).to(torch.float8_e4m3fn)
            out[k[: -len(".weight")] + ".scale_weight"] = scale.reshape(1)
        else:
            out[k] = v
    out[prefix + "scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    return out


def write_safetensors(sd: dict[str, torch.Tensor], path: Path) -> Path:
    from safetensors.torch import save_file

    save_file(sd, str(path))
    return path


# --- GGUF -------------------------------------------------------------------------------------------------


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """llama.cpp's Q6_K block layout (the inverse of gguf-py's Q6_K.dequantize_blocks), plain rounding."""
    rows = x.reshape(-1, 256).astype(np.float32)
    n = rows.shape[0]
    sub = rows.reshape(n, 16, 16)
    sub_scale = np.abs(sub).max(axis=-1) / 31.0  # (n, 16)
    d = sub_scale.max(axis=-1, keepdims=True) / 127.0
    d = np.where(d == 0, 1.0, d).astype(np.float16).astype(np.float32)
    sc = np.clip(np.round(sub_scale / d), -128, 127).astype(np.int8)
    eff = (d * sc.astype(np.float32))[..., None]
    q = np.where(eff == 0, 0, np.round(sub / np.where(eff == 0, 1, eff)))
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(n, 256)
    ql = np.zeros((n, 128), np.uint8)
    qh = np.zeros((n, 64), np.uint8)
    for e in range(256):
        h, s, j = e // 128, (e % 128) // 64, e % 64
        ql[:, h * 64 + j] |= (q[:, e] & 0x0F) << (4 * s)
        s2, j2 = (e % 128) // 32, e % 32
        qh[:, h * 32 + j2] |= ((q[:, e] >> 4) & 0x03) << (2 * s2)
    return np.concatenate([ql, qh, sc.view(np.uint8), d.astype(np.float16).view(np.uint8)], axis=-1)


def write_gguf(sd: dict[str, torch.Tensor], path: Path, quant: str = "Q8_0", file_type: int | None = None) -> Path:
    """The big weights at `quant` where their rows allow it (Q8_0 otherwise, then F32); the rest F32, as converters do."""
    import gguf
    from gguf.quants import quantize

    T = gguf.GGMLQuantizationType
    writer = gguf.GGUFWriter(str(path), "wan")
    if file_type is not None:
        writer.add_file_type(file_type)
    for key, t in sd.items():
        data = t.float().numpy()
        qtype = T.F32
        if _is_big_weight(key, t):
            for name in (quant, "Q8_0"):
                block = gguf.GGML_QUANT_SIZES[T[name]][0]
                if data.shape[-1] % block == 0:
                    qtype = T[name]
                    break
        if qtype == T.F32:
            writer.add_tensor(key, data)
        elif qtype == T.Q6_K:
            writer.add_tensor(key, quantize_q6_k(data).reshape(data.shape[0], -1), raw_dtype=qtype)
        else:
            writer.add_tensor(key, quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- A pipeline whose transformer GGUF can quantize ---------------------------------------------------------

# Real Wan heads are 128 wide; GGUF blocks are 32 (Q8_0) or 256 (K-quants) values of a row.
GGUF_ABLE = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, in_channels=16, out_channels=16,
                 text_dim=32, freq_dim=256, ffn_dim=512, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                 rope_max_seq_len=1024)


def build_pipeline_folder(demo_folder: Path, target: Path, seed: int = 7) -> Path:
    """The demo pipeline with a transformer of real head width (random weights), saved as a diffusers folder."""
    import shutil

    from diffusers import WanTransformer3DModel

    shutil.copytree(demo_folder, target)
    shutil.rmtree(target / "transformer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanTransformer3DModel(**GGUF_ABLE)
    model.save_pretrained(target / "transformer", safe_serialization=True)
    return target
