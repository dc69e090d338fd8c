"""What inputs a model accepts, and everything about a job that can be checked before a model loads.

A model's task says which inputs it takes: "t2v" (text only), "i2v" (an image is required: the first frame)
or "ti2v" (an image is optional: Wan2.2 TI2V-5B makes text-to-video without one, image-to-video with one).
It is read from the checkpoint's configs when they are on disk (model_index.json and transformer/config.json,
a few KiB), else from the short name or official hub id; an unknown hub id not downloaded yet is checked after
loading instead.

`check_inputs_before_load(job)` is the one gate that `generate`, `plan` and the TUI pass before anything loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from lowvram.errors import UserError
from lowvram.job import Job, task_problem, validate_job
from lowvram.models.names import DEMO_NAMES, SHORT_NAMES, ModelRef, resolve_model

CONFIG_MAX_BYTES = 1 << 20  # a component config is a few KiB
COMPONENTS = ("transformer", "transformer_2", "text_encoder", "vae", "image_encoder")


def task_from_configs(model_index: dict, transformer_config: dict) -> str:
    """The task a pipeline folder's configs describe (the planner's rule: planner.spec.detect_task)."""
    from planner.spec import detect_task

    return detect_task(model_index, transformer_config)


def task_from_name(name: str) -> Optional[str]:
    """The task of a known checkpoint (short name or its hub id, from the planner's table of known specs) or of
    a demo model; None for names we do not know."""
    from planner.spec import known_spec

    lowered = name.lower()
    short = {hub.lower(): s for s, hub in SHORT_NAMES.items()}.get(lowered, lowered)
    if short in SHORT_NAMES:
        try:
            return known_spec(short).task
        except KeyError:
            pass
    if name in DEMO_NAMES:  # the demo folder is built on first use: its name says what it is
        return next((task for task in ("ti2v", "i2v") if task in lowered), "t2v")
    return None


def local_folder(ref: ModelRef) -> Optional[Path]:
    """The checkpoint folder when it is on disk already (never downloads, never builds the demo)."""
    if ref.kind == "hub":
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(ref.location, local_files_only=True, allow_patterns=["*.json"]))
        except Exception:  # not in the cache, offline, a malformed id: nothing local
            return None
    else:
        folder = Path(ref.location)
    return folder if (folder / "model_index.json").is_file() else None


def read_config(path: Path) -> dict:
    """A small JSON config file as a dict; UserError for anything else (too large, nested too deep, not JSON)."""
    try:
        size = path.stat().st_size
        if size > CONFIG_MAX_BYTES:
            raise UserError(f"{path}: {size} bytes is too large for a model config (at most {CONFIG_MAX_BYTES}); the checkpoint is damaged.")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: JSON and Unicode errors
        raise UserError(f"{path}: cannot read it as JSON ({type(exc).__name__}: {str(exc)[:200]}). Download or save the checkpoint again.") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a JSON {type(data).__name__}, not an object of settings; the checkpoint is damaged.")
    return data


def folder_configs(folder: Path) -> dict:
    """model_index.json ("index"), the config.json of each listed component that has one, the scheduler's."""
    configs = {"index": read_config(folder / "model_index.json")}
    for name in COMPONENTS:
        entry = configs["index"].get(name)
        path = folder / name / "config.json"
        if isinstance(entry, list) and entry and entry[0] and path.is_file():
            configs[name] = read_config(path)
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        configs["scheduler"] = read_config(scheduler)
    return configs


def model_configs(ref: ModelRef) -> Optional[dict]:
    """The checkpoint's configs when they are on disk (see folder_configs; "folder": where), checked against the
    planner's sanity limits."""
    from planner.config_limits import check_configs

    folder = local_folder(ref)
    if folder is None:
        return None
    configs = folder_configs(folder)
    check_configs(folder, {k: v for k, v in configs.items() if k in COMPONENTS or k == "scheduler"})
    configs["folder"] = str(folder)
    return configs


def model_task(ref: ModelRef, configs: Optional[dict] = None) -> Optional[str]:
    if configs is not None:
        return task_from_configs(configs["index"], configs.get("transformer", {}))
    return task_from_name(ref.name)


def check_inputs_before_load(job: Job, writes: bool = True, resumed: bool = False, inputs: bool = True) -> ModelRef:
    """Everything about `job` that can be known without loading the model. Raises UserError (exit 2) naming the fix.

    Bounds and the image (decoded in full, within the pixel limit), the model (found, its configs sane), the task
    against the image, and with `writes` the output folder (writable, room for the video and the latents).
    `resumed`: the job continues from a resume file, whose conditioning is saved: its image is not needed again.
    `inputs=False` (planning only: `lowvram plan`): a missing first frame is no problem yet.
    """
    validate_job(job.with_(image=None) if resumed else job)
    ref = resolve_model(job.model, job.base)
    configs = model_configs(ref)
    task = model_task(ref, configs)
    problem = task_problem(job, task, ref.name, inputs) if task is not None and not resumed else None
    if problem:
        raise UserError(problem + ".")
    if writes:
        from lowvram.io.output import check_output_folder

        check_output_folder(job.out, job.width, job.height, job.frames, job.steps)
    return ref
