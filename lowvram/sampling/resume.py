"""Denoising checkpoints: in memory (OOM fallback) and on disk (`<out>.latents.safetensors`, resume later).

A checkpoint is the step to run next, the latents, and the scheduler's state: UniPC is multistep,
so its history (model_outputs, timestep_list, last_sample, lower_order_nums, _step_index, ...) is
part of the state; restarting it fresh at step k gives a different video. The state is every
instance attribute of the scheduler except its config, with tensors copied to the CPU (a few
latent-sized tensors: cheap next to a step). The same encoding is stored in the file: tensors in
the safetensors body, the structure as JSON in the safetensors metadata next to the job and plan.

A resume file is data only (safetensors + JSON, no pickle) and is validated in full before any
model loads: `load_resume_file` raises UserError naming the problem and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

from lowvram.errors import UserError
from lowvram.io.output import replacing
from lowvram.job import Job, validate_job
from planner.plan import Plan

FORMAT = "lowvram-resume"
VERSION = 1
SUFFIX = ".latents.safetensors"
COND_TENSORS = ("prompt_embeds", "negative_embeds", "image_embeds", "condition", "first_frame_mask")
SCALARS = (int, float, bool, str, type(None))


@dataclass
class DenoiseCheckpoint:
    """The state between two steps: `step` steps are done; `latents` and the scheduler state on the CPU."""

    step: int
    latents: Any
    scheduler: dict  # {"attrs": encoded structure} as built by capture_scheduler
    tensors: dict  # {key: CPU tensor} referenced by the structure


@dataclass
class ResumeState:
    """Everything a resume file holds: enough to run the remaining steps and decode without encoding."""

    job: Job
    plan: Plan
    stage: str  # "denoise" (steps left) or "decode" (all steps done)
    reason: str
    cond: dict  # name -> CPU tensor or None, see COND_TENSORS
    checkpoint: DenoiseCheckpoint
    path: Optional[Path] = None


# ---------------------------------------------------------------------------- scheduler state


def _encode(value: Any, key: str, tensors: dict) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
        return {"tensor": key, "on_device": value.device.type != "cpu"}
    if isinstance(value, (list, tuple)):
        return {"list": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, SCALARS):
        if isinstance(value, float) and not math.isfinite(value):
            return {"float": repr(value)}  # JSON has no inf/nan
        return {"value": value}
    raise TypeError(f"scheduler attribute {key} of type {type(value).__name__} cannot be checkpointed")


def capture_scheduler(scheduler: Any) -> tuple[dict, dict]:
    """(structure, tensors): every instance attribute but the config, tensors copied to the CPU."""
    tensors: dict = {}
    attrs = {name: _encode(value, f"sched.{name}", tensors) for name, value in vars(scheduler).items() if name != "_internal_dict"}
    return {"class": type(scheduler).__name__, "attrs": attrs}, tensors


def _decode(node: Any, tensors: dict, device: Any) -> Any:
    if not isinstance(node, dict) or len(node) not in (1, 2):
        raise ValueError(f"bad scheduler state node {node!r}")
    if "tensor" in node:
        t = tensors[node["tensor"]]
        return t.to(device, copy=True) if node.get("on_device") else t.clone()
    if "list" in node:
        return [_decode(v, tensors, device) for v in node["list"]]
    if "float" in node:
        return float(node["float"])
    if "value" in node:
        if not isinstance(node["value"], SCALARS):
            raise ValueError(f"bad scheduler value {node['value']!r}")
        return node["value"]
    raise ValueError(f"bad scheduler state node {node!r}")


def _check_structure(node: Any, tensors: dict, where: str) -> None:
    """Validate a structure without building it (used before any model loads)."""
    if not isinstance(node, dict):
        raise ValueError(f"{where}: expected an object")
    if "tensor" in node:
        if node["tensor"] not in tensors:
            raise ValueError(f"{where}: tensor {node['tensor']!r} is missing")
        if not isinstance(node.get("on_device", False), bool):
            raise ValueError(f"{where}: on_device must be true or false")
    elif "list" in node:
        if not isinstance(node["list"], list):
            raise ValueError(f"{where}: list expected")
        for i, v in enumerate(node["list"]):
            _check_structure(v, tensors, f"{where}[{i}]")
    elif "float" in node:
        float(str(node["float"]))
    elif "value" in node:
        if not isinstance(node["value"], SCALARS):
            raise ValueError(f"{where}: not a scalar")
    else:
        raise ValueError(f"{where}: unknown entry {sorted(node)}")


def restore_scheduler(scheduler: Any, state: dict, tensors: dict, device: Any) -> None:
    """Put a captured state back (after set_timesteps). Only plain instance attributes are written."""
    if state.get("class") != type(scheduler).__name__:
        raise UserError(
            f"the saved sampler state is for {state.get('class')}, but this model uses {type(scheduler).__name__}; "
            "resume with the same model the run started with."
        )
    for name, node in state["attrs"].items():
        if name.startswith("__") or (name not in vars(scheduler) and hasattr(type(scheduler), name)):
            raise UserError(f"the saved sampler state names {name!r}, which is not a scheduler attribute; the file is damaged.")
        setattr(scheduler, name, _decode(node, tensors, device))


def make_checkpoint(step: int, latents: Any, scheduler: Any) -> DenoiseCheckpoint:
    state, tensors = capture_scheduler(scheduler)
    return DenoiseCheckpoint(step=step, latents=latents.detach().to("cpu", copy=True), scheduler=state, tensors=tensors)


# ---------------------------------------------------------------------------- files


def resume_path_for(video_path: Path) -> Path:
    """<out>.latents.safetensors beside the video; -1, -2 ... when taken (never overwrite)."""
    base = video_path.with_suffix("")
    candidate, n = base.with_name(base.name + SUFFIX), 0
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}{SUFFIX}")
    return candidate


def save_resume_file(path: Path, job: Job, plan: Plan, cond: dict, ckpt: DenoiseCheckpoint, reason: str) -> Path:
    """Write atomically (temp name, then rename)."""
    from safetensors.torch import save_file

    tensors = {"latents": ckpt.latents.contiguous()}
    for name in COND_TENSORS:
        if cond.get(name) is not None:
            tensors[f"cond.{name}"] = cond[name].detach().to("cpu").contiguous()
    tensors.update(ckpt.tensors)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "reason": reason,
        "stage": "decode" if ckpt.step >= job.steps else "denoise",
        "step": ckpt.step,
        "job": job.to_dict(),
        "plan": plan.to_dict(),
        "scheduler": ckpt.scheduler,
    }
    with replacing(path, path.with_name(f".{path.name}.partial")) as tmp:
        save_file({k: v.clone() for k, v in tensors.items()}, str(tmp), metadata={FORMAT: json.dumps(header)})
    return path


def _bad(path: Path, problem: str) -> UserError:
    return UserError(
        f"--resume {path}: {problem}. Give a .latents.safetensors file that lowvram wrote when a run was cancelled "
        "or ran out of memory (start a new run with a prompt instead)."
    )


def _from_dict(cls: type, data: Any, where: str) -> Any:
    """Build a frozen dataclass from JSON, checking every field's type (nested dataclasses too)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} is not an object")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(map(str, set(data) - names))
    if unknown:
        raise ValueError(f"unknown {where} fields {unknown}")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _from_dict(hint, value, f"{where}.{name}")
            continue
        args = typing.get_args(hint)
        allowed = tuple(a for a in args if a is not type(None)) or (hint,)
        if value is None and type(None) in args:
            values[name] = None
            continue
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            raise ValueError(f"{where}.{name}={value!r} has the wrong type")
        values[name] = value
    return cls(**values)


def job_from_dict(data: Any) -> Job:
    """A Job from Job.to_dict(), each field's type checked (ValueError naming the bad one)."""
    if not isinstance(data, dict) or "prompt" not in data:
        raise ValueError("the job is missing or has no prompt")
    return _from_dict(Job, data, "job")


def _plan_from_dict(data: Any) -> Plan:
    if not isinstance(data, dict):
        raise ValueError("the plan is not an object")
    plan = Plan.from_dict(data)  # ComponentPlan checks each component's precision and placement
    if not isinstance(plan.device, str) or not re.fullmatch(r"cpu|cuda(:[0-9]{1,2})?", plan.device):
        raise ValueError(f"unknown device {plan.device!r}")
    if not plan.denoisers:
        raise ValueError("the plan has no transformer")
    return plan


def load_resume_file(path_text: str, out: Optional[str] = None) -> ResumeState:
    """Read and validate a resume file completely; every problem is a UserError (never a traceback).

    `out` replaces the saved job's output path (before validation: the old folder may be gone).
    """
    import torch
    from safetensors import safe_open

    path = Path(path_text).expanduser()
    if not path.is_file():
        raise _bad(path, "no such file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # the safetensors parser's own errors (SafetensorError, OSError, ...)
        raise _bad(path, f"not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    if FORMAT not in meta:
        raise _bad(path, "a safetensors file, but not one lowvram wrote (no resume header)")
    try:
        header = json.loads(meta[FORMAT])
        if not isinstance(header, dict):
            raise ValueError("the header is not an object")
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise ValueError(f"format {header.get('format')!r} version {header.get('version')!r}; this lowvram reads {FORMAT} {VERSION}")
        job = job_from_dict(header.get("job"))
        plan = _plan_from_dict(header.get("plan"))
        step = header.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= job.steps:
            raise ValueError(f"step {step!r} is not between 0 and the job's {job.steps} steps")
        sched = header.get("scheduler")
        if not isinstance(sched, dict) or not isinstance(sched.get("class"), str) or not isinstance(sched.get("attrs"), dict):
            raise ValueError("the sampler state is missing")
        for name, node in sched["attrs"].items():
            _check_structure(node, tensors, f"sampler state {name}")
        _check_tensors(job, tensors)
    except (ValueError, TypeError, KeyError, RecursionError, UserError) as exc:
        raise _bad(path, f"damaged or unsupported contents ({exc})") from None
    job = job.with_(out=out) if out else job
    try:
        validate_job(job)
    except UserError as exc:
        raise _bad(path, f"the saved job is not valid here ({exc})") from None
    cond = {name: tensors.get(f"cond.{name}") for name in COND_TENSORS}
    sched_tensors = {k: v for k, v in tensors.items() if k.startswith("sched.")}
    ckpt = DenoiseCheckpoint(step=step, latents=tensors["latents"].to(torch.float32), scheduler=sched, tensors=sched_tensors)
    stage = "decode" if step >= job.steps else "denoise"
    return ResumeState(job=job, plan=plan, stage=stage, reason=str(header.get("reason", "")), cond=cond, checkpoint=ckpt, path=path)


def _check_tensors(job: Job, tensors: dict) -> None:
    """Shapes a Wan model needs for this job: catches files that would crash mid-run."""
    latents = tensors.get("latents")
    if latents is None:
        raise ValueError("no latents tensor")
    # the VAE compresses 4x in time and 8x (Wan2.1, Wan2.2 A14B) or 16x (Wan2.2 TI2V-5B) in space
    frames = (job.frames - 1) // 4 + 1
    wants = [(frames, job.height // s, job.width // s) for s in (8, 16)]
    if latents.dim() != 5 or latents.shape[0] != 1 or tuple(latents.shape[2:]) not in wants or not latents.is_floating_point():
        want = wants[0]
        raise ValueError(f"latents of shape {tuple(latents.shape)} do not fit the job (1, C, {want[0]}, {want[1]}, {want[2]})")
    prompt = tensors.get("cond.prompt_embeds")
    if prompt is None or prompt.dim() != 3 or prompt.shape[0] != 1 or not prompt.is_floating_point():
        raise ValueError("prompt embeddings missing or not (1, tokens, dim)")
    negative = tensors.get("cond.negative_embeds")
    if (job.guidance > 1.0) != (negative is not None):
        raise ValueError("negative-prompt embeddings do not match the job's guidance setting")
    if negative is not None and (negative.dim() != 3 or negative.shape[0] != 1 or negative.shape[2] != prompt.shape[2]):
        raise ValueError("negative-prompt embeddings have the wrong shape")
    allowed = {"latents"} | {f"cond.{n}" for n in COND_TENSORS}
    extra = [k for k in tensors if k not in allowed and not k.startswith("sched.")]
    if extra:
        raise ValueError(f"unexpected tensors {extra[:3]}")
