"""--model as the user wrote it -> the planner's ModelSpec. The edge where planning meets the machine: a
demo model is built on first use, an unknown hub id's config files are fetched, single files are read for
their sizes. The planner itself (planner.spec) only reads folders and its table of known checkpoints."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

from planner.spec import DENOISERS, ModelSpec, known_spec, spec_from_folder


def spec_for_model(name: str, base: Optional[str] = None) -> ModelSpec:
    """The model's spec, with what this machine already has of it in lowvram's quantized cache."""
    spec = _spec_for_model(name, base)
    return replace(spec, quantized_cached=_quantized_cached(name, base, spec))


def _quantized_cached(name: str, base: Optional[str], spec: ModelSpec, keys: dict | None = None) -> tuple[tuple[str, str], ...]:
    """(component, level) entries of the quantized cache for this model's local folder (none before a download).
    `keys`: {denoiser: fused LoRA set key}: those entries are looked up too, as (name, "level@lora<key>")."""
    from lowvram.models.names import resolve_model

    try:
        ref = resolve_model(name, base)
    except Exception:  # resolution problems are reported where the model is loaded
        return ()
    folder = Path(ref.location) if ref.kind in ("local", "demo") else _hub_cache_folder(ref.location)
    if folder is None or not folder.is_dir() or ref.files:
        return ()
    from lowvram.placement import quant_cache  # imports torch: only for a model that is on disk

    out = []
    for c in spec.components:
        for key in ("",) + ((keys[c.name],) if keys and c.name in keys else ()):
            for level in ("fp8", "int8", "int4"):
                for dtype in ("bfloat16", "float32"):
                    if (quant_cache.entry_path(folder, c.name, level, dtype, key) / quant_cache.INFO_FILE).is_file():
                        out.append((c.name, f"{level}@lora{key}" if key else level))
    return tuple(dict.fromkeys(out))


def with_fused_cached(spec: ModelSpec, job) -> ModelSpec:
    """The spec with what the quantized cache holds of each denoiser with the job's LoRAs fused in (an entry per
    LoRA set: lowvram.loras.spec.lora_set_key), so the planner counts quantizing only when it is missing."""
    if not job.loras:
        return spec
    from lowvram.loras.spec import lora_set_key

    keys = {d.name: lora_set_key(lora for lora in job.loras if d.name in lora.components(spec.two_experts)) for d in spec.denoisers}
    keys = {name: key for name, key in keys.items() if key}
    return replace(spec, quantized_cached=_quantized_cached(job.model, job.base, spec, keys))


def _spec_for_model(name: str, base: Optional[str] = None) -> ModelSpec:
    """--model as the user wrote it (short name, hub id, local folder, demo name, weight file(s) with --base) -> ModelSpec.

    Known checkpoints need no download. An unknown hub id is read from its config files, fetched
    first if they are not cached (small *.json files, no weights).
    """
    from lowvram.models.names import DEMO_NAMES, resolve_model

    short = known_short_name(name, base)
    if short is not None:
        return replace(known_spec(short), name=name)
    if base is None and name in DEMO_NAMES:
        return spec_from_folder(config_folder(name), name=name, is_demo=True)
    ref = resolve_model(name, base)
    if ref.files:  # single-file transformer(s): the base's spec, with the files' stored sizes
        return _with_stored(_spec_for_model(ref.base), ref)
    return spec_from_folder(config_folder(name, base), name=name)


def known_short_name(name: str, base: Optional[str] = None) -> Optional[str]:
    """The short name of a model lowvram knows by name or hub id (its configs ship with lowvram), else None."""
    from lowvram.models.names import SHORT_NAMES

    if base is not None:
        return None
    lowered = name.lower()
    if lowered in SHORT_NAMES:
        return lowered
    return {hub.lower(): short for short, hub in SHORT_NAMES.items()}.get(lowered)


def known_model_configs(name: str, base: Optional[str] = None) -> Optional[dict]:
    """The configs lowvram ships for a model it knows by name or hub id (model_index essentials, transformer, VAE),
    as lowvram.models.task.model_configs gives a checkpoint's: for checks before its weights are downloaded.
    None for any other model."""
    short = known_short_name(name, base)
    if short is None:
        return None
    from planner.known_configs import KNOWN

    known = KNOWN[short]
    return {"index": dict(known.index), "transformer": dict(known.transformer), "vae": dict(known.vae)}


def config_folder(name: str, base: Optional[str] = None) -> Path:
    """A folder with the model's config files (the pipeline itself, or its configs only): the demo is built,
    an unknown hub id's configs are fetched; a single-file model's is its base's."""
    from lowvram.models.names import DEMO_NAMES, resolve_model

    if base is None and name in DEMO_NAMES:
        from lowvram.models.demo import ensure_demo

        return ensure_demo(name)
    ref = resolve_model(name, base)
    if ref.files:
        return config_folder(ref.base)
    if ref.kind == "local":
        return Path(ref.location)
    cached = _hub_cache_folder(ref.location)
    if cached is not None:
        return cached
    from lowvram.models.hub import fetch_configs

    return fetch_configs(ref.location)


def transformer_config(name: str, base: Optional[str] = None) -> dict:
    """The denoiser's diffusers config (both experts of a two-expert model share it), without downloading weights."""
    import json

    from lowvram.errors import UserError
    from planner.known_configs import KNOWN

    short = known_short_name(name, base)
    if short is not None:
        return dict(KNOWN[short].transformer)
    from lowvram.models.names import DEMO_NAMES, resolve_model

    if base is not None or name not in DEMO_NAMES:
        ref = resolve_model(name, base)
        if ref.files:  # a single file fits its base's transformer (checked when it was resolved)
            return transformer_config(ref.base)
    folder = config_folder(name, base)
    for denoiser in DENOISERS:
        path = folder / denoiser / "config.json"
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise UserError(f"{path}: cannot read it as JSON ({exc}); the checkpoint looks damaged.") from exc
    raise UserError(f"--model {name}: {folder} has no transformer/config.json; it is not a Wan pipeline.")


def _with_stored(spec: ModelSpec, ref) -> ModelSpec:
    """The base's spec for a single-file model: its name, and the files' real sizes (StoredWeights) on the
    denoiser(s) they replace, which the planner offers as the "stored" precision."""
    stored = dict(zip(DENOISERS, ref.stored))
    components = tuple(replace(c, stored=stored[c.name]) if stored.get(c.name) is not None else c for c in spec.components)
    return replace(spec, name=ref.name, components=components, is_demo=False)


def _hub_cache_folder(repo_id: str) -> Optional[Path]:
    """The snapshot folder of a hub model already in the local Hugging Face cache (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=["*.json"]))
    except Exception:  # not cached, offline, bad id: the caller says what to do
        return None
    return folder if (folder / "model_index.json").is_file() else None
