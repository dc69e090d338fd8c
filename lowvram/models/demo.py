"""The built-in demo models: tiny random-weight Wan pipelines of every kind lowvram runs.

tiny-random (Wan2.1 T2V), tiny-random-i2v (Wan2.1 I2V, with a CLIP image encoder), tiny-random-a14b and
tiny-random-a14b-i2v (Wan2.2 A14B: two experts split at a boundary), tiny-random-ti2v (Wan2.2 TI2V-5B: the
Wan2.2 VAE with 16x compression, a timestep per token, an optional first frame).

Built deterministically from a seed, saved with `save_pretrained` (safetensors) into the user cache
on first use, then loaded through the same loading path as any real checkpoint. Its weights are
random: its videos are noise. It exists so that a new machine, the tests and CI can run the whole
product end to end without downloading anything.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from lowvram.paths import cache_dir

DEMO_SEED = 1234
DEMO_VERSION = 2  # bump when the demo's architecture changes, so old caches are rebuilt
DEMO_LABEL = "tiny-random demo model (random weights: its output is noise)"
# name -> (kind, boundary_ratio); the kinds build_demo_pipeline knows.
DEMO_KINDS = {
    "tiny-random": ("t2v", None),
    "tiny-random-i2v": ("i2v", None),
    "tiny-random-a14b": ("t2v", 0.875),
    "tiny-random-a14b-i2v": ("i2v-a14b", 0.9),
    "tiny-random-ti2v": ("ti2v", None),
}

# The tiny text encoder's vocabulary: common prompt words, the rest map to <unk>.
_WORDS = (
    "a an the of on in at with and to from by is are cat dog person man woman child bird fish horse car "
    "boat city street forest sea ocean river mountain sky sun moon night day rain snow light red blue green "
    "white black gold walks runs flies swims dances jumps slowly quickly camera shot close wide video "
    "cinematic beautiful tree flower house road"
).split()

_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    out_channels=16,
    text_dim=32,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=1024,
)


def demo_path(name: str = "tiny-random") -> Path:
    return cache_dir() / "demo" / f"{name}-v{DEMO_VERSION}"


def ensure_demo(name: str = "tiny-random") -> Path:
    """Return the demo pipeline's folder, building and saving it first if needed."""
    target = demo_path(name)
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build into a temporary sibling and rename: an interrupted build leaves no half folder behind.
    from lowvram.models.library_logs import quiet_library_logs

    quiet_library_logs()
    from lowvram.io import scratch

    scratch.sweep(target.parent)  # what a build killed half-way left
    tmp = scratch.new_dir(target.parent, target.name)
    try:
        kind, boundary = DEMO_KINDS[name]
        pipe = build_demo_pipeline(kind, boundary)
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "lowvram_demo.json").write_text(
            json.dumps({"name": name, "version": DEMO_VERSION, "seed": DEMO_SEED, "label": DEMO_LABEL}, indent=2)
        )
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished first; use its copy.
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in _WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def _text_encoder():
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(_WORDS) + 3,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )


def _scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)


def build_demo_pipeline(kind: str = "t2v", boundary_ratio: float | None = None):
    """Build a tiny pipeline in memory (float32, CPU), deterministically from DEMO_SEED.

    kind: "t2v" / "i2v" (Wan2.1 shapes, the I2V one with a CLIP image encoder), "i2v-a14b" (Wan2.2 I2V:
    36 input channels, no image encoder), "ti2v" (Wan2.2 TI2V: the 16x VAE, expand_timesteps). With a
    `boundary_ratio` there are two experts (transformer, transformer_2) with different weights.
    """
    import torch
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanPipeline, WanTransformer3DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_SEED)
        tokenizer = _tokenizer()
        text_encoder = _text_encoder()
        if kind == "ti2v":
            z = 8
            vae = AutoencoderKLWan(
                base_dim=8, decoder_base_dim=8, z_dim=z, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                latents_mean=[0.0] * z, latents_std=[1.0] * z,
            )
            transformer = WanTransformer3DModel(**dict(_TRANSFORMER, in_channels=z, out_channels=z))
            return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=_scheduler(),
                               transformer=transformer, expand_timesteps=True)
        vae = AutoencoderKLWan(
            base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
        )
        if kind == "t2v":
            experts = [WanTransformer3DModel(in_channels=16, **_TRANSFORMER) for _ in range(2 if boundary_ratio else 1)]
            return WanPipeline(
                tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=_scheduler(), transformer=experts[0],
                transformer_2=experts[1] if boundary_ratio else None, boundary_ratio=boundary_ratio,
            )
        if kind == "i2v-a14b":  # Wan2.2 I2V conditions on the first frame's latents only: no image encoder
            experts = [WanTransformer3DModel(in_channels=36, **_TRANSFORMER) for _ in range(2)]
            return WanImageToVideoPipeline(
                tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=_scheduler(), transformer=experts[0],
                transformer_2=experts[1], boundary_ratio=boundary_ratio, image_encoder=None, image_processor=None,
            )
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

        inner = _TRANSFORMER["num_attention_heads"] * _TRANSFORMER["attention_head_dim"]
        transformer = WanTransformer3DModel(in_channels=36, image_dim=16, added_kv_proj_dim=inner, **_TRANSFORMER)
        image_encoder = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=32,
                intermediate_size=32,
                patch_size=4,
            )
        )
        image_processor = CLIPImageProcessor(crop_size=32, size=32)
        return WanImageToVideoPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            scheduler=_scheduler(),
            transformer=transformer,
            image_encoder=image_encoder,
            image_processor=image_processor,
        )
