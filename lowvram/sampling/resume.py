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
import os
import re
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

from lowvram.errors import UserError
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

KEPT_FOLDER = "kept-latents"  # under the user cache: where latents go when the output folder cannot take them


def resume_path_for(video_path: Path) -> Path:
    """<out>.latents.safetensors beside the video; -1, -2 ... when taken (never overwrite)."""
    base = video_path.with_suffix("")
    candidate, n = base.with_name(base.name + SUFFIX), 0
    while os.path.lexists(candidate):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}{SUFFIX}")
    return candidate


def save_resume_file(path: Path, job: Job, plan: Plan, cond: dict, ckpt: DenoiseCheckpoint, reason: str) -> Path:
    """Write under a scratch name, then publish at `path` or, when something took that name meanwhile, at the
    next free one (never replacing a file). Shielded: a second Ctrl-C waits for it. Returns the final path."""
    from safetensors.torch import save_file

    from lowvram.io import critical, scratch
    from lowvram.io.output import publish_file

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
    with critical.shielded():
        scratch.sweep(path.parent)
        with scratch.scratch_file(path.parent, "latents") as tmp:
            save_file({k: v.clone() for k, v in tensors.items()}, str(tmp), metadata={FORMAT: json.dumps(header)})
            while True:
                try:
                    publish_file(tmp, path)
                    return path
                except FileExistsError:
                    path = resume_path_for(path.with_name(path.name[: -len(SUFFIX)] + ".mp4"))


def keep_latents(video_path: Path, job: Job, plan: Plan, cond: dict, ckpt: DenoiseCheckpoint, reason: str) -> tuple[Optional[Path], list[str]]:
    """Keep the latents beside the video, or in the user cache when the output folder cannot take them (full,
    read-only, gone). Returns (the file or None, the problems met on the way)."""
    from safetensors import SafetensorError

    from lowvram.paths import cache_dir

    problems = []
    for folder in (video_path.parent, cache_dir() / KEPT_FOLDER):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return save_resume_file(resume_path_for(folder / video_path.name), job, plan, cond, ckpt, reason), problems
        except (OSError, SafetensorError) as exc:  # safetensors reports a full disk as SafetensorError
            problems.append(f"could not keep the latents in {folder}: {exc}")
    return None, problems


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
        values[name] = _typed(hints[name], value, f"{where}.{name}")
    return cls(**values)


def _typed(hint: Any, value: Any, where: str) -> Any:
    """`value` checked against a field's type hint: scalars, Optional, nested dataclasses, tuple[X, ...]."""
    if dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, where)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}={value!r} is not a list")
        return tuple(_typed(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    allowed = tuple(a for a in args if a is not type(None)) or (hint,)
    if value is None and type(None) in args:
        return None
    if len(allowed) == 1 and dataclasses.is_dataclass(allowed[0]):  # Optional[SomeDataclass]
        return _from_dict(allowed[0], value, where)
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
        raise ValueError(f"{where}={value!r} has the wrong type")
    return value


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

    In order, so that nothing large is read or allocated before it is known to fit: the header (job, plan, step,
    sampler state), the job's bounds, the tensors' shapes and sizes against the job and the model's configs (read
    from disk, a few KiB), then the tensors themselves (finite values), then the sampler state against a sampler
    built from the model's scheduler config and run to the same step. `out` replaces the saved job's output path
    (before validation: the old folder may be gone).
    """
    import torch
    from safetensors import safe_open

    path = Path(path_text).expanduser()
    if not path.is_file():
        raise _bad(path, "no such file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            layout = {k: (tuple(fh.get_slice(k).get_shape()), str(fh.get_slice(k).get_dtype())) for k in fh.keys()}
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
            _check_structure(node, layout, f"sampler state {name}")
    except (ValueError, TypeError, KeyError, RecursionError, UserError) as exc:
        raise _bad(path, f"damaged or unsupported contents ({exc})") from None
    job = job.with_(out=out) if out else job
    folder = Path(job.out).expanduser().parent if job.out else None
    if not out and folder is not None and not folder.is_dir():  # a sound file: only the place it wrote to is gone
        raise UserError(f"--resume {path}: the run wrote to {folder}, which is gone; add --out NEW.mp4 to write the video elsewhere "
                        "(or create the folder).")
    try:
        validate_job(job.with_(image=None))  # bounds first; the image was encoded already: it is not needed again
    except UserError as exc:
        raise _bad(path, f"the saved job is not valid here ({exc})") from None
    from lowvram.models.names import resolve_model
    from lowvram.models.specs import known_model_configs
    from lowvram.models.task import model_configs

    _check_loras_unchanged(path, job)
    ref = resolve_model(job.model, job.base)
    if ref.kind == "demo":  # built on first use (seconds): its configs must be there to check the tensors against
        from lowvram.models.demo import ensure_demo

        ensure_demo(ref.name)
    # a known model not downloaded yet: its shipped configs (the tensors are checked before a download, not after)
    configs = model_configs(ref) or known_model_configs(job.model, job.base) or {}
    try:
        _check_layout(job, layout, configs)
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        _check_values(tensors)
        if "scheduler" in configs:
            _check_sampler(sched, tensors, job, step, configs, _flow_shift(job, ref, configs))
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise _bad(path, f"damaged or unsupported contents ({exc})") from None
    except Exception as exc:  # safetensors errors while reading the body (a file truncated after its header)
        raise _bad(path, f"not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    cond = {name: tensors.get(f"cond.{name}") for name in COND_TENSORS}
    sched_tensors = {k: v for k, v in tensors.items() if k.startswith("sched.")}
    ckpt = DenoiseCheckpoint(step=step, latents=tensors["latents"].to(torch.float32), scheduler=sched, tensors=sched_tensors)
    stage = "decode" if step >= job.steps else "denoise"
    return ResumeState(job=job, plan=plan, stage=stage, reason=str(header.get("reason", "")), cond=cond, checkpoint=ckpt, path=path)


def _check_loras_unchanged(path: Path, job: Job) -> None:
    """The steps done were made with the LoRAs as they were: a file changed since (another sha256) would make the
    rest of the video with other weights, silently."""
    from lowvram.loras.files import sha256_of

    for lora in job.loras:
        want = getattr(lora, "sha256", None)
        if not want:
            continue
        if sha256_of(Path(lora.path)) != want:
            raise UserError(f"--resume {path}: the LoRA {lora.path} changed since the run stopped (its sha256 is not the one "
                            "the first steps were made with); put that file back, or start a new run.")


FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
MAX_TOKENS = 4096  # text and image embedding lengths: Wan pads prompts to 512, CLIP gives 257
RESUME_SLACK_BYTES = 64 << 20


def _latent_geometry(job: Job, configs: dict) -> tuple[Optional[int], tuple[int, int, int]]:
    """(latent channels or None when unknown, (frames, height, width)) of the job's latents for this model."""
    vae, transformer = configs.get("vae", {}), configs.get("transformer") or configs.get("transformer_2", {})
    spatial = vae.get("scale_factor_spatial") or 8
    temporal = vae.get("scale_factor_temporal") or 4
    channels = vae.get("z_dim") or transformer.get("out_channels")
    return channels, ((job.frames - 1) // temporal + 1, job.height // spatial, job.width // spatial)


def _check_layout(job: Job, layout: dict, configs: dict) -> None:
    """Shapes and sizes of every tensor, before any is read: against the job and, when known, the model."""
    from lowvram.io.output import estimate_output_bytes
    from lowvram.models.task import task_from_configs

    allowed = {"latents"} | {f"cond.{n}" for n in COND_TENSORS}
    extra = [k for k in layout if k not in allowed and not k.startswith("sched.")]
    if extra:
        raise ValueError(f"unexpected tensors {extra[:3]}")
    sizes = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2}
    total = sum(math.prod(shape) * sizes.get(dtype, 4 if dtype.endswith("32") else 8) for shape, dtype in layout.values())
    limit = 4 * estimate_output_bytes(job.width, job.height, job.frames, job.steps)[1] + RESUME_SLACK_BYTES
    if total > limit:
        raise ValueError(f"its tensors hold {total} bytes, more than a run of this job keeps ({limit})")
    channels, (frames, height, width) = _latent_geometry(job, configs)
    transformer = configs.get("transformer") or configs.get("transformer_2", {})
    if "latents" not in layout:
        raise ValueError("no latents tensor")
    shape, dtype = layout["latents"]
    want = (1, channels if channels else "C", frames, height, width)
    if len(shape) != 5 or shape[0] != 1 or shape[2:] != want[2:] or (channels and shape[1] != channels) or dtype not in FLOAT_DTYPES:
        raise ValueError(f"latents of shape {shape} ({dtype}) do not fit the job and model {want}")
    text_dim = transformer.get("text_dim")
    prompt = layout.get("cond.prompt_embeds")
    if prompt is None or len(prompt[0]) != 3 or prompt[0][0] != 1 or not 1 <= prompt[0][1] <= MAX_TOKENS or prompt[1] not in FLOAT_DTYPES:
        raise ValueError("prompt embeddings missing or not (1, tokens, width)")
    if text_dim and prompt[0][2] != text_dim:
        raise ValueError(f"prompt embeddings are {prompt[0][2]} wide; this model's text width is {text_dim}")
    negative = layout.get("cond.negative_embeds")
    if (job.guidance > 1.0) != (negative is not None):
        raise ValueError("negative-prompt embeddings do not match the job's guidance setting")
    if negative is not None and (len(negative[0]) != 3 or negative[0][0] != 1 or negative[0][2] != prompt[0][2]
                                 or not 1 <= negative[0][1] <= MAX_TOKENS or negative[1] not in FLOAT_DTYPES):
        raise ValueError("negative-prompt embeddings have the wrong shape")
    image = layout.get("cond.image_embeds")
    if transformer and (image is not None) != bool(transformer.get("image_dim")):
        raise ValueError("image embeddings " + ("missing: this model needs them" if image is None else "given, but this model takes none"))
    if image is not None and (len(image[0]) != 3 or image[0][0] != 1 or not 1 <= image[0][1] <= MAX_TOKENS or image[1] not in FLOAT_DTYPES
                              or (transformer.get("image_dim") and image[0][2] != transformer["image_dim"])):
        raise ValueError(f"image embeddings of shape {image[0]} do not fit this model")
    condition = layout.get("cond.condition")
    extra_channels = (transformer.get("in_channels") or 0) - (transformer.get("out_channels") or 16)
    if transformer and extra_channels > 0 and condition is None:
        raise ValueError(f"the first-frame condition is missing: this model takes {extra_channels} condition channels")
    if transformer and condition is not None and task_from_configs(configs["index"], transformer) == "t2v":
        raise ValueError("a first-frame condition is given, but this text-to-video model takes none")
    if condition is not None:  # Wan I2V: all latent frames; TI2V: the first frame's latents, blended in by the mask
        cshape, cdtype = condition
        if len(cshape) != 5 or cshape[0] != 1 or cshape[3:] != want[3:] or cshape[2] not in (frames, 1) or cdtype not in FLOAT_DTYPES:
            raise ValueError(f"the first-frame condition of shape {cshape} does not fit the job")
        if transformer and extra_channels > 0 and cshape[1] != extra_channels:
            raise ValueError(f"the first-frame condition has {cshape[1]} channels; this model takes {extra_channels}")
    mask = layout.get("cond.first_frame_mask")
    if mask is not None:
        mshape, mdtype = mask
        if condition is None or len(mshape) != 5 or mshape[0] != 1 or mshape[2:] != want[2:] or mdtype not in FLOAT_DTYPES:
            raise ValueError(f"the first-frame mask of shape {mshape} does not fit the job")
        if transformer and task_from_configs(configs["index"], transformer) != "ti2v":
            raise ValueError("a first-frame mask is given, but only a TI2V model takes one")


def _check_values(tensors: dict) -> None:
    import torch

    for name in ["latents"] + [f"cond.{n}" for n in COND_TENSORS]:
        t = tensors.get(name)
        if t is not None and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} holds NaN or infinite values")


def _flow_shift(job: Job, ref: Any, configs: dict) -> Optional[float]:
    """The flow shift the runner samples this job with (lowvram.sampling.runner.job_shift), before loading."""
    if job.shift is not None:
        return job.shift
    from planner.families import default_shift
    from planner.spec import spec_from_folder

    try:
        spec = spec_from_folder(Path(configs["folder"]), name=ref.name, is_demo=ref.is_demo)
    except UserError:
        return configs["scheduler"].get("flow_shift")
    return default_shift(spec, job.width, job.height)[0]


def _check_sampler(state: dict, tensors: dict, job: Job, step: int, configs: dict, shift: Optional[float] = None) -> None:
    """The saved sampler state against this model's own sampler, run to the same step on a tiny dummy latent.

    Every value that does not depend on the latents (step index, order counters, timesteps, sigmas, ...) must
    equal the reference's; every latent-sized tensor must have the latents' shape. What passes restores to a
    sampler indistinguishable from one that ran those steps, so it cannot fail after the model has loaded.
    """
    import diffusers
    import torch

    class_name = configs["scheduler"].get("_class_name") or (configs["index"].get("scheduler") or [None, None])[1]
    cls = getattr(diffusers, str(class_name), None)
    if cls is None or not hasattr(cls, "from_config"):
        return  # a sampler lowvram cannot build here: the structural checks above are what can be done
    if state["class"] != class_name:
        raise ValueError(f"the sampler state is for {state['class']}; this model uses {class_name}")
    reference = cls.from_config(configs["scheduler"])
    if shift is not None and getattr(reference.config, "flow_shift", None) != shift:  # as the runner sets it
        reference = cls.from_config(configs["scheduler"], flow_shift=shift)
    reference.set_timesteps(job.steps, device="cpu")
    reference.set_begin_index(0)
    dummy_shape = (1, int(tensors["latents"].shape[1]), 1, 3, 5)
    sample = torch.zeros(dummy_shape)
    with torch.no_grad():
        for t in reference.timesteps[:step]:
            sample = reference.step(torch.zeros(dummy_shape), t, sample, return_dict=False)[0]
    expected, expected_tensors = capture_scheduler(reference)
    if set(state["attrs"]) != set(expected["attrs"]):
        differ = sorted(set(state["attrs"]) ^ set(expected["attrs"]))
        raise ValueError(f"the sampler state has other entries than this model's sampler ({differ[:4]})")
    latents_shape = tuple(tensors["latents"].shape)
    for name, node in expected["attrs"].items():
        _same_state(state["attrs"][name], node, tensors, expected_tensors, dummy_shape, latents_shape, f"sampler {name}")


def _same_state(got: Any, want: Any, tensors: dict, want_tensors: dict, dummy: tuple, latents: tuple, where: str) -> None:
    import torch

    kind = next(iter(want))
    if kind not in got:
        raise ValueError(f"{where} is not a {kind} as this model's sampler has after this many steps")
    if kind == "tensor":
        a, b = tensors[got["tensor"]], want_tensors[want["tensor"]]
        if tuple(b.shape) == dummy:  # latent-sized data: its values depend on the run, its shape on the job
            if tuple(a.shape) != latents or not a.is_floating_point() or not bool(torch.isfinite(a).all()):
                raise ValueError(f"{where}: shape {tuple(a.shape)} where the latents' {latents} was expected")
        elif a.shape != b.shape or a.dtype != b.dtype or not torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-6):
            raise ValueError(f"{where} differs from this model's sampler at this step (made with other settings?)")
    elif kind == "list":
        if len(got["list"]) != len(want["list"]):
            raise ValueError(f"{where} has {len(got['list'])} entries; this model's sampler has {len(want['list'])}")
        for i, (g, w) in enumerate(zip(got["list"], want["list"])):
            _same_state(g, w, tensors, want_tensors, dummy, latents, f"{where}[{i}]")
    else:
        a, b = (float(got["float"]), float(want["float"])) if kind == "float" else (got["value"], want["value"])
        close = isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-9)
        same = type(a) is type(b) and (a == b or close or (a != a and b != b))
        if not same:
            raise ValueError(f"{where} is {a!r}; this model's sampler has {b!r} at this step")
