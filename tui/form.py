"""The job form as plain data: field strings <-> Job. No Textual here, so it is tested directly.

Parsing finds what is malformed per field (not a number, ...); the rules a valid job must follow
live in lowvram.job.validate_job, the same ones the CLI applies.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from lowvram.caching.setting import CacheSetting
from lowvram.errors import UserError
from lowvram.job import Job, validate_job
from lowvram.models.names import DEMO_NAMES, SHORT_NAMES, resolve_model

# Presets as (width, height); Wan2.1 is trained at these two sizes.
PRESETS: dict[str, tuple[int, int]] = {"480p": (832, 480), "720p": (1280, 720)}
CUSTOM = "custom"
KNOWN_MODELS = list(DEMO_NAMES) + list(SHORT_NAMES)


FIELDS = ("model", "prompt", "negative", "image", "preset", "width", "height", "frames", "steps", "guidance", "seed", "teacache_mode", "teacache_value", "out")


class FormErrors(UserError):
    """Per-field problems: {field id: message}. The message of the exception lists them all."""

    def __init__(self, errors: dict[str, str]):
        self.errors = dict(errors)
        super().__init__("Invalid job:\n  - " + "\n  - ".join(f"{k}: {v}" for k, v in self.errors.items()))


def default_job(model: Optional[str] = None) -> Job:
    """The form's first job: the same per-model defaults as `lowvram generate` (the demo's are tiny)."""
    from lowvram.models.defaults import DEFAULT_MODEL, job_defaults

    model = model or DEFAULT_MODEL
    sizes = {k: v for k, v in job_defaults(model).items() if k in ("width", "height", "frames", "steps")}
    return Job(prompt="", model=model, **sizes)


def preset_for(width: int, height: int) -> str:
    for name, size in PRESETS.items():
        if size == (width, height):
            return name
    return CUSTOM


def values_from_job(job: Job) -> dict[str, str]:
    """Field strings showing a job (to refill the form: same settings again, or a loaded profile)."""
    tc = job.cache
    if tc.enabled and tc.speedup is not None:
        mode, value = "speedup", f"{tc.speedup:g}"
    elif tc.enabled and tc.threshold is not None:
        mode, value = "threshold", f"{tc.threshold:g}"
    else:
        mode, value = "off", ""
    return {
        "model": job.model,
        "prompt": job.prompt,
        "negative": job.negative_prompt,
        "image": job.image or "",
        "preset": preset_for(job.width, job.height),
        "width": str(job.width),
        "height": str(job.height),
        "frames": str(job.frames),
        "steps": str(job.steps),
        "guidance": f"{job.guidance:g}",
        "seed": str(job.seed),
        "teacache_mode": mode,
        "teacache_value": value,
        "out": job.out or "",
    }


def _number(values: dict[str, str], key: str, kind: type, errors: dict[str, str], what: str):
    text = (values.get(key) or "").strip()
    try:
        return kind(text)
    except ValueError:
        errors[key] = f"{what} must be {'a whole number' if kind is int else 'a number'}, got {text!r}"
        return None


def job_from_values(values: dict[str, str], base: Optional[Job] = None) -> Job:
    """Parse and validate the form. Raises FormErrors naming each bad field (and the fix).

    Settings the form does not show (fps, the cache method and its other settings) come from `base`,
    the job the form was filled from (defaults, a profile, or the previous run)."""
    base = base or Job(prompt="")
    errors: dict[str, str] = {}
    model = (values.get("model") or "").strip()
    if not model:
        errors["model"] = "choose a model, e.g. tiny-random (the demo) or wan2.1-t2v-1.3b"
    width = _number(values, "width", int, errors, "width")
    height = _number(values, "height", int, errors, "height")
    frames = _number(values, "frames", int, errors, "frames")
    steps = _number(values, "steps", int, errors, "steps")
    guidance = _number(values, "guidance", float, errors, "guidance")
    seed = _number(values, "seed", int, errors, "seed")
    cache = CacheSetting()
    mode = values.get("teacache_mode") or "off"
    if mode != "off":
        value = _number(values, "teacache_value", float, errors, "the TeaCache " + ("threshold" if mode == "threshold" else "speed-up"))
        if value is not None:
            try:
                # The method (TeaCache unless the base job, e.g. a profile, says MagCache) and its other settings from `base`.
                method = base.cache.method if base.cache.enabled and not base.cache.calibrate else "teacache"
                cache = replace(base.cache, method=method, calibrate=False, **{"threshold": None, "speedup": None, mode: value})
            except UserError as exc:
                errors["teacache_value"] = str(exc)
    if model and "model" not in errors:
        try:
            resolve_model(model)
        except UserError as exc:
            errors["model"] = str(exc)
    if errors:
        raise FormErrors(errors)
    image = (values.get("image") or "").strip() or None
    out = (values.get("out") or "").strip() or None
    job = Job(
        prompt=(values.get("prompt") or "").strip(),
        model=model,
        negative_prompt=(values.get("negative") or "").strip(),
        image=image,
        width=width,
        height=height,
        frames=frames,
        steps=steps,
        guidance=guidance,
        seed=seed,
        fps=base.fps,
        out=out,
        cache=cache,
    )
    try:
        validate_job(job)
    except UserError as exc:
        raise FormErrors(_attribute(str(exc))) from None
    return job


# validate_job names the CLI option in each line; map it back to the form field.
_OPTION_FIELDS = {"--width": "width", "--height": "height", "--frames": "frames", "--steps": "steps", "--guidance": "guidance", "--seed": "seed", "--out": "out", "--image": "image", "--fps": "form", "the prompt": "prompt"}


def _attribute(message: str) -> dict[str, str]:
    errors: dict[str, str] = {}
    lines = [line.strip()[2:] for line in message.splitlines() if line.strip().startswith("- ")] or [message]
    for line in lines:
        field = next((f for opt, f in _OPTION_FIELDS.items() if line.startswith(opt)), "form")
        errors[field] = f"{errors[field]}; {line}" if field in errors else line
    return errors
