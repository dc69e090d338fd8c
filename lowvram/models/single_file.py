"""Single-file transformers: what a .safetensors / .gguf file is, and which pipeline it belongs to.

People keep Wan transformers as single files: the official layout (`blocks.0.self_attn.q.weight`),
ComfyUI's repackaged files (the same under `model.diffusion_model.`), diffusers' own layout, in
bf16/fp16/fp32, fp8_e4m3fn, "fp8 scaled" or GGUF. Everything here reads headers only: the
architecture comes from tensor shapes, the sizes from the stored bytes.

`--model FILE` takes the text encoder, VAE, tokenizer and scheduler from a base pipeline: `--base`
(a diffusers folder, a hub id or a short name), or else the known model whose transformer has the
file's shape (see `infer_base`). Wan2.2 A14B has two experts: `--model HIGH,LOW` (high-noise file
first, then low-noise), one file per expert.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lowvram.errors import UserError
from lowvram.models.ref import ModelRef
from lowvram.models.weights_header import (
    SCALE_SUFFIXES,
    FileHeader,
    StoredWeights,
    TensorInfo,
    read_header,
    stored_weights,
    strip_prefix,
)

WEIGHT_SUFFIXES = (".safetensors", ".gguf")
PAIR_SEPARATOR = ","
# Keys that carry fp8 scaling information rather than weights (ComfyUI's two formats).
_SCALE_MARKERS = ("scaled_fp8",)
_SCALE_KEY_SUFFIXES = SCALE_SUFFIXES + (".scale_input", ".input_scale", ".comfy_quant")

# What a file that is not a Wan transformer looks like: (keys that must all be present, description).
_LOOKS_LIKE: tuple[tuple[tuple[str, ...], str], ...] = (
    (("vace_blocks.0.after_proj.bias",), "a Wan VACE transformer (video editing), which lowvram does not run"),
    (("motion_encoder.dec.direction.weight",), "a Wan-Animate transformer, which lowvram does not run"),
    (("decoder.middle.0.residual.0.gamma",), "a Wan VAE"),
    (("encoder.block.0.layer.0.SelfAttention.q.weight",), "a T5/UMT5 text encoder"),
    (("shared.weight", "encoder.final_layer_norm.weight"), "a T5/UMT5 text encoder"),
    (("visual.transformer.resblocks.0.attn.in_proj_weight",), "a CLIP vision encoder"),
    (("vision_model.encoder.layers.0.self_attn.q_proj.weight",), "a CLIP vision encoder"),
    (("double_blocks.0.img_attn.qkv.weight",), "a FLUX or HunyuanVideo transformer"),
    (("double_blocks.0.img_attn_qkv.weight",), "a HunyuanVideo transformer"),
    (("single_transformer_blocks.0.attn.to_q.weight",), "a FLUX transformer (diffusers layout)"),
    (("joint_blocks.0.x_block.attn.qkv.weight",), "a Stable Diffusion 3 transformer"),
    (("input_blocks.0.0.weight",), "a Stable Diffusion 1.x/2.x/XL UNet"),
    (("conv_in.weight", "down_blocks.0.resnets.0.conv1.weight"), "a Stable Diffusion UNet or VAE (diffusers layout)"),
    (("adaln_single.emb.timestep_embedder.linear_2.weight",), "an LTX-Video or PixArt transformer"),
)


@dataclass(frozen=True)
class WanShape:
    """The architecture a Wan transformer file has, read from its tensor shapes."""

    dim: int
    in_channels: int
    out_channels: int
    num_layers: int
    ffn_dim: int
    text_dim: int
    freq_dim: int
    image_branch: bool  # Wan2.1 I2V's CLIP image embedder

    def describe(self) -> str:
        kind = "image-to-video (with a CLIP image branch)" if self.image_branch else (
            "image-to-video" if self.in_channels == 36 else "text-to-video" if self.in_channels == 16 else "text/image-to-video")
        return f"a Wan transformer of width {self.dim}, {self.num_layers} blocks, {self.in_channels} input channels ({kind})"


@dataclass(frozen=True)
class TransformerFile:
    path: Path
    header: FileHeader
    layout: str  # "official", "comfyui" (official under model.diffusion_model.) or "diffusers"
    shape: WanShape
    stored: StoredWeights
    tensors: dict  # diffusers name -> TensorInfo (scale tensors and markers left out)

    @property
    def label(self) -> str:
        return self.stored.label

    @property
    def is_fp8(self) -> bool:
        return self.header.format == "safetensors" and self.label.startswith("fp8")

    @property
    def is_gguf(self) -> bool:
        return self.header.format == "gguf"


# --- Reading a file ---------------------------------------------------------------------------------------


def looks_like(names: set[str]) -> str:
    """What a set of tensor names looks like, for an error message."""
    stripped = {strip_prefix(n) for n in names}
    if any(("lora_A" in n or "lora_down" in n or "lora_B" in n) for n in stripped):
        return "a LoRA (an add-on for a model, not a model)"
    for keys, what in _LOOKS_LIKE:
        if all(k in stripped for k in keys):
            return what
    sample = ", ".join(sorted(stripped)[:3])
    return f"not a Wan transformer ({len(stripped)} tensors, e.g. {sample})"


def _is_wan(names: set[str]) -> bool:
    stripped = {strip_prefix(n) for n in names}
    if "vace_blocks.0.after_proj.bias" in stripped or "motion_encoder.dec.direction.weight" in stripped:
        return False
    has_blocks = any(n.startswith("blocks.0.") for n in stripped)
    official = "head.modulation" in stripped
    diffusers = "scale_shift_table" in stripped and "condition_embedder.time_proj.weight" in stripped
    return has_blocks and "patch_embedding.weight" in stripped and (official or diffusers)


def to_diffusers_names(header: FileHeader) -> tuple[str, dict[str, TensorInfo]]:
    """(layout, diffusers name -> TensorInfo) through diffusers' own Wan key converter (names only)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    infos = {t.name: t for t in header.tensors if not _is_scale_key(t.name)}
    names = set(infos)
    if "scale_shift_table" in {strip_prefix(n) for n in names} and not any(strip_prefix(n) == "head.modulation" for n in names):
        return "diffusers", {strip_prefix(n): t for n, t in infos.items()}
    layout = "comfyui" if any(n.startswith("model.diffusion_model.") for n in names) else "official"
    # The converter renames keys of a dict and never looks at the values, so header entries stand in for tensors.
    return layout, convert_wan_transformer_to_diffusers(dict(infos))


def _is_scale_key(name: str) -> bool:
    n = strip_prefix(name)
    return n in _SCALE_MARKERS or n.endswith(_SCALE_KEY_SUFFIXES)


def _shape_of(path: Path, tensors: dict[str, TensorInfo]) -> WanShape:
    def dims(name: str, rank: int) -> tuple[int, ...]:
        t = tensors.get(name)
        if t is None or len(t.shape) != rank:
            raise UserError(f"{path}: looks like a Wan transformer but {name} is missing or has an unexpected shape; the file is incomplete or damaged.")
        return t.shape

    patch = dims("patch_embedding.weight", 5)
    out = dims("proj_out.weight", 2)
    layers = 1 + max(int(n.split(".")[1]) for n in tensors if n.startswith("blocks."))
    return WanShape(
        dim=patch[0],
        in_channels=patch[1],
        out_channels=out[0] // (patch[2] * patch[3] * patch[4]),
        num_layers=layers,
        ffn_dim=dims("blocks.0.ffn.net.0.proj.weight", 2)[0],
        text_dim=dims("condition_embedder.text_embedder.linear_1.weight", 2)[1],
        freq_dim=dims("condition_embedder.time_embedder.linear_1.weight", 2)[1],
        image_branch=any(n.startswith("condition_embedder.image_embedder.") for n in tensors),
    )


def inspect_file(path: Path) -> TransformerFile:
    """Read a single-file transformer's header: layout, architecture, storage. UserError for anything else."""
    path = Path(path)
    header = read_header(path)
    if not _is_wan(header.names()):
        raise UserError(
            f"{path}: this is {looks_like(header.names())}, not a Wan2.1/Wan2.2 transformer. "
            "Give a Wan transformer file (e.g. wan2.1_t2v_14B_bf16.safetensors or a Wan GGUF), or a diffusers folder."
        )
    if header.format == "safetensors":
        _check_fp8_format(header)
    else:
        _check_gguf_types(header)
    layout, tensors = to_diffusers_names(header)
    shape = _shape_of(path, tensors)
    return TransformerFile(path, header, layout, shape, stored_weights(header), tensors)


def _check_fp8_format(header: FileHeader) -> None:
    """ComfyUI's newer quantization metadata can name formats other than per-tensor fp8 (nvfp4, mxfp8, int8)."""
    raw = header.metadata.get("_quantization_metadata")
    if not raw:
        return
    try:
        layers = json.loads(raw).get("layers", {})
    except (json.JSONDecodeError, AttributeError):
        layers = {}
    formats = {str(v.get("format")) for v in layers.values() if isinstance(v, dict)}
    other = sorted(formats - {"float8_e4m3fn", "float8_e5m2"})
    if other:
        raise UserError(
            f"{header.path}: its layers are quantized as {', '.join(other)}, which lowvram cannot run (it runs bf16/fp16/fp32, "
            "fp8_e4m3fn, fp8 scaled and GGUF files). Use an fp8_e4m3fn, bf16 or GGUF version of this model."
        )


def supported_gguf_types() -> tuple[str, ...]:
    """The GGUF types diffusers can dequantize (plus the plain float types)."""
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES

    return tuple(t.name for t in SUPPORTED_GGUF_QUANT_TYPES) + ("F32", "F16")


def _check_gguf_types(header: FileHeader) -> None:
    supported = set(supported_gguf_types())
    bad = sorted({t.dtype for t in header.tensors} - supported)
    if bad:
        raise UserError(
            f"{header.path}: uses GGUF type {', '.join(bad)}, which diffusers cannot run. Use a file quantized as one of "
            f"{', '.join(sorted(supported - {'F32', 'F16', 'BF16'}))} (Q8_0, Q6_K, Q5_K_M and Q4_K_M are common)."
        )


# --- Which pipeline a file belongs to --------------------------------------------------------------------


def config_shape(config: dict) -> tuple:
    """The parts of a diffusers transformer config a file's shapes can show (heads are not visible in shapes)."""
    dim = int(config.get("num_attention_heads", 0)) * int(config.get("attention_head_dim", 0))
    return (dim, int(config.get("in_channels", 16)), int(config.get("num_layers", 0)), int(config.get("ffn_dim", 0)),
            int(config.get("text_dim", 4096)), config.get("image_dim") is not None)


def file_shape_key(shape: WanShape) -> tuple:
    return (shape.dim, shape.in_channels, shape.num_layers, shape.ffn_dim, shape.text_dim, shape.image_branch)


def known_transformer_configs() -> dict[str, dict]:
    """Short name -> transformer config of every model lowvram knows without a download (demo ones included)."""
    from lowvram.models import demo
    from planner.known_configs import KNOWN

    configs = {name: known.transformer for name, known in KNOWN.items()}
    inner = demo._TRANSFORMER["num_attention_heads"] * demo._TRANSFORMER["attention_head_dim"]
    configs["tiny-random"] = dict(demo._TRANSFORMER, in_channels=16)
    configs["tiny-random-i2v"] = dict(demo._TRANSFORMER, in_channels=36, image_dim=16, added_kv_proj_dim=inner)
    configs["tiny-random-a14b"] = dict(demo._TRANSFORMER, in_channels=16)
    configs["tiny-random-a14b-i2v"] = dict(demo._TRANSFORMER, in_channels=36)
    configs["tiny-random-ti2v"] = dict(demo._TRANSFORMER, in_channels=8, out_channels=8)
    return configs


def is_two_expert(name: str) -> bool:
    return "a14b" in name.lower()


def infer_base(files: tuple[TransformerFile, ...]) -> str:
    """The documented rule: the known model whose transformer has the file's shape.

    One file -> a one-transformer model (Wan2.1 before Wan2.2 A14B, whose experts have the same
    shape); two files -> a two-expert Wan2.2 A14B model. Wan2.1 I2V 480P and 720P share a shape:
    720P when the file name says 720, else 480P. Otherwise --base is needed.
    """
    key = file_shape_key(files[0].shape)
    candidates = [n for n, c in known_transformer_configs().items() if config_shape(c) == key]
    two = len(files) == 2
    candidates = [n for n in candidates if is_two_expert(n) == two]
    if len(candidates) > 1:
        wants_720 = "720" in files[0].path.name
        preferred = [n for n in candidates if ("720p" in n) == wants_720]
        candidates = preferred or candidates
    if not candidates:
        experts = "two-expert (Wan2.2 A14B) " if two else ""
        raise UserError(
            f"{files[0].path}: {files[0].shape.describe()}: no known {experts}model has this shape, so lowvram cannot tell "
            "which text encoder and VAE go with it. Give them with --base FOLDER_OR_HUB_ID (a diffusers pipeline of the same model)."
        )
    return candidates[0]


# --- --model FILE[,FILE] --------------------------------------------------------------------------------


def model_files(name: str) -> Optional[tuple[Path, ...]]:
    """The files of a --model value that names weight files (one, or a high,low pair); None for anything else."""
    parts = [p.strip() for p in name.split(PAIR_SEPARATOR)] if PAIR_SEPARATOR in name else [name]
    paths = [Path(os.path.expanduser(p)) for p in parts if p]
    if not paths:
        return None
    is_file = [p.suffix.lower() in WEIGHT_SUFFIXES or p.is_file() for p in paths]
    if not any(is_file):
        return None
    if len(paths) > 2:
        raise UserError(f"--model {name}: at most two files (the high-noise and the low-noise expert of Wan2.2 A14B, in that order).")
    for p in paths:
        if not p.exists():
            raise UserError(f"--model {name}: no such file: {p}. Check the path.")
        if p.is_dir():
            raise UserError(f"--model {name}: {p} is a folder; a pair is two files (HIGH,LOW).")
    return tuple(p.resolve() for p in paths)


def base_transformer_configs(base_ref: ModelRef, short: Optional[str]) -> tuple[dict, ...]:
    """The transformer config(s) of a base pipeline, without loading weights (a hub id: its configs only).
    `short`: the base's short name when it is a known hub id."""
    configs = known_transformer_configs()
    if base_ref.kind == "demo":
        return (configs[base_ref.name],)
    if short in configs:
        return (configs[short],) * (2 if is_two_expert(short) else 1)
    if base_ref.kind == "local":
        return folder_transformer_configs(Path(base_ref.location))
    from lowvram.models.hub import fetch_configs

    return folder_transformer_configs(fetch_configs(base_ref.location))


def folder_transformer_configs(folder: Path) -> tuple[dict, ...]:
    """transformer (and transformer_2) configs of a diffusers folder that lists them."""
    index = json.loads((folder / "model_index.json").read_text())
    out = []
    for name in ("transformer", "transformer_2"):
        entry = index.get(name)
        path = folder / name / "config.json"
        if isinstance(entry, list) and entry and entry[0] and path.is_file():
            out.append(json.loads(path.read_text()))
    if not out:
        raise UserError(f"--base {folder}: lists no transformer in model_index.json; it is not a Wan pipeline.")
    return tuple(out)


def inspect_files(name: str, files: tuple[Path, ...]) -> tuple[TransformerFile, ...]:
    inspected = tuple(inspect_file(p) for p in files)
    if len(inspected) == 2 and file_shape_key(inspected[0].shape) != file_shape_key(inspected[1].shape):
        raise UserError(
            f"--model {name}: the two files are different models ({inspected[0].shape.describe()} vs "
            f"{inspected[1].shape.describe()}); a pair is the high-noise and low-noise expert of one Wan2.2 A14B model."
        )
    return inspected


def files_ref(name: str, inspected: tuple[TransformerFile, ...], base_ref: ModelRef, short: Optional[str]) -> ModelRef:
    """The ModelRef of --model FILE[,FILE] over a resolved base, once the files fit the base's transformer(s)."""
    expected = base_transformer_configs(base_ref, short)
    if len(expected) != len(inspected):
        if len(expected) == 2:
            hint = "--model HIGH,LOW: the high-noise expert's file, a comma, then the low-noise expert's file"
        else:
            hint = "one file, or a Wan2.2 A14B base (--base wan2.2-t2v-a14b / wan2.2-i2v-a14b) for a pair"
        raise UserError(
            f"--model {name}: {base_ref.name} has {len(expected)} transformer(s) and {len(inspected)} file(s) were given. Give {hint}."
        )
    for tf, config in zip(inspected, expected):
        if config_shape(config) != file_shape_key(tf.shape):
            try:
                fits = f" It fits {infer_base((tf,) * len(inspected))}: use that as --base."
            except UserError:
                fits = ""
            raise UserError(
                f"{tf.path}: {tf.shape.describe()}, but the base {base_ref.name} has a different transformer "
                f"(width {config_shape(config)[0]}, {config_shape(config)[2]} blocks, {config_shape(config)[1]} input channels).{fits}"
            )
    return ModelRef(name=name, kind=base_ref.kind, location=base_ref.location, files=tuple(str(tf.path) for tf in inspected),
                    base=base_ref.name, stored=tuple(tf.stored for tf in inspected))


def file_model(tf: TransformerFile) -> Optional[str]:
    """The known model a transformer file belongs to, by shape (and, for Wan2.2 A14B experts, a name with
    high_noise/low_noise in it, as the published files have); None when no known model has its shape."""
    two = any(w in tf.path.name.lower() for w in ("high_noise", "low_noise", "high-noise", "low-noise"))
    try:
        return infer_base((tf, tf) if two else (tf,))
    except UserError:
        return None
