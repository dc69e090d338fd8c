"""Load a diffusers Wan2.1 pipeline from a ModelRef: safetensors only, task read from the checkpoint."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from lowvram.errors import UserError
from lowvram.models.library_logs import quiet_library_logs, quiet_torchao_import
from lowvram.models.names import ModelRef

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
WEIGHT_COMPONENTS = ("transformer", "transformer_2", "text_encoder", "vae", "image_encoder")


@dataclass(frozen=True)
class CheckpointInfo:
    """What we know of a checkpoint before loading weights."""

    location: str
    pipeline_class: str
    task: str  # "t2v", "i2v" or "ti2v" (image optional)
    components: tuple[str, ...]
    transformer_config: dict


def read_checkpoint_info(folder: Path) -> CheckpointInfo:
    """Read model_index.json and the transformer config; refuse pickle-only weights."""
    index = _read_json(folder / "model_index.json", "Is this a diffusers pipeline folder?")
    components = tuple(k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0])
    transformer_config: dict = {}
    for denoiser in ("transformer", "transformer_2"):
        tconf = folder / denoiser / "config.json"
        if tconf.is_file():
            transformer_config = _read_json(tconf, "The checkpoint looks damaged: download or save it again.")
            break
    refuse_pickle_only(folder, components)
    refuse_missing_weights(folder, components)
    return CheckpointInfo(
        location=str(folder),
        pipeline_class=str(index.get("_class_name", "")),
        task=detect_task(index, transformer_config),
        components=components,
        transformer_config=transformer_config,
    )


def _read_json(path: Path, hint: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read it as JSON ({exc}). {hint}") from exc


def detect_task(model_index: dict, transformer_config: dict) -> str:
    """t2v, i2v (the pipeline class or the transformer's inputs say so) or ti2v (Wan2.2 TI2V-5B)."""
    from planner.spec import detect_task as from_configs

    return from_configs(model_index, transformer_config)


def refuse_pickle_only(folder: Path, components: tuple[str, ...]) -> None:
    """Pickle weights can run arbitrary code when loaded; lowvram loads safetensors only."""
    for name in components:
        sub = folder / name
        if name not in WEIGHT_COMPONENTS or not sub.is_dir():
            continue
        files = [p.name for p in sub.iterdir() if p.is_file()]
        has_safetensors = any(f.endswith(".safetensors") for f in files)
        pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
        if pickles and not has_safetensors:
            raise UserError(
                f"{sub}: only pickle weights ({', '.join(pickles)}), no .safetensors. lowvram loads safetensors only, "
                "because pickle files can run arbitrary code when opened. Convert the checkpoint to safetensors "
                "(e.g. load it once in a trusted environment and save_pretrained(..., safe_serialization=True))."
            )


def refuse_missing_weights(folder: Path, components: tuple[str, ...]) -> None:
    """Every weight component listed must have its weights: a Wan2.2 A14B folder with one expert's files (an
    interrupted download) would otherwise fail half-way through loading."""
    for name in components:
        sub = folder / name
        if name in WEIGHT_COMPONENTS and sub.is_dir() and not any(sub.glob("*.safetensors")):
            raise UserError(
                f"{sub}: no weights (.safetensors) although model_index.json lists {name}: the checkpoint is incomplete. "
                "Download it again (`lowvram download NAME`), or pass a complete folder."
            )


def checkpoint_folder(ref: ModelRef) -> Path:
    """The local folder of a ModelRef: builds the demo, or downloads a hub id (safetensors and configs only,
    with a progress line; a single-file model's base without its transformer weights)."""
    if ref.is_demo:
        from lowvram.models.demo import ensure_demo

        return ensure_demo(ref.base if ref.files else ref.name)  # a file over a demo base: that demo's folder
    if ref.kind == "local":
        return Path(ref.location)
    from lowvram.models.hub import ensure_pipeline

    skip = ("transformer", "transformer_2") if ref.files else ()
    return ensure_pipeline(ref.location, skip=skip, say=lambda line: print(line, file=sys.stderr))


def load_pipeline(
    ref: ModelRef, dtypes: Optional[dict[str, str]] = None, preload: Optional[Callable[[Path], dict]] = None
) -> tuple[Any, CheckpointInfo]:
    """Load the pipeline on the CPU through diffusers' from_pretrained, safetensors only.

    `dtypes`: torch dtype name per component (the plan's); components not named load in bfloat16, the VAE
    and the image encoder always in float32. `preload(folder)` may return ready components (e.g. cached
    quantized ones); they are passed to from_pretrained, which then does not load those components' weights.
    """
    import torch

    quiet_torchao_import()  # before diffusers imports its quantizers (and torchao): on every run, not only the first
    from diffusers import DiffusionPipeline

    folder = checkpoint_folder(ref)  # first: a download shows its own progress
    quiet_library_logs()
    info = read_checkpoint_info(folder)
    wanted = dict(dtypes or {})
    torch_dtypes: dict[str, Any] = {"default": getattr(torch, wanted.pop("default", "bfloat16"))}
    torch_dtypes.update({name: getattr(torch, d) for name, d in wanted.items() if name in info.components})
    torch_dtypes["vae"] = torch.float32
    if "image_encoder" in info.components:
        torch_dtypes["image_encoder"] = torch.float32
    try:
        components = preload(folder) if preload is not None else {}
        if ref.files:
            # the file's transformer(s) compute in the plan's dtype (bf16 unless a CPU plan's float32)
            components.update(single_file_transformers(ref, folder, torch_dtypes.get("transformer", torch_dtypes["default"])))
        with _preloaded(components):
            pipe = DiffusionPipeline.from_pretrained(str(folder), use_safetensors=True, dtype=torch_dtypes)
    except (OSError, EnvironmentError, ValueError) as exc:
        raise UserError(f"--model {ref.name}: could not load the pipeline from {folder}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe, info


def single_file_transformers(ref: ModelRef, folder: Path, dtype: Any) -> dict:
    """The transformer(s) of a single-file model (--model FILE[,FILE]), loaded as stored; replaces any preloaded ones."""
    from lowvram.models.file_loading import load_transformer_file

    names = ("transformer", "transformer_2")[: len(ref.files)]
    return {name: load_transformer_file(Path(path), folder, name, dtype) for name, path in zip(names, ref.files)}


@contextmanager
def _preloaded(components: dict):
    """While active, diffusers' pipeline loader returns these ready components instead of loading them.

    Passing them as from_pretrained(transformer=...) is not enough: WanPipeline declares its
    transformer optional (default None), and diffusers 0.42 then loads it from the folder anyway.
    """
    if not components:
        yield
        return
    from diffusers.pipelines import pipeline_utils

    original = pipeline_utils.load_sub_model

    def load_sub_model(*args, **kwargs):
        name = kwargs.get("name")
        if name in components:
            return components[name]
        return original(*args, **kwargs)

    pipeline_utils.load_sub_model = load_sub_model
    try:
        yield
    finally:
        pipeline_utils.load_sub_model = original
