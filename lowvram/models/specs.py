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


def _quantized_cached(name: str, base: Optional[str], spec: ModelSpec) -> tuple[tuple[str, str], ...]:
    """(component, level) entries of the quantized cache for this model's local folder (none before a download)."""
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
        for level in ("fp8", "int8", "int4"):
            for dtype in ("bfloat16", "float32"):
                if (quant_cache.entry_path(folder, c.name, level, dtype) / quant_cache.INFO_FILE).is_file():
                    out.append((c.name, level))
    return tuple(dict.fromkeys(out))


def _spec_for_model(name: str, base: Optional[str] = None) -> ModelSpec:
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
        return replace(known_spec(lowered), name=name)
    by_hub_id = {hub.lower(): short for short, hub in SHORT_NAMES.items()}
    if base is None and lowered in by_hub_id:
        return replace(known_spec(by_hub_id[lowered]), name=name)
    ref = resolve_model(name, base)
    if ref.files:  # single-file transformer(s): the base's spec, with the files' stored sizes
        return _with_stored(_spec_for_model(ref.base), ref)
    if ref.kind == "local":
        return spec_from_folder(Path(ref.location), name=name)
    cached = _hub_cache_folder(ref.location)
    if cached is not None:
        return spec_from_folder(cached, name=name)
    from lowvram.models.hub import fetch_configs

    return spec_from_folder(fetch_configs(ref.location), name=name)


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
