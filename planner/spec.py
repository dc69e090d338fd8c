"""What a model is made of, in parameters, derived from its configs (never hand-typed sizes).

Each component is built on the meta device from its config (no memory, no weights) and its
parameters are counted by kind: repeated blocks vs the rest, nn.Linear weights (what quanto
quantizes) vs everything else. The four Wan2.1 checkpoints are known by config, so planning works
before anything is downloaded; local folders and the demo model are read from their config files.
"""

from __future__ import annotations

import functools
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from lowvram.errors import UserError

# The known transformer configs live with the model names (lowvram.models.known_configs); re-exported here.
from lowvram.models.known_configs import WAN_COMMON, WAN_TRANSFORMER_CONFIGS  # noqa: E402,F401

# google/umt5-xxl, encoder only (what Wan2.1 uses as its text encoder).
UMT5_XXL_CONFIG = dict(
    vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
)
# open-clip ViT-H/14 vision tower, the I2V image encoder (257 = 16 x 16 patches + class token).
CLIP_VIT_H_CONFIG = dict(
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
    patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu",
)
# AutoencoderKLWan as shipped with every Wan2.1 checkpoint (diffusers' defaults).
WAN_VAE_CONFIG = dict(
    base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
    temperal_downsample=[False, True, True],
)
TEXT_SEQ_LEN = 512  # Wan pipelines pad prompts to 512 tokens (max_sequence_length)
IMAGE_TOKENS = 257  # CLIP ViT-H/14 at 224 px


@dataclass(frozen=True)
class Part:
    """Parameters of some modules, counted by kind."""

    params: int = 0
    linear_params: int = 0  # nn.Linear weights: what quanto quantizes
    largest_linear: int = 0  # params of the largest nn.Linear weight
    largest_tensor: int = 0  # params of the largest single tensor
    leaves: int = 0  # modules holding parameters directly (leaf-level offload hooks one per leaf)

    def __add__(self, other: "Part") -> "Part":
        return Part(
            self.params + other.params,
            self.linear_params + other.linear_params,
            max(self.largest_linear, other.largest_linear),
            max(self.largest_tensor, other.largest_tensor),
            self.leaves + other.leaves,
        )

    def times(self, n: int) -> "Part":
        return Part(
            self.params * n, self.linear_params * n,
            self.largest_linear if n else 0, self.largest_tensor if n else 0, self.leaves * n,
        )


@dataclass(frozen=True)
class ComponentSpec:
    """One pipeline component: `num_blocks` repeated `block`s plus the `rest`.

    `fixed_dtype_bytes`: bytes per parameter when the component is always loaded in one dtype
    (lowvram.models.loading keeps the VAE and the CLIP image encoder in float32); None follows the plan.
    """

    name: str
    block: Part
    num_blocks: int
    rest: Part
    fixed_dtype_bytes: Optional[int] = None

    @functools.cached_property
    def whole(self) -> Part:
        return self.rest + self.block.times(self.num_blocks)

    @property
    def params(self) -> int:
        return self.whole.params


@dataclass(frozen=True)
class TransformerDims:
    dim: int
    ffn_dim: int
    heads: int
    num_layers: int
    in_channels: int
    text_dim: int
    has_image_branch: bool


@dataclass(frozen=True)
class TextEncoderDims:
    d_model: int
    d_ff: int
    heads: int


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str  # "t2v" | "i2v"
    transformer: ComponentSpec
    text_encoder: ComponentSpec
    vae: ComponentSpec
    image_encoder: Optional[ComponentSpec]
    dims: TransformerDims
    text_dims: TextEncoderDims
    vae_base_dim: int
    is_demo: bool = False

    @property
    def components(self) -> tuple[ComponentSpec, ...]:
        extra = (self.image_encoder,) if self.image_encoder is not None else ()
        return (self.transformer, self.text_encoder, self.vae) + extra


# --- Counting --------------------------------------------------------------------------------------


def measure_part(modules, seen: Optional[set] = None) -> Part:
    """Count the parameters of modules (meta or real) by kind; tied parameters count once."""
    seen = set() if seen is None else seen
    total = Part()
    for module in modules:
        for sub in module.modules():
            total = total + _own_part(sub, seen)
    return total


def component_spec(name: str, module: Any, blocks: Any = None, fixed_dtype_bytes: Optional[int] = None) -> ComponentSpec:
    """Split `module` into its repeated `blocks` (a ModuleList, assumed identical) and the rest."""
    block_ids = set()
    block = Part()
    n = 0
    if blocks is not None and len(blocks):
        n = len(blocks)
        block = measure_part([blocks[0]])
        block_ids = {id(m) for b in blocks for m in b.modules()}
    seen = {id(p) for p in blocks.parameters()} if n else set()
    rest = Part()
    for sub in module.modules():
        if id(sub) not in block_ids:
            rest = rest + _own_part(sub, seen)
    return ComponentSpec(name=name, block=block, num_blocks=n, rest=rest, fixed_dtype_bytes=fixed_dtype_bytes)


def _own_part(sub: Any, seen: set) -> Part:
    """The parameters `sub` holds itself, minus those already counted (tied weights, e.g. T5's embeddings)."""
    import torch

    own = [p for p in sub.parameters(recurse=False) if id(p) not in seen]
    seen.update(id(p) for p in own)
    if not own:
        return Part()
    linear = isinstance(sub, torch.nn.Linear) and any(p is sub.weight for p in own)
    return Part(
        params=sum(p.numel() for p in own),
        linear_params=sub.weight.numel() if linear else 0,
        largest_linear=sub.weight.numel() if linear else 0,
        largest_tensor=max(p.numel() for p in own),
        leaves=1,
    )


# --- Building on the meta device -------------------------------------------------------------------


def _on_meta(build):
    import torch

    with torch.device("meta"):
        return build()


def transformer_from_config(config: dict) -> tuple[ComponentSpec, TransformerDims]:
    from diffusers import WanTransformer3DModel

    model = _on_meta(lambda: WanTransformer3DModel.from_config(_clean(config)))
    c = model.config
    dims = TransformerDims(
        dim=c.num_attention_heads * c.attention_head_dim,
        ffn_dim=c.ffn_dim,
        heads=c.num_attention_heads,
        num_layers=c.num_layers,
        in_channels=c.in_channels,
        text_dim=c.text_dim,
        has_image_branch=c.image_dim is not None,
    )
    return component_spec("transformer", model, model.blocks), dims


def text_encoder_from_config(config: dict, class_name: str = "UMT5EncoderModel") -> tuple[ComponentSpec, TextEncoderDims]:
    cls = getattr(importlib.import_module("transformers"), class_name)
    cfg = cls.config_class(**_clean(config))
    model = _on_meta(lambda: cls(cfg))
    blocks = model.encoder.block if hasattr(model, "encoder") and hasattr(model.encoder, "block") else None
    dims = TextEncoderDims(d_model=cfg.d_model, d_ff=cfg.d_ff, heads=cfg.num_heads)
    return component_spec("text_encoder", model, blocks), dims


def image_encoder_from_config(config: dict, class_name: str = "CLIPVisionModel") -> ComponentSpec:
    cls = getattr(importlib.import_module("transformers"), class_name)
    cfg = cls.config_class(**_clean(config))
    model = _on_meta(lambda: cls(cfg))
    inner = getattr(model, "vision_model", model)  # CLIPVisionModelWithProjection nests it
    return component_spec("image_encoder", model, inner.encoder.layers, fixed_dtype_bytes=4)


def vae_from_config(config: dict) -> tuple[ComponentSpec, int]:
    from diffusers import AutoencoderKLWan

    model = _on_meta(lambda: AutoencoderKLWan.from_config(_clean(config)))
    return component_spec("vae", model, fixed_dtype_bytes=4), int(model.config.base_dim)


def _clean(config: dict) -> dict:
    """Drop bookkeeping keys (_class_name, _diffusers_version, architectures, ...) that constructors refuse."""
    drop = {"architectures", "transformers_version", "model_type", "torch_dtype", "dtype"}
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in drop}


# --- Resolving a model name ------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def known_spec(short_name: str) -> ModelSpec:
    """The spec of one of the four Wan2.1 checkpoints, from configs alone (no download)."""
    key = short_name.lower()
    if key not in WAN_TRANSFORMER_CONFIGS:
        raise KeyError(short_name)
    transformer = transformer_from_config(WAN_TRANSFORMER_CONFIGS[key])
    image_encoder = _known_image_encoder() if transformer[1].has_image_branch else None
    return _assemble(key, transformer[1].has_image_branch, transformer, _known_text_encoder(), _known_vae(), image_encoder)


def _assemble(name, i2v, transformer, text_encoder, vae, image_encoder, is_demo=False) -> ModelSpec:
    """A ModelSpec from the (spec, dims) pairs the *_from_config builders return."""
    return ModelSpec(
        name=name,
        task="i2v" if i2v else "t2v",
        transformer=transformer[0],
        text_encoder=text_encoder[0],
        vae=vae[0],
        image_encoder=image_encoder,
        dims=transformer[1],
        text_dims=text_encoder[1],
        vae_base_dim=vae[1],
        is_demo=is_demo,
    )


@functools.lru_cache(maxsize=None)
def _known_text_encoder():
    return text_encoder_from_config(UMT5_XXL_CONFIG)


@functools.lru_cache(maxsize=None)
def _known_vae():
    return vae_from_config(WAN_VAE_CONFIG)


@functools.lru_cache(maxsize=None)
def _known_image_encoder():
    return image_encoder_from_config(CLIP_VIT_H_CONFIG)


def spec_from_folder(folder: Path, name: Optional[str] = None, is_demo: bool = False) -> ModelSpec:
    """Read a diffusers pipeline folder's configs (model_index.json + */config.json) and count on meta."""
    folder = Path(folder)
    index = _read_json(folder / "model_index.json")

    def entry(component: str) -> Optional[tuple[str, dict]]:
        value = index.get(component)
        if not (isinstance(value, list) and value and value[0]):
            return None
        return value[1], _read_json(folder / component / "config.json")

    t = entry("transformer")
    te = entry("text_encoder")
    v = entry("vae")
    missing = [n for n, e in (("transformer", t), ("text_encoder", te), ("vae", v)) if e is None]
    if missing:
        raise UserError(f"{folder}: model_index.json lists no {', '.join(missing)}; a Wan2.1 pipeline needs them.")
    try:
        transformer = transformer_from_config(t[1])
        text_encoder = text_encoder_from_config(te[1], te[0])
        vae = vae_from_config(v[1])
        ie = entry("image_encoder")
        image_encoder = image_encoder_from_config(ie[1], ie[0]) if ie is not None else None
    except (TypeError, ValueError, AttributeError, KeyError, ImportError) as exc:
        raise UserError(
            f"{folder}: its component configs do not describe a Wan2.1 pipeline the planner knows "
            f"({type(exc).__name__}: {exc}). Use a Wan2.1 diffusers checkpoint folder."
        ) from exc
    dims = transformer[1]
    i2v = "ImageToVideo" in str(index.get("_class_name", "")) or dims.in_channels == 36 or dims.has_image_branch
    return _assemble(name or folder.name, i2v, transformer, text_encoder, vae, image_encoder, is_demo)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read it as JSON ({exc}). Is this a diffusers Wan2.1 pipeline folder?") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: a JSON {type(data).__name__}, not an object of settings. Is this a diffusers Wan2.1 pipeline folder?")
    return data


def spec_for_model(name: str, base: Optional[str] = None) -> ModelSpec:
    """--model as the user wrote it (short name, hub id, local folder, demo name, weight file(s) with --base) -> ModelSpec.

    Known checkpoints need no download. An unknown hub id is read from its config files, fetched
    first if they are not cached (small *.json files, no weights).
    """
    from lowvram.models.names import DEMO_NAMES, SHORT_NAMES, resolve_model

    if base is None and name in DEMO_NAMES:
        from lowvram.models.demo import ensure_demo

        return spec_from_folder(ensure_demo(name), name=name, is_demo=True)
    lowered = name.lower()
    if base is None and lowered in SHORT_NAMES:
        return known_spec(lowered)
    by_hub_id = {hub.lower(): short for short, hub in SHORT_NAMES.items()}
    if base is None and lowered in by_hub_id:
        return known_spec(by_hub_id[lowered])
    ref = resolve_model(name, base)
    if ref.files:  # single-file transformer(s): the base's spec, with the files' stored sizes
        return _with_stored(spec_for_model(ref.base), ref)
    if ref.kind == "local":
        return spec_from_folder(Path(ref.location), name=name)
    cached = _hub_cache_folder(ref.location)
    if cached is not None:
        return spec_from_folder(cached, name=name)
    from lowvram.models.hub import fetch_configs

    return spec_from_folder(fetch_configs(ref.location), name=name)


def _with_stored(spec: ModelSpec, ref) -> ModelSpec:
    """The base's spec for a single-file model: its name, and the files' StoredWeights on the transformer spec(s)
    where ComponentSpec has the `stored` field (the "stored" precision level)."""
    import dataclasses

    changes = {}
    for attr, stored in zip(("transformer", "transformer_2"), ref.stored):
        component = getattr(spec, attr, None)
        if component is not None and any(f.name == "stored" for f in dataclasses.fields(component)):
            changes[attr] = dataclasses.replace(component, stored=stored)
    return dataclasses.replace(spec, name=ref.name, **changes)


def _hub_cache_folder(repo_id: str) -> Optional[Path]:
    """The snapshot folder of a hub model already in the local Hugging Face cache (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=["*.json"]))
    except Exception:  # not cached, offline, bad id: the caller says what to do
        return None
    return folder if (folder / "model_index.json").is_file() else None
