"""A LoRA as a job asks for it: which file, how strong, on which expert. Plain frozen data, no torch.

`--lora FILE[:SCALE][@high|@low|@both]`: SCALE multiplies the LoRA's own alpha/rank scaling (1.0 = as
trained); a two-expert Wan2.2 model takes it on `transformer` (the high-noise expert, `@high`), on
`transformer_2` (the low-noise expert, `@low`) or on both (`@both`, the default). The file's sha256 and
what the LoRA costs (`LoraFootprint`, read from its header against the model's config) are filled in
by `lowvram.loras.resolve` before anything loads; the planner reads the footprint.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from lowvram.errors import UserError

EXPERTS = ("both", "high", "low")
# expert -> the denoiser components it applies to
EXPERT_COMPONENTS: dict[str, tuple[str, ...]] = {
    "both": ("transformer", "transformer_2"),
    "high": ("transformer",),
    "low": ("transformer_2",),
}
MAX_SCALE = 100.0  # |scale|: a typo guard (people use -2 ... 2); 0 turns a LoRA off
_EXPERT_SUFFIX = re.compile(r"@(high|low|both)$", re.IGNORECASE)


@dataclass(frozen=True)
class LoraFootprint:
    """What a LoRA adds to one denoiser, from its tensors' shapes against the model's layers.

    params: adapter parameters (its A and B matrices and biases); target_params: the weights of the base
    Linear layers it adapts (what fusing rewrites); rank: the largest rank; flops_per_token: FLOPs the
    unfused adapters add per video token per forward (2 x r x (in + out) over the layers that see video
    tokens); out_per_token: the outputs of those layers per token (the adapter's output is written, scaled
    and added: elementwise traffic); max_out: the widest of them (its extra output copies are the
    activation peak the adapters add).
    """

    params: int = 0
    target_params: int = 0
    rank: int = 0
    layers: int = 0
    flops_per_token: int = 0
    out_per_token: int = 0
    max_out: int = 0


@dataclass(frozen=True)
class LoraSpec:
    path: str
    scale: float = 1.0
    expert: str = ""  # "" = not given: both experts, unless lowvram's table knows the file is for one
    sha256: str = ""  # filled by lowvram.loras.resolve
    footprint: Optional[LoraFootprint] = None  # filled by lowvram.loras.resolve

    def __post_init__(self) -> None:
        if isinstance(self.footprint, dict):  # from a sidecar or a JSON plan
            object.__setattr__(self, "footprint", LoraFootprint(**self.footprint))

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def resolved(self) -> bool:
        return bool(self.sha256) and self.footprint is not None

    def components(self, two_experts: bool) -> tuple[str, ...]:
        """The denoisers this LoRA applies to on a model with one or two experts."""
        if not two_experts:
            return ("transformer",)
        return EXPERT_COMPONENTS[self.expert or "both"]

    def describe(self) -> str:
        """'lightx2v.safetensors x1 @low (sha256 1c918df9eaa1)'."""
        text = f"{self.name} x{self.scale:g}"
        if self.expert and self.expert != "both":
            text += f" @{self.expert}"
        if self.sha256:
            text += f" (sha256 {self.sha256[:12]})"
        return text

    def with_(self, **changes) -> "LoraSpec":
        return replace(self, **changes)


def lora_set_key(loras) -> str:
    """What a set of LoRAs fused into a denoiser is, for the quantized-weights and disk-offload caches' keys:
    the files' sha256 and scales, in order ("" for none)."""
    import hashlib

    loras = list(loras)
    if not loras:
        return ""
    text = ";".join(f"{lora.sha256 or Path(lora.path).resolve()}:{float(lora.scale)!r}" for lora in loras)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_scale(text: str, what: str) -> float:
    """A LoRA scale: a finite number with |scale| <= MAX_SCALE. UserError naming `what` otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
        if not text.strip():
            raise UserError(f"{what}: the scale after ':' is empty; write FILE:0.8, or FILE alone for 1.0.") from None
    if not math.isfinite(value) or abs(value) > MAX_SCALE:
        raise UserError(f"{what}: scale {text!r} is not a number from -{MAX_SCALE:g} to {MAX_SCALE:g}; write it like FILE:0.8 (1.0 = as trained, 0 = off).")
    return value


def parse_lora_arg(text: str) -> LoraSpec:
    """`FILE[:SCALE][@high|@low|@both]` -> LoraSpec (the file is not opened here).

    A ':' belongs to the path when what follows it looks like a path (a Windows drive, a folder) or the
    whole text names an existing file."""
    what = f"--lora {text}"
    raw = text.strip()
    if not raw:
        raise UserError("--lora: give a LoRA file: --lora FILE[:SCALE][@high|@low].")
    expert = ""
    m = _EXPERT_SUFFIX.search(raw)
    if m:
        expert, raw = m.group(1).lower(), raw[: m.start()]
    scale = 1.0
    head, sep, tail = raw.rpartition(":")
    if (sep and head and not any(c in tail for c in "/\\") and not tail.lower().endswith(".safetensors")
            and not Path(raw).expanduser().is_file()):  # "a:b.safetensors": a file name (in a LoRA folder), no scale
        scale, raw = parse_scale(tail, what), head
    if not raw:
        raise UserError(f"{what}: no file name before the scale.")
    return LoraSpec(path=raw, scale=scale, expert=expert)


def format_lora_arg(spec: LoraSpec) -> str:
    """The `--lora` text of a spec (the inverse of parse_lora_arg)."""
    text = spec.path
    if spec.scale != 1.0:
        text += f":{spec.scale:g}"
    if spec.expert:
        text += f"@{spec.expert}"
    return text


def check_loras(loras: tuple[LoraSpec, ...]) -> list[str]:
    """Problems validate_job reports (no file is read here): scales, experts, the same file twice."""
    problems = []
    seen: dict[tuple[str, str], int] = {}
    for spec in loras:
        if not isinstance(spec.scale, (int, float)) or isinstance(spec.scale, bool) or not math.isfinite(spec.scale) or abs(spec.scale) > MAX_SCALE:
            problems.append(f"--lora {spec.path}: scale {spec.scale!r} must be a number from -{MAX_SCALE:g} to {MAX_SCALE:g}")
        if spec.expert and spec.expert not in EXPERTS:
            problems.append(f"--lora {spec.path}@{spec.expert}: the expert is high, low or both")
        # @both (or no expert) covers the high and the low expert: FILE@high with FILE would adapt `high` twice
        for side in ("high", "low") if (spec.expert or "both") == "both" else (spec.expert,):
            key = (str(Path(spec.path).expanduser()), side)
            seen[key] = seen.get(key, 0) + 1
    twice: dict[str, tuple[int, list]] = {}
    for (path, expert), n in seen.items():
        if n > 1:
            count, experts = twice.setdefault(path, (n, []))
            experts.append(expert)
            twice[path] = (max(count, n), experts)
    for path, (n, experts) in twice.items():
        which = "both" if len(experts) == 2 else experts[0]
        problems.append(f"--lora {path} is given {n} times for the same expert ({which}); give it once with the scale you want")
    return problems
