"""What a model is made of, in parameters and shapes, read from its configs (never hand-typed sizes).

A `ModelSpec` holds one `ComponentSpec` per component (text encoder, image encoder, one or two
denoisers, VAE), each split into its repeated blocks and the rest and counted by kind (nn.Linear weights,
what quanto quantizes, vs everything else), plus what the sampler needs to know before loading: the
task (t2v / i2v / ti2v), the expert boundary of a two-expert Wan2.2 model, expand_timesteps, the VAE's
compression and the patch size.

Where the numbers come from, fastest first, with no diffusers import and no module built:
- the known checkpoints (short names and their hub ids): `planner/known_specs.json`, generated from their
  configs by `python -m planner.known_specs` (which builds them on the meta device) and checked by a test;
- a local diffusers folder (the demo models too): its config files for shapes and its safetensors
  headers for the parameter counts;
- a folder with configs but no weights yet: its configs, built on the meta device (imports diffusers).
"""

from __future__ import annotations

import functools
import json
import re
import struct
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

from lowvram.errors import UserError
from planner.config_limits import check_configs

TEXT_SEQ_LEN = 512  # Wan pipelines pad prompts to 512 tokens (max_sequence_length)
IMAGE_TOKENS = 257  # CLIP ViT-H/14 at 224 px
NUM_TRAIN_TIMESTEPS = 1000
DENOISERS = ("transformer", "transformer_2")


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
class StoredWeights:
    """A component's weights as a file stores them (a GGUF or fp8 single file): real bytes, not a level's formula."""

    label: str  # e.g. "Q5_K_M GGUF", "fp8_e4m3fn"
    block_bytes: int  # one repeated block as stored
    rest_bytes: int  # everything else as stored
    dequant_bytes_per_param: float = 0.0  # compute-time transient per weight while it is upcast


@dataclass(frozen=True)
class ComponentSpec:
    """One pipeline component: `num_blocks` repeated `block`s plus the `rest`.

    `fixed_dtype_bytes`: bytes per parameter when the component is always held in one dtype
    (lowvram.models.loading keeps the VAE and the CLIP image encoder in float32); None follows the plan.
    """

    name: str
    block: Part
    num_blocks: int
    rest: Part
    fixed_dtype_bytes: Optional[int] = None
    stored: Optional[StoredWeights] = None

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
    out_channels: int = 16


@dataclass(frozen=True)
class TextEncoderDims:
    d_model: int
    d_ff: int
    heads: int


@dataclass(frozen=True)
class VaeDims:
    base_dim: int = 96
    decoder_base_dim: int = 96
    z_dim: int = 16
    scale_spatial: int = 8
    scale_temporal: int = 4


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # see FAMILIES: what the configs say this model is
    task: str  # "t2v" (no image), "i2v" (image required), "ti2v" (image optional)
    components: tuple[ComponentSpec, ...]
    dims: TransformerDims
    text_dims: TextEncoderDims
    vae_dims: VaeDims = VaeDims()
    patch_size: tuple[int, int, int] = (1, 2, 2)
    boundary_ratio: Optional[float] = None  # two-expert models: transformer runs while t >= ratio * 1000
    expand_timesteps: bool = False  # Wan2.2 TI2V: a timestep per token
    flow_shift: float = 3.0  # the checkpoint's scheduler setting
    is_demo: bool = False
    # (component, level) pairs this machine already has in lowvram's quantized cache (set at the edge, by
    # lowvram.models.specs): loading them skips quantizing, its time and its memory
    quantized_cached: tuple[tuple[str, str], ...] = ()

    # --- components ---------------------------------------------------------------------------------

    def get(self, name: str) -> Optional[ComponentSpec]:
        return next((c for c in self.components if c.name == name), None)

    def component(self, name: str) -> ComponentSpec:
        found = self.get(name)
        if found is None:
            raise KeyError(f"{self.name} has no {name}")
        return found

    @property
    def denoisers(self) -> tuple[ComponentSpec, ...]:
        return tuple(c for c in self.components if c.name in DENOISERS)

    @property
    def transformer(self) -> ComponentSpec:
        return self.component("transformer")

    @property
    def text_encoder(self) -> ComponentSpec:
        return self.component("text_encoder")

    @property
    def vae(self) -> ComponentSpec:
        return self.component("vae")

    @property
    def image_encoder(self) -> Optional[ComponentSpec]:
        return self.get("image_encoder")

    @property
    def two_experts(self) -> bool:
        return len(self.denoisers) > 1

    # --- geometry -----------------------------------------------------------------------------------

    @property
    def spatial_multiple(self) -> int:
        """Width and height must be multiples of this: VAE compression x patch size (16, or 32 for TI2V-5B)."""
        return self.vae_dims.scale_spatial * self.patch_size[1]

    @property
    def frame_multiple(self) -> int:
        return self.vae_dims.scale_temporal

    def latent_frames(self, frames: int) -> int:
        return (frames - 1) // self.vae_dims.scale_temporal + 1

    def tokens(self, width: int, height: int, frames: int) -> int:
        """Transformer sequence length of a job."""
        return (self.latent_frames(frames) // self.patch_size[0]) * (height // self.spatial_multiple) * (
            width // self.spatial_multiple)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        def part(d):
            return Part(**d)

        def comp(d):
            d = dict(d)
            d["block"], d["rest"] = part(d["block"]), part(d["rest"])
            d["stored"] = StoredWeights(**d["stored"]) if d.get("stored") else None
            return ComponentSpec(**d)

        data = dict(data)
        data["components"] = tuple(comp(c) for c in data["components"])
        data["dims"] = TransformerDims(**data["dims"])
        data["text_dims"] = TextEncoderDims(**data["text_dims"])
        data["vae_dims"] = VaeDims(**data["vae_dims"])
        data["patch_size"] = tuple(data["patch_size"])
        data["quantized_cached"] = tuple(tuple(x) for x in data.get("quantized_cached", ()))
        return cls(**data)


# --- Families: what a checkpoint is, from its configs ------------------------------------------------

FAMILIES = (
    "wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.1-i2v-14b",
    "wan2.2-t2v-a14b", "wan2.2-i2v-a14b", "wan2.2-ti2v-5b", "wan",
)


def detect_family(transformer: dict, index: dict, vae: dict, has_second_expert: bool) -> str:
    """The model family from its configs alone (never from a name or a path). 'wan' when the shapes are unknown."""
    in_channels = transformer.get("in_channels", 16)
    dim = transformer.get("num_attention_heads", 0) * transformer.get("attention_head_dim", 128)
    if has_second_expert or index.get("boundary_ratio") is not None:
        return "wan2.2-i2v-a14b" if in_channels == 36 else "wan2.2-t2v-a14b"
    if index.get("expand_timesteps") or vae.get("z_dim") == 48 or vae.get("is_residual"):
        return "wan2.2-ti2v-5b"
    if transformer.get("image_dim") is not None or in_channels == 36:
        return "wan2.1-i2v-14b" if dim == 5120 else "wan"
    if dim == 1536:
        return "wan2.1-t2v-1.3b"
    if dim == 5120:
        return "wan2.1-t2v-14b"
    return "wan"


def detect_task(index: dict, transformer: dict) -> str:
    """t2v, i2v (image required) or ti2v (Wan2.2 TI2V-5B: a text-to-video model that also takes a first frame)."""
    if index.get("expand_timesteps"):
        return "ti2v"
    if "ImageToVideo" in str(index.get("_class_name", "")):
        return "i2v"
    if transformer.get("image_dim") or transformer.get("in_channels") == 36:
        return "i2v"
    return "t2v"


# --- Counting modules (the meta-device path) ---------------------------------------------------------


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


def _on_meta(build):
    import torch

    with torch.device("meta"):
        return build()


def _clean(config: dict) -> dict:
    """Drop bookkeeping keys (_class_name, _diffusers_version, architectures, ...) that constructors refuse."""
    drop = {"architectures", "transformers_version", "model_type", "torch_dtype", "dtype"}
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in drop}


def transformer_dims(c: dict) -> TransformerDims:
    heads, head_dim = int(c.get("num_attention_heads", 40)), int(c.get("attention_head_dim", 128))
    return TransformerDims(
        dim=heads * head_dim, ffn_dim=int(c.get("ffn_dim", 13824)), heads=heads, num_layers=int(c.get("num_layers", 40)),
        in_channels=int(c.get("in_channels", 16)), text_dim=int(c.get("text_dim", 4096)),
        has_image_branch=c.get("image_dim") is not None, out_channels=int(c.get("out_channels") or 16),
    )


def text_dims(c: dict) -> TextEncoderDims:
    return TextEncoderDims(d_model=int(c.get("d_model", 4096)), d_ff=int(c.get("d_ff", 10240)), heads=int(c.get("num_heads", 64)))


def vae_dims(c: dict) -> VaeDims:
    base = int(c.get("base_dim", 96))
    return VaeDims(base_dim=base, decoder_base_dim=int(c.get("decoder_base_dim") or base), z_dim=int(c.get("z_dim", 16)),
                   scale_spatial=int(c.get("scale_factor_spatial") or 8), scale_temporal=int(c.get("scale_factor_temporal") or 4))


def transformer_on_meta(name: str, config: dict) -> ComponentSpec:
    from diffusers import WanTransformer3DModel

    model = _on_meta(lambda: WanTransformer3DModel.from_config(_clean(config)))
    return component_spec(name, model, model.blocks)


def text_encoder_on_meta(config: dict, class_name: str = "UMT5EncoderModel") -> ComponentSpec:
    import importlib

    cls = getattr(importlib.import_module("transformers"), class_name)
    model = _on_meta(lambda: cls(cls.config_class(**_clean(config))))
    blocks = model.encoder.block if hasattr(model, "encoder") and hasattr(model.encoder, "block") else None
    return component_spec("text_encoder", model, blocks)


def image_encoder_on_meta(config: dict, class_name: str = "CLIPVisionModel") -> ComponentSpec:
    import importlib

    cls = getattr(importlib.import_module("transformers"), class_name)
    model = _on_meta(lambda: cls(cls.config_class(**_clean(config))))
    inner = getattr(model, "vision_model", model)  # CLIPVisionModelWithProjection nests it
    return component_spec("image_encoder", model, inner.encoder.layers, fixed_dtype_bytes=4)


def vae_on_meta(config: dict) -> ComponentSpec:
    from diffusers import AutoencoderKLWan

    model = _on_meta(lambda: AutoencoderKLWan.from_config(_clean(config)))
    return component_spec("vae", model, fixed_dtype_bytes=4)


# --- Counting safetensors headers (the fast path for folders) ----------------------------------------

# The repeated block lists, as they appear in the weight names of each component.
BLOCK_PREFIXES = {
    "transformer": "blocks.", "transformer_2": "blocks.",
    "text_encoder": "encoder.block.",
    "image_encoder": "vision_model.encoder.layers.",
}
# 2-D weights that are embeddings, not nn.Linear (quanto leaves them alone).
_NOT_LINEAR = re.compile(r"(embed|shared|relative_attention_bias|position)")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
                "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def read_safetensors_header(path: Path) -> dict:
    """{tensor name: {"dtype", "shape", ...}} of a .safetensors file, read from its header only."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > 100 * 1024 * 1024:
            raise ValueError(f"header of {n} bytes is not plausible")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file())


def _header_part(entries: list[tuple[str, list[int]]]) -> Part:
    total = Part()
    modules: set[str] = set()
    for name, shape in entries:
        numel = 1
        for s in shape:
            numel *= int(s)
        linear = len(shape) == 2 and name.endswith(".weight") and not _NOT_LINEAR.search(name)
        total = total + Part(numel, numel if linear else 0, numel if linear else 0, numel, 0)
        modules.add(name.rpartition(".")[0])
    return replace(total, leaves=len(modules))


def component_from_headers(name: str, folder: Path, num_blocks: int, fixed_dtype_bytes: Optional[int] = None) -> Optional[ComponentSpec]:
    """Count a component from its safetensors headers; None when the folder holds no weights."""
    files = _weight_files(folder)
    if not files:
        return None
    entries: list[tuple[str, list[int]]] = []
    for f in files:
        for key, info in read_safetensors_header(f).items():
            entries.append((key, list(info.get("shape", ()))))
    prefix = BLOCK_PREFIXES.get(name)
    block0, rest = [], []
    in_blocks = 0
    for key, shape in entries:
        if prefix and key.startswith(prefix):
            in_blocks += 1
            if key.startswith(f"{prefix}0."):
                block0.append((key, shape))
        else:
            rest.append((key, shape))
    n = num_blocks if block0 else 0
    return ComponentSpec(name=name, block=_header_part(block0), num_blocks=n, rest=_header_part(rest),
                         fixed_dtype_bytes=fixed_dtype_bytes)


# --- Known checkpoints ------------------------------------------------------------------------------------

KNOWN_SPECS_FILE = Path(__file__).with_name("known_specs.json")


@functools.lru_cache(maxsize=None)
def _known_table() -> dict:
    return json.loads(KNOWN_SPECS_FILE.read_text())


def known_spec(short_name: str) -> ModelSpec:
    """The spec of a known checkpoint (by short name), from the generated table: no download, no diffusers."""
    table = _known_table()
    key = short_name.lower()
    if key not in table:
        raise KeyError(short_name)
    return ModelSpec.from_dict(table[key])


# --- Folders ----------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise UserError(f"{path}: cannot read it as JSON ({exc}). Is this a diffusers Wan pipeline folder?") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a JSON {type(data).__name__}, not an object of settings. Is this a diffusers Wan pipeline folder?")
    return data


def _entry(folder: Path, index: dict, component: str) -> Optional[tuple[str, dict]]:
    value = index.get(component)
    if not (isinstance(value, list) and len(value) == 2 and value[0] and value[1]):
        return None
    if not (folder / component).is_dir():
        raise UserError(
            f"{folder}: model_index.json lists {component} but the folder {component}/ is missing: the checkpoint "
            "is incomplete (a Wan2.2 A14B checkpoint has both transformer/ and transformer_2/). Download it again."
        )
    return str(value[1]), _read_json(folder / component / "config.json")


def spec_from_folder(folder: Path, name: Optional[str] = None, is_demo: bool = False) -> ModelSpec:
    """Read a diffusers pipeline folder's configs (model_index.json + */config.json) and weight headers."""
    folder = Path(folder)
    index = _read_json(folder / "model_index.json")
    entries = {c: _entry(folder, index, c) for c in ("text_encoder", "image_encoder", "transformer", "transformer_2", "vae")}
    missing = [c for c in ("text_encoder", "vae") if entries[c] is None]
    if entries["transformer"] is None and entries["transformer_2"] is None:
        missing.insert(0, "transformer")
    if missing:
        raise UserError(f"{folder}: model_index.json lists no {', '.join(missing)}; a Wan pipeline needs them.")
    ratio = index.get("boundary_ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1):
        raise UserError(
            f"{folder / 'model_index.json'}: boundary_ratio {ratio!r} must be a number between 0 and 1 (the fraction of "
            "the 1000 training timesteps where the low-noise expert takes over; Wan2.2 uses 0.875 and 0.9). "
            "Fix it, or download the checkpoint again."
        )
    if index.get("boundary_ratio") is not None and (entries["transformer"] is None or entries["transformer_2"] is None):
        have = "transformer" if entries["transformer"] is not None else "transformer_2"
        raise UserError(
            f"{folder}: a two-expert Wan2.2 pipeline (boundary_ratio {index['boundary_ratio']}) needs both experts, "
            f"but only {have} is there. Download the whole checkpoint (both transformer/ and transformer_2/)."
        )
    check_configs(folder, {c: e[1] for c, e in entries.items() if e is not None})  # before anything counts layers
    try:
        spec = _assemble_from_configs(folder, index, entries, name or folder.name, is_demo)
    except (TypeError, ValueError, AttributeError, KeyError, ImportError) as exc:
        raise UserError(
            f"{folder}: its component configs do not describe a Wan pipeline the planner knows "
            f"({type(exc).__name__}: {exc}). Use a Wan2.1 / Wan2.2 diffusers checkpoint folder."
        ) from exc
    return spec


def _assemble_from_configs(folder: Path, index: dict, entries: dict, name: str, is_demo: bool) -> ModelSpec:
    t_cfg = (entries["transformer"] or entries["transformer_2"])[1]
    te_class, te_cfg = entries["text_encoder"]
    _, vae_cfg = entries["vae"]
    components = []
    te = component_from_headers("text_encoder", folder / "text_encoder", int(te_cfg.get("num_layers", 24)))
    components.append(te or text_encoder_on_meta(te_cfg, te_class))
    if entries["image_encoder"] is not None:
        ie_class, ie_cfg = entries["image_encoder"]
        ie = component_from_headers("image_encoder", folder / "image_encoder", int(ie_cfg.get("num_hidden_layers", 32)), 4)
        components.append(ie or image_encoder_on_meta(ie_cfg, ie_class))
    for denoiser in DENOISERS:
        if entries[denoiser] is None:
            continue
        cfg = entries[denoiser][1]
        spec = component_from_headers(denoiser, folder / denoiser, int(cfg.get("num_layers", 40)))
        components.append(spec or transformer_on_meta(denoiser, cfg))
    vae = component_from_headers("vae", folder / "vae", 0, 4)
    components.append(vae or vae_on_meta(vae_cfg))
    scheduler = {}
    if (folder / "scheduler" / "scheduler_config.json").is_file():
        scheduler = _read_json(folder / "scheduler" / "scheduler_config.json")
    two = entries["transformer"] is not None and entries["transformer_2"] is not None
    return ModelSpec(
        name=name,
        family=detect_family(t_cfg, index, vae_cfg, two),
        task=detect_task(index, t_cfg),
        components=tuple(components),
        dims=transformer_dims(t_cfg),
        text_dims=text_dims(te_cfg),
        vae_dims=vae_dims(vae_cfg),
        patch_size=tuple(int(x) for x in t_cfg.get("patch_size", (1, 2, 2))),
        boundary_ratio=index.get("boundary_ratio"),
        expand_timesteps=bool(index.get("expand_timesteps", False)),
        flow_shift=float(scheduler.get("flow_shift") or 3.0),
        is_demo=is_demo,
    )


__all__ = [
    "ComponentSpec", "DENOISERS", "FAMILIES", "IMAGE_TOKENS", "ModelSpec", "NUM_TRAIN_TIMESTEPS", "Part",
    "StoredWeights", "TEXT_SEQ_LEN", "TextEncoderDims", "TransformerDims", "VaeDims", "component_from_headers",
    "component_spec", "detect_family", "detect_task", "known_spec", "measure_part", "read_safetensors_header",
    "spec_from_folder",
]
