"""The profile schema: frozen dataclasses, one per TOML table, with the limits each value must respect.

A profile stores intent (model, job defaults, planner preferences). The plan it resolved to and the
machine it was saved on are kept for information only: every load re-plans on the machine at hand.
Limits live in each field's metadata so that the reader can check them and say what is expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from lowvram.caching.setting import CacheSetting
from lowvram.errors import UserError
from planner.plan import Plan
from planner.plan import (
    Quant as Precision,  # the transformer quantizations the planner knows
)

SCHEMA_VERSION = 1

Preference = Literal["speed", "quality"]


def limits(expect: str, lo: float | None = None, hi: float | None = None, multiple_of: int | None = None,
           step_form: tuple[int, int] | None = None, max_len: int | None = None) -> dict:
    """Field metadata the reader enforces. `expect` is the phrase the error message uses.

    step_form=(a, b): the value must be of the form a*k + b (frames are 4k+1).
    """
    return {"expect": expect, "lo": lo, "hi": hi, "multiple_of": multiple_of, "step_form": step_form, "max_len": max_len}


@dataclass(frozen=True)
class ProfileLora:
    """A LoRA by identity: found on any machine by file name in the LoRA folders and checked by sha256."""

    name: str = field(metadata=limits("the LoRA's file name (found in the LoRA folders: LOWVRAM_LORA_DIRS)", max_len=1000))
    sha256: str = field(metadata=limits("the file's sha256, 64 hexadecimal digits", max_len=64))
    scale: float = field(default=1.0, metadata=limits("the LoRA's strength (1.0 = as trained, 0 = off)", -100.0, 100.0))
    expert: Optional[Literal["both", "high", "low"]] = field(default=None, metadata=limits("the expert of a Wan2.2 A14B model it applies to"))

    def __post_init__(self) -> None:
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256.lower()):
            raise UserError(f"LoRA {self.name}: sha256 {self.sha256!r} is not 64 hexadecimal digits")
        if "/" in self.name or "\\" in self.name:
            raise UserError(f"LoRA {self.name!r}: give the file name only; lowvram finds it in the LoRA folders")


@dataclass(frozen=True)
class JobDefaults:
    """What to make, apart from the prompt: any field left out falls back to lowvram's default."""

    width: Optional[int] = field(default=None, metadata=limits("the video width in pixels, a multiple of 16", 16, 4096, multiple_of=16))
    height: Optional[int] = field(default=None, metadata=limits("the video height in pixels, a multiple of 16", 16, 4096, multiple_of=16))
    frames: Optional[int] = field(default=None, metadata=limits("a number of frames of the form 4k+1 (17, 33, 81...)", 1, 1001, step_form=(4, 1)))
    steps: Optional[int] = field(default=None, metadata=limits("a number of denoising steps", 1, 1000))
    guidance: Optional[float] = field(default=None, metadata=limits("a guidance scale (<= 1 turns guidance off)", 0.0, 50.0))
    guidance_2: Optional[float] = field(default=None, metadata=limits("the low-noise expert's guidance scale (two-expert models)", 0.0, 50.0))
    shift: Optional[float] = field(default=None, metadata=limits("the sampler's flow shift (Wan uses 3 to 12)", 0.01, 100.0))
    negative_prompt: Optional[str] = field(default=None, metadata=limits("text describing what to avoid", max_len=20000))
    fps: Optional[int] = field(default=None, metadata=limits("frames per second of the mp4", 1, 240))
    cache: Optional[CacheSetting] = None  # [job.cache]: method = "none" | "teacache" | "magcache", threshold or speedup, ...
    loras: Optional[tuple[ProfileLora, ...]] = None  # [[job.loras]]: name, sha256, scale, expert
    teacache: Optional["TeaCacheTable"] = None  # schema 1's [job.teacache]: read into `cache`, never written

    def __post_init__(self) -> None:
        if self.teacache is not None:
            if self.cache is not None:
                raise UserError("both [job.cache] and the older [job.teacache] are given; keep [job.cache] and delete [job.teacache]")
            object.__setattr__(self, "cache", self.teacache.to_setting())
            object.__setattr__(self, "teacache", None)


@dataclass(frozen=True)
class TeaCacheTable:
    """The [job.teacache] table of profiles written before MagCache: read as a [job.cache] of method teacache."""

    enabled: bool = False
    threshold: Optional[float] = None
    speedup: Optional[float] = None
    retention: bool = True
    coefficients: Optional[str] = None

    def to_setting(self) -> CacheSetting:
        return CacheSetting("teacache" if self.enabled else "none", self.threshold, self.speedup, self.retention, self.coefficients)


@dataclass(frozen=True)
class PlannerPrefs:
    """What the planner may trade away on the machine where the profile is loaded."""

    min_precision: Optional[Precision] = field(default=None, metadata=limits("the lowest transformer precision allowed"))
    prefer: Optional[Preference] = field(default=None, metadata=limits("what wins when plans are close"))
    vram_reserve_gib: Optional[float] = field(default=None, metadata=limits("GiB of VRAM to leave free", 0.0, 1024.0))
    ram_reserve_gib: Optional[float] = field(default=None, metadata=limits("GiB of RAM to leave free", 0.0, 4096.0))
    vram_cap_gib: Optional[float] = field(default=None, metadata=limits("the most VRAM lowvram may use, in GiB", 0.25, 1024.0))
    ram_cap_gib: Optional[float] = field(default=None, metadata=limits("the most RAM lowvram may use, in GiB", 0.25, 4096.0))
    compile: Optional[bool] = field(default=None, metadata=limits("whether the transformer blocks may be compiled"))
    max_error: Optional[float] = field(default=None, metadata=limits("the largest per-forward relative error of fp8/int8 matmuls vs bf16", 0.0, 0.99))


@dataclass(frozen=True)
class MachineFingerprint:
    """The machine a profile was saved on (for information: it is never trusted on load)."""

    gpu: str = field(metadata=limits("the GPU name, or 'none'", max_len=200))
    vram_gib: float = field(metadata=limits("the GPU's total VRAM in GiB", 0.0, 4096.0))
    ram_gib: float = field(metadata=limits("the machine's total RAM in GiB", 0.0, 65536.0))
    compute_capability: Optional[str] = field(default=None, metadata=limits("the CUDA compute capability, e.g. '8.9'", max_len=10))
    # how many GPUs (absent: one); `gpu`, `vram_gib` and `compute_capability` are the first one's
    gpus: Optional[int] = field(default=None, metadata=limits("the number of GPUs", 1, 64))
    # each GPU's VRAM, first to last, when there are several (absent: all of `vram_gib`)
    gpu_vram_gib: Optional[tuple[float, ...]] = field(default=None, metadata=limits("each GPU's total VRAM in GiB", 0.0, 4096.0))
    # each GPU's name and compute capability, first to last, when the cards differ (absent: all like the first)
    gpu_names: Optional[tuple[str, ...]] = field(default=None, metadata=limits("each GPU's name", max_len=200))
    gpu_compute_capabilities: Optional[tuple[str, ...]] = field(
        default=None, metadata=limits("each GPU's CUDA compute capability, e.g. '8.9'", max_len=10))

    def __post_init__(self) -> None:
        for key in ("gpu_vram_gib", "gpu_names", "gpu_compute_capabilities"):
            each = getattr(self, key)
            if each is not None and len(each) != (self.gpus or 1):
                raise ValueError(f"{key} lists {len(each)} GPUs and gpus says {self.gpus or 1}: give one value per GPU")

    @property
    def vram_per_gpu(self) -> tuple[float, ...]:
        return tuple(self.gpu_vram_gib) if self.gpu_vram_gib else (self.vram_gib,) * (self.gpus or 1)

    @property
    def cards(self) -> tuple[tuple[str, Optional[str]], ...]:
        """Each GPU's (name, compute capability), first to last."""
        count = self.gpus or 1
        return tuple(zip(self.gpu_names or (self.gpu,) * count,
                         self.gpu_compute_capabilities or (self.compute_capability,) * count))

    def describe(self) -> str:
        cc = f" (compute {self.compute_capability})" if self.compute_capability else ""
        gpu = "no GPU" if self.gpu == "none" else f"{self.gpu}{cc}, {self.vram_gib:.1f} GiB VRAM"
        if self.gpus and self.gpus > 1 and self.gpu != "none":
            sizes = self.vram_per_gpu
            if len(set(self.cards)) > 1:
                each = f" ({' + '.join(f'{name} {v:g} GiB' for (name, _), v in zip(self.cards, sizes))})"
            else:
                each = f" ({' + '.join(f'{v:g}' for v in sizes)} GiB)" if len(set(sizes)) > 1 else ""
            gpu = f"{self.gpus} GPUs{each}, the first {gpu}"
        return f"{gpu}, {self.ram_gib:.1f} GiB RAM"


@dataclass(frozen=True)
class Profile:
    name: str = field(metadata=limits("a short name for the profile", max_len=200))
    model: str = field(metadata=limits("a model name (e.g. wan2.1-t2v-14b), hub id, folder or transformer file(s)", max_len=1000))
    description: str = field(default="", metadata=limits("a description for people", max_len=20000))
    schema_version: int = field(default=SCHEMA_VERSION, metadata=limits("the profile schema version", 1, SCHEMA_VERSION))
    job: JobDefaults = field(default_factory=JobDefaults)
    planner: PlannerPrefs = field(default_factory=PlannerPrefs)
    saved_on: Optional[MachineFingerprint] = None
    saved_plan: Optional[Plan] = None  # information only; re-planned on every load
    # the pipeline a single-file `model` takes its text encoder, VAE... from (lowvram.models.single_file)
    base: Optional[str] = field(default=None, metadata=limits("a diffusers folder, hub id or model name", max_len=1000))


# Order of the top-level keys in a written file (tables after plain keys, as TOML requires).
TOP_LEVEL_ORDER = ("schema_version", "name", "description", "model", "base", "job", "planner", "saved_on", "saved_plan")
