"""The edge where a job's LoRAs meet the model, before anything loads: find and check each file, fill in its
sha256, expert and footprint, and apply the sampling settings the LoRAs call for (lowvram.loras.presets).

`resolve_job_loras(job, given, cache_given)` is what the command line, the TUI and the runner call. What was
set and why is kept in `job.notes`, printed by `plan` and `generate` and written to the sidecar.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Optional

from lowvram.errors import UserError
from lowvram.loras.presets import Preset, preset_for
from lowvram.loras.spec import LoraSpec

PRESET_FIELDS = ("steps", "guidance", "shift")


@dataclass(frozen=True)
class Resolved:
    spec: LoraSpec
    preset: Optional[Preset]
    layout: str


def resolve_loras(loras: Iterable[LoraSpec], model: str, base: Optional[str] = None) -> list[Resolved]:
    """Check each LoRA against `model` from the files' headers (UserError, exit 2, naming the problem) and
    fill in its path, sha256, expert and footprint."""
    from lowvram.loras.files import lora_file, sha256_of
    from lowvram.loras.inspect import inspect_lora
    from lowvram.models.specs import spec_for_model, transformer_config

    loras = list(loras)
    if not loras:
        return []
    spec = spec_for_model(model, base)
    config = transformer_config(model, base)
    out = []
    for lora in loras:
        path = lora_file(lora.path)
        if lora.expert in ("high", "low") and not spec.two_experts:
            raise UserError(
                f"--lora {lora.path}@{lora.expert}: {model} has one transformer, not a high-noise and a low-noise expert; "
                "drop @high/@low (they are for Wan2.2 A14B models)."
            )
        info = inspect_lora(path, config)
        digest = lora.sha256 or sha256_of(path)
        if lora.sha256 and sha256_of(path) != lora.sha256:
            raise UserError(f"--lora {path}: its sha256 is {sha256_of(path)}, not {lora.sha256} as recorded; the file changed.")
        preset = preset_for(digest, info.metadata, path.name)
        resolved = lora.with_(path=str(path), sha256=digest, footprint=info.footprint)
        out.append(Resolved(resolved, preset, info.layout))
    return out


def resolve_job_loras(job, given: Iterable[str] = (), cache_given: bool = False):
    """The job with its LoRAs checked and resolved, and the LoRAs' presets applied to the settings not in
    `given` (the names of the Job fields the user set: options given, or a profile's saved with these LoRAs).
    A job without LoRAs comes back unchanged; a resolved one is not read again."""
    if not job.loras or all(lora.resolved for lora in job.loras):
        return job
    from lowvram.models.specs import spec_for_model

    resolved = resolve_loras(job.loras, job.model, job.base)
    two_experts = spec_for_model(job.model, job.base).two_experts
    return apply_presets(job, resolved, frozenset(given), cache_given, two_experts)


def apply_presets(job, resolved: list[Resolved], given: frozenset, cache_given: bool, two_experts: bool):
    """Fill steps / guidance (both experts') / shift from the LoRAs' presets where the user gave none; set a
    LoRA's expert from lowvram's table when none was given; turn step skipping off under a distillation preset."""
    notes = list(job.notes)
    changes: dict = {"loras": tuple(_with_expert(r, two_experts, notes) for r in resolved)}
    presets = [(r.spec.name, r.preset) for r in resolved if r.preset is not None]
    set_by: dict = {}  # (LoRA name, source) -> the fields its preset set
    for field, (value, name, preset) in _first_preset_values(presets, notes).items():
        if field == "guidance" and two_experts and "guidance_2" not in given:
            # a preset's guidance is both experts'; so is a --guidance given over it (not the preset's for one of them)
            changes["guidance_2"] = float(job.guidance if field in given else value)
        if field in given:
            if getattr(job, field) != value:
                both = " for both experts" if "guidance_2" in changes and field == "guidance" else ""
                notes.append(f"--{field} {getattr(job, field):g} kept (given){both}; LoRA {name} suggests {value:g} ({preset.source})")
            continue
        changes[field] = int(value) if field == "steps" else float(value)
        set_by.setdefault((name, preset), []).append(field)
    for (name, preset), fields in set_by.items():
        words = replace(preset, **{f: None for f in PRESET_FIELDS if f not in fields}).describe()
        notes.append(f"{words}: set for LoRA {name} ({preset.source}); give --{' / --'.join(fields)} to override")
    distilled = [name for name, preset in presets if preset.distilled]
    if distilled and job.cache.enabled:
        changes.update(_cache_under_distillation(job, distilled[0], changes.get("steps", job.steps), cache_given, notes))
    changes["notes"] = tuple(notes)
    return job.with_(**changes)


def _with_expert(r: Resolved, two_experts: bool, notes: list) -> LoraSpec:
    """The LoRA on the expert it was given, else the one lowvram's table knows it is for, else both."""
    spec = r.spec
    if not two_experts or spec.expert:
        return spec
    if r.preset is not None and r.preset.expert:
        label = "high-noise" if r.preset.expert == "high" else "low-noise"
        notes.append(f"LoRA {spec.name}: on the {label} expert only ({r.preset.source}); add @both to apply it to both")
        return spec.with_(expert=r.preset.expert)
    return spec.with_(expert="both")


def _first_preset_values(presets: list, notes: list) -> dict:
    """{field: (value, LoRA name, preset)}: the first LoRA's value of each field; a disagreement is noted."""
    chosen: dict = {}
    for name, preset in presets:
        for field in PRESET_FIELDS:
            value = getattr(preset, field)
            if value is None:
                continue
            if field not in chosen:
                chosen[field] = (value, name, preset)
            elif chosen[field][0] != value:
                notes.append(f"LoRA {name}'s preset says {field} {value:g} but {chosen[field][1]}'s says "
                             f"{chosen[field][0]:g}: the first LoRA's is used (give --{field} to choose)")
    return chosen


def _cache_under_distillation(job, name: str, steps: int, cache_given: bool, notes: list) -> dict:
    """Step skipping under a step-distillation LoRA: off, unless it was asked for on the command line."""
    if cache_given:
        notes.append(f"{job.cache.label} kept as given, although {name} is a step-distillation LoRA: at {steps} steps "
                     "its schedule was fitted for the base model's 40-50 steps and may skip steps the distilled model needs")
        return {}
    from lowvram.caching.setting import CacheSetting

    notes.append(f"{job.cache.label} turned off: {name} is a step-distillation LoRA ({steps} steps); every one of them "
                 "matters and the cache's data were fitted for the base model's 40-50 steps (LightX2V also runs its "
                 "distilled models without feature caching). Give --cache to force it")
    return {"cache": CacheSetting()}
