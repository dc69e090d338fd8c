"""The job form as plain data: field strings <-> Job. No Textual here, so it is tested directly.

`check_values` finds every problem in one pass and names it in the form's words (fields, not command-line
options): what is malformed (not a number), what breaks the rules a valid job follows (lowvram.job's
validate_job, the same the CLI applies), and what the model name already tells (an image-to-video model
without an image). Warnings (outside the model's trained range, a stretched image) never block a job.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from lowvram.caching.setting import CacheSetting
from lowvram.errors import UserError
from lowvram.job import Job, validate_job
from lowvram.loras.spec import format_lora_arg, parse_lora_arg
from lowvram.models.names import DEMO_NAMES, SHORT_NAMES, resolve_model

# Presets as (width, height); Wan2.1 is trained at these two sizes.
PRESETS: dict[str, tuple[int, int]] = {"480p": (832, 480), "720p": (1280, 720)}
CUSTOM = "custom"
KNOWN_MODELS = list(DEMO_NAMES) + list(SHORT_NAMES)


FIELDS = ("model", "prompt", "negative", "image", "loras", "preset", "width", "height", "frames", "steps", "guidance", "seed", "teacache_mode", "teacache_value", "out")
# The words a message uses for each field (the form's own labels, in lower case where they start a sentence).
FIELD_WORDS = {"width": "width", "height": "height", "frames": "frames", "steps": "steps", "guidance": "guidance",
               "seed": "seed", "fps": "fps", "out": "output", "image": "image", "model": "model", "loras": "LoRA"}
# validate_job and resolve_model name the command-line option; the form names the field instead.
_OPTION_FIELDS = {"--lora": "loras", "--width": "width", "--height": "height", "--frames": "frames", "--steps": "steps", "--guidance-2": "form",
                  "--guidance": "guidance", "--seed": "seed", "--out": "out", "--image": "image", "--fps": "form", "--model": "model",
                  "the prompt": "prompt"}
LORA_SEPARATOR = ";"  # between the LoRAs of the LoRAs field


class FormErrors(UserError):
    """Per-field problems: {field id: message}. The message of the exception lists them all."""

    def __init__(self, errors: dict[str, str]):
        self.errors = dict(errors)
        super().__init__("Invalid job:\n  - " + "\n  - ".join(f"{k}: {v}" for k, v in self.errors.items()))


@dataclass
class FormCheck:
    """The outcome of one pass over the form: the job when valid, every error and every warning by field."""

    job: Optional[Job] = None
    errors: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)


def default_job(model: Optional[str] = None) -> Job:
    """The form's first job: the same per-model defaults as `lowvram generate` (the demo's are tiny).
    Its seed is None: the form shows an empty seed, which draws a random one when the job is planned."""
    from lowvram.models.defaults import DEFAULT_MODEL, job_defaults

    model = model or DEFAULT_MODEL
    defaults = job_defaults(model)
    sizes = {k: v for k, v in defaults.items() if k in ("width", "height", "frames", "steps", "negative_prompt", "guidance", "guidance_2", "fps")}
    return Job(prompt="", model=model, seed=None, **sizes)  # type: ignore[arg-type]


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
        "loras": f"{LORA_SEPARATOR} ".join(format_lora_arg(lora) for lora in job.loras),
        "preset": preset_for(job.width, job.height),
        "width": str(job.width),
        "height": str(job.height),
        "frames": str(job.frames),
        "steps": str(job.steps),
        "guidance": f"{job.guidance:g}",
        "seed": "" if job.seed is None else str(job.seed),
        "teacache_mode": mode,
        "teacache_value": value,
        "out": job.out or "",
    }


def _number(values: dict[str, str], key: str, kind: type, errors: dict[str, str], what: str):
    text = (values.get(key) or "").strip()
    try:
        return kind(text)
    except ValueError:
        errors[key] = f"{what} must be {'a whole number' if kind is int else 'a number'}, got {text!r}" if text else f"{what} is empty; give {'a whole number' if kind is int else 'a number'}"
        return None


def check_values(values: dict[str, str], base: Optional[Job] = None, seed: Optional[int] = None) -> FormCheck:
    """Every problem of the form at once, in the form's words, and the job when there is none.

    Settings the form does not show (fps, the cache method and its other settings, a single file's base)
    come from `base`, the job the form was filled from (defaults, a profile, or the previous run). An empty seed takes `seed` (a
    random one drawn by the caller; 0 when not given)."""
    base = base or Job(prompt="")
    errors: dict[str, str] = {}
    model = (values.get("model") or "").strip()
    if not model:
        errors["model"] = "choose a model, e.g. tiny-random (the demo) or wan2.1-t2v-1.3b"
    numbers = {
        key: _number(values, key, kind, errors, key)
        for key, kind in (("width", int), ("height", int), ("frames", int), ("steps", int), ("guidance", float))
    }
    seed_text = (values.get("seed") or "").strip()
    job_seed = _number(values, "seed", int, errors, "seed") if seed_text else (seed if seed is not None else 0)
    cache = CacheSetting()
    mode = values.get("teacache_mode") or "off"
    if mode != "off":
        what = f"the {'MagCache' if base.cache.method == 'magcache' else 'TeaCache'} " + ("threshold" if mode == "threshold" else "speed-up")
        value = _number(values, "teacache_value", float, errors, what)
        if value is not None:
            try:
                # The method (TeaCache unless the base job, e.g. a profile, says MagCache) and its other settings from `base`.
                method = base.cache.method if base.cache.enabled and not base.cache.calibrate else "teacache"
                cache = replace(base.cache, method=method, calibrate=False, **{"threshold": None, "speedup": None, mode: value})
            except UserError as exc:
                errors["teacache_value"] = str(exc).rstrip(".")
    if model and "model" not in errors:
        try:
            resolve_model(model, base.base)
        except UserError as exc:
            errors["model"] = in_form_words(str(exc))
    loras, notes = _loras(values.get("loras") or "", base, model, errors)
    # Fields that did not parse take the base job's value, so the rules below still check every other field.
    fallback = {"width": base.width, "height": base.height, "frames": base.frames, "steps": base.steps, "guidance": base.guidance}
    job = Job(
        prompt=(values.get("prompt") or "").strip(),
        model=model or base.model,
        negative_prompt=(values.get("negative") or "").strip(),
        image=(values.get("image") or "").strip() or None,
        fps=base.fps,
        guidance_2=base.guidance_2,
        shift=base.shift,
        out=(values.get("out") or "").strip() or None,
        cache=cache,
        base=base.base,
        loras=loras,
        notes=notes,
        seed=job_seed if job_seed is not None else 0,
        **{k: (v if v is not None else fallback[k]) for k, v in numbers.items()},
    )
    try:
        validate_job(job)
    except UserError as exc:
        for key, message in _attribute(str(exc)).items():
            errors.setdefault(key, message)  # a field that did not parse keeps its own message
    if "model" not in errors:
        for key, message in model_problems(job).items():  # what this model cannot do (an image it needs, its sizes)
            errors.setdefault(key, message)
    check = FormCheck(errors=errors, warnings=job_warnings(job) if "model" not in errors else {})
    if not errors:
        check.job = job
    return check


def _loras(text: str, base: Job, model: str, errors: dict[str, str]) -> tuple[tuple, tuple]:
    """(LoraSpecs, notes): the form's LoRAs `FILE[:SCALE][@high|@low]; ...`. Unchanged since the form was
    filled (and the same model): the job's own, already checked, with the notes of what they set; new ones
    are checked and their presets applied when the job is planned (tui.services.plan_job)."""
    if text.strip() == values_from_job(base)["loras"].strip() and base.model == model:
        return base.loras, base.notes
    try:
        return tuple(parse_lora_arg(part) for part in text.split(LORA_SEPARATOR) if part.strip()), ()
    except UserError as exc:
        errors["loras"] = in_form_words(str(exc))
        return (), ()


def model_problems(job: Job) -> dict[str, str]:
    """The planner's checks of the job against its model's spec (planner.job_checks, as `plan` and `generate`
    run them), in the form's words. Only for models known without the network: the demo, the short names, a
    folder; a hub id is checked when planned."""
    from lowvram.models.names import SHORT_NAMES
    from planner.job_checks import job_problems

    if not (job.model in DEMO_NAMES or job.model.lower() in SHORT_NAMES or Path(job.model).expanduser().is_dir()):
        return {}
    spec = _spec(job.model, job.base)
    problems: dict[str, str] = {}
    for line in job_problems(job, spec) if spec is not None else ():
        key = "image" if "--image" in line else next((f for opt, f in _OPTION_FIELDS.items() if line.startswith(opt)), "form")
        text = in_form_words(line).replace("with --image PATH", "in the Image field").replace("drop --image", "clear the Image field")
        text = text.replace("takes no --image", "takes no image")
        problems[key] = f"{problems[key]}; {text}" if key in problems else text
    return problems


@functools.lru_cache(maxsize=32)
def _spec(model: str, base: Optional[str]):
    """The model's spec (read from configs, cached: the form checks on every change), None when unreadable."""
    from lowvram.models.specs import spec_for_model

    try:
        return spec_for_model(model, base)
    except UserError:
        return None


def job_warnings(job: Job) -> dict[str, str]:
    """The advice module's warnings, by the field they concern."""
    from lowvram.models.advice import aspect_warning, range_warnings

    warnings: dict[str, str] = {}
    for topic, line in range_warnings(job):
        key = {"size": "preset"}.get(topic, topic)
        warnings[key] = f"{warnings[key]}; {line}" if key in warnings else line
    aspect = aspect_warning(job)
    if aspect:
        warnings["image"] = aspect
    return warnings


def job_from_values(values: dict[str, str], base: Optional[Job] = None, seed: Optional[int] = None) -> Job:
    """The job of a valid form; raises FormErrors naming each bad field (and the fix)."""
    check = check_values(values, base, seed)
    if check.job is None:
        raise FormErrors(check.errors)
    return check.job


def in_form_words(line: str) -> str:
    """'--frames 6 must be ...' -> 'frames 6 must be ...'; '--out X: ...' -> 'output X: ...'."""
    match = re.match(r"--([a-z0-9-]+) ", line)
    if match:
        key = _OPTION_FIELDS.get(f"--{match.group(1)}", "")
        word = FIELD_WORDS.get(key, match.group(1))
        return word + line[match.end() - 1:]
    return line


def _attribute(message: str) -> dict[str, str]:
    errors: dict[str, str] = {}
    lines = [line.strip()[2:] for line in message.splitlines() if line.strip().startswith("- ")] or [message]
    for line in lines:
        key = next((f for opt, f in _OPTION_FIELDS.items() if line.startswith(opt)), "form")
        text = in_form_words(line)
        errors[key] = f"{errors[key]}; {text}" if key in errors else text
    return errors
