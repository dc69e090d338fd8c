"""Every model lowvram knows, where its files are on this machine, what is missing, and whether it fits.

Where lowvram looks (nothing is downloaded or built to answer):
- the Hugging Face cache (HF_HOME / HF_HUB_CACHE): the diffusers pipelines `lowvram download` fetches;
- lowvram's own cache (LOWVRAM_CACHE_DIR): the demo models, once built;
- model folders the user names: LOWVRAM_MODEL_DIRS (folders separated by ':', ';' on Windows) and
  `lowvram models --dir DIR`. A ComfyUI `models/` tree works as is: single-file Wan transformers
  (.safetensors, .gguf) anywhere below it are recognised by their headers, and diffusers folders
  (with model_index.json) too.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional

from lowvram.errors import UserError

SCAN_DEPTH = 5  # folders below a model dir (ComfyUI: models/diffusion_models/wan/x.gguf is 2)
DIRS_ENV = "LOWVRAM_MODEL_DIRS"


@dataclass(frozen=True)
class Location:
    kind: str  # "hf-cache" | "lowvram-cache" | "folder" | "file"
    path: str
    what: str  # "diffusers pipeline", "transformer file, Q5_K_M GGUF" ...
    bytes: int
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelStatus:
    name: str
    hub_id: Optional[str]
    task: str
    transformer_params: int
    weights_bytes: int  # what lowvram loads, at bf16 (the VAE and image encoder at fp32)
    locations: tuple[Location, ...] = ()
    missing: tuple[str, ...] = ()  # what is needed before it runs; () = ready
    fits: Optional[bool] = None
    plan: str = ""  # the chosen plan, or why none fits

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FoundFile:
    path: str
    label: str
    bytes: int
    model: Optional[str]  # the known model of its shape
    shape: str


@dataclass(frozen=True)
class Catalog:
    models: tuple[ModelStatus, ...]
    files: tuple[FoundFile, ...] = ()
    dirs: tuple[str, ...] = ()
    other_files: int = 0  # weight files that are not Wan transformers (LoRAs, VAEs, text encoders...)
    hf_cache: str = ""
    lowvram_cache: str = ""
    machine: str = ""

    def to_dict(self) -> dict:
        return {
            "models": [m.to_dict() for m in self.models], "files": [asdict(f) for f in self.files],
            "dirs": list(self.dirs), "other_files": self.other_files, "hf_cache": self.hf_cache,
            "lowvram_cache": self.lowvram_cache, "machine": self.machine,
        }


def model_dirs(extra: Iterable[str] = ()) -> tuple[Path, ...]:
    """The folders the user named (LOWVRAM_MODEL_DIRS, then --dir), that exist."""
    named = [p for p in os.environ.get(DIRS_ENV, "").split(os.pathsep) if p.strip()] + list(extra)
    out = []
    for p in named:
        path = Path(os.path.expanduser(p.strip()))
        if not path.is_dir():
            raise UserError(f"model folder {p}: no such folder. Fix {DIRS_ENV} or --dir.")
        out.append(path.resolve())
    return tuple(dict.fromkeys(out))


def _walk(root: Path, depth: int = SCAN_DEPTH):
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for e in entries:
        if e.is_dir(follow_symlinks=True) and depth > 0 and not e.name.startswith("."):
            yield from _walk(Path(e.path), depth - 1)
        elif e.is_file():
            yield Path(e.path)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())  # follows the HF cache's links


def scan_dirs(dirs: tuple[Path, ...]) -> tuple[list[FoundFile], list[Path], int]:
    """(Wan transformer files, diffusers folders, count of other weight files) under the model folders."""
    from lowvram.models.single_file import WEIGHT_SUFFIXES, file_model, inspect_file

    files, folders, other = [], [], 0
    for root in dirs:
        for path in _walk(root):
            if path.name == "model_index.json":
                folders.append(path.parent)
                continue
            if path.suffix.lower() not in WEIGHT_SUFFIXES or path.parent.name in ("transformer", "transformer_2"):
                continue
            try:
                tf = inspect_file(path)
            except UserError:
                other += 1
                continue
            files.append(FoundFile(str(path), tf.label, path.stat().st_size, file_model(tf), tf.shape.describe()))
    return files, folders, other


def _hub_location(hub_id: str) -> Optional[Location]:
    from lowvram.models.hub import cached_snapshot, missing_parts

    folder = cached_snapshot(hub_id)
    if folder is None:
        return None
    return Location("hf-cache", str(folder), "diffusers pipeline", _folder_bytes(folder), tuple(missing_parts(folder)))


def _folder_model(folder: Path) -> Optional[str]:
    """The known model a diffusers folder holds, by its transformer config's shape."""
    from lowvram.models.single_file import config_shape, folder_transformer_configs, is_two_expert, known_transformer_configs

    try:
        configs = folder_transformer_configs(folder)
    except (UserError, OSError, ValueError):
        return None
    key = config_shape(configs[0])
    for name, config in known_transformer_configs().items():
        if config_shape(config) == key and is_two_expert(name) == (len(configs) == 2):
            return name
    return None


def _weights(spec) -> tuple[int, int]:
    from planner.memory import component_bytes

    return spec.transformer.params, sum(component_bytes(c) for c in spec.components)


def _fit(spec, name: str, probe, prefs) -> tuple[Optional[bool], str]:
    from lowvram.job import Job
    from lowvram.models.defaults import job_defaults
    from planner.choose import make_plan

    d = job_defaults(name)
    job = Job(prompt="(planning only)", model=name, width=d["width"], height=d["height"], frames=d["frames"], steps=d["steps"])
    try:
        result = make_plan(probe, spec, job, prefs, suggest_smaller=False)
    except UserError as exc:  # NoPlanFits says what is short
        return False, str(exc).splitlines()[0]
    plan = result.plan
    return True, f"{plan.summary()}; peak VRAM {plan.peak_vram_bytes / 1024**3:.1f} GiB, RAM {plan.peak_ram_bytes / 1024**3:.1f} GiB ({d['width']}x{d['height']}, {d['frames']} frames)"


def build_catalog(extra_dirs: Iterable[str] = (), probe=None, prefs=None) -> Catalog:
    from lowvram.models.demo import demo_path
    from lowvram.models.hub import cache_root
    from lowvram.models.names import DEMO_NAMES, SHORT_NAMES
    from lowvram.paths import cache_dir
    from planner.choose import Preferences
    from planner.probe import probe_hardware
    from planner.spec import known_spec, spec_from_folder

    dirs = model_dirs(extra_dirs)
    files, folders, other = scan_dirs(dirs)
    probe = probe or probe_hardware()
    prefs = prefs or Preferences()
    by_model: dict[str, list[Location]] = {}
    for folder in folders:
        name = _folder_model(folder)
        if name:
            from lowvram.models.hub import missing_parts

            by_model.setdefault(name, []).append(Location("folder", str(folder), "diffusers pipeline", _folder_bytes(folder), tuple(missing_parts(folder))))
    for f in files:
        if f.model:
            by_model.setdefault(f.model, []).append(Location("file", f.path, f"transformer file, {f.label}", f.bytes))

    models = []
    for name in DEMO_NAMES:
        folder = demo_path(name)
        here = (Location("lowvram-cache", str(folder), "demo pipeline (random weights)", _folder_bytes(folder)),) if (folder / "model_index.json").is_file() else ()
        plan = "runs anywhere, on the CPU too" + ("" if here else " (built on first use, in seconds; nothing to download)")
        here += tuple(by_model.get(name, ()))
        task = "ti2v" if "ti2v" in name else "i2v" if name.endswith("i2v") else "t2v"
        models.append(ModelStatus(name, None, task, 0, 0, here, (), True, plan))
    for name, hub_id in SHORT_NAMES.items():
        try:
            spec = known_spec(name)
        except KeyError:  # a name whose configs the planner does not know yet: read them if downloaded
            hub = _hub_location(hub_id)
            if hub is None:
                continue
            spec = spec_from_folder(Path(hub.path), name=name)
        params, weights = _weights(spec)
        locations = list(by_model.get(name, []))
        hub = _hub_location(hub_id)
        if hub is not None:
            locations.insert(0, hub)
        missing = _missing(name, locations)
        fits, plan = _fit(spec, name, probe, prefs)
        models.append(ModelStatus(name, hub_id, spec.task, params, weights, tuple(locations), missing, fits, plan))
    from planner.probe import describe_probe

    machine = "; ".join(describe_probe(probe)[:2])
    return Catalog(tuple(models), tuple(files), tuple(str(d) for d in dirs), other, str(cache_root()), str(cache_dir()), machine)


def _missing(name: str, locations: list[Location]) -> tuple[str, ...]:
    """What stands between the files found and a run: nothing, the transformer (a single file can stand in), or all."""
    pipelines = [loc for loc in locations if loc.kind in ("hf-cache", "folder")]
    if any(not loc.missing for loc in pipelines):
        return ()
    has_file = any(loc.kind == "file" for loc in locations)
    for loc in pipelines:
        rest = [m for m in loc.missing if not m.startswith("transformer")]
        if not rest and has_file:
            return ()  # --model FILE takes the rest from this pipeline
    if has_file:
        return (f"the text encoder, VAE and tokenizer for the transformer file: lowvram download {name} --without-transformer",)
    if pipelines:
        return tuple(f"{m}: lowvram download {name} (fetches only what is missing)" for m in pipelines[0].missing)
    return (f"everything: lowvram download {name}",)
