"""A generation job: what to make. Frozen, validated before any model loads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

from lowvram.caching.setting import CacheSetting, TeaCacheSetting  # noqa: F401 (TeaCacheSetting: the old name)
from lowvram.errors import UserError
from lowvram.loras.spec import LoraSpec, check_loras

DEFAULT_NEGATIVE = ""


@dataclass(frozen=True)
class Job:
    prompt: str
    model: str = "tiny-random"
    base: Optional[str] = None  # the pipeline a single-file --model takes its other components from
    negative_prompt: str = DEFAULT_NEGATIVE
    image: Optional[str] = None
    width: int = 832
    height: int = 480
    frames: int = 81
    steps: int = 50
    guidance: float = 5.0
    seed: int = 0
    fps: int = 16
    out: Optional[str] = None
    cache: CacheSetting = CacheSetting()
    guidance_2: Optional[float] = None  # two-expert models: the low-noise expert's guidance (None: the model's)
    shift: Optional[float] = None  # flow shift of the sampler (None: the model card's rule for this size)
    loras: tuple[LoraSpec, ...] = ()  # applied in order (lowvram.loras); checked against the model before it loads
    notes: tuple[str, ...] = ()  # what was set for the user and why (a LoRA's preset steps, a cache turned off)

    def __post_init__(self) -> None:
        # A sidecar's or a JSON file's lists of dicts -> the frozen forms
        loras = tuple(LoraSpec(**lora) if isinstance(lora, dict) else lora for lora in (self.loras or ()))
        object.__setattr__(self, "loras", loras)
        object.__setattr__(self, "notes", tuple(self.notes or ()))

    def with_(self, **changes) -> "Job":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


def validate_job(job: Job) -> None:
    """Check what can be checked without loading a model. Raises UserError naming the fix."""
    problems = []
    if not job.prompt or not job.prompt.strip():
        problems.append("the prompt is empty; describe the video you want")
    for name, value in (("width", job.width), ("height", job.height)):
        if value < 16 or value % 16:
            lower = max(16, value // 16 * 16)
            problems.append(f"--{name} {value} must be a positive multiple of 16 (e.g. {lower} or {lower + 16})")
    if job.frames < 1 or (job.frames - 1) % 4:
        k = max(0, (job.frames - 1) // 4)
        problems.append(f"--frames {job.frames} must be of the form 4k+1 (e.g. {4 * k + 1} or {4 * k + 5})")
    if job.steps < 1:
        problems.append(f"--steps {job.steps} must be at least 1")
    if not job.guidance >= 0 or job.guidance == float("inf"):  # also catches nan
        problems.append(f"--guidance {job.guidance} must be a finite number >= 0 (1.0 or less turns guidance off)")
    if job.guidance_2 is not None and (not job.guidance_2 >= 0 or job.guidance_2 == float("inf")):
        problems.append(f"--guidance-2 {job.guidance_2} must be a finite number >= 0 (1.0 or less turns guidance off)")
    if job.shift is not None and not (0 < job.shift <= 100):  # also catches nan
        problems.append(f"--shift {job.shift} must be a number above 0 and at most 100 (Wan uses 3 to 12)")
    problems += check_loras(job.loras)
    if job.fps < 1:
        problems.append(f"--fps {job.fps} must be at least 1")
    if job.seed < 0 or job.seed >= 2**64:  # torch seeds are unsigned 64-bit
        problems.append(f"--seed {job.seed} must be between 0 and {2**64 - 1}")
    if job.out is not None:
        parent = Path(job.out).expanduser().parent
        if not parent.is_dir():
            problems.append(f"--out {job.out}: the folder {parent} does not exist; create it or choose another path")
        elif not str(job.out).lower().endswith(".mp4"):
            problems.append(f"--out {job.out}: the output must end in .mp4")
    if job.image is not None:
        path = Path(job.image).expanduser()
        if not path.is_file():
            problems.append(f"--image {job.image}: no such file")
        else:
            try:
                from PIL import Image

                with Image.open(path) as img:
                    img.verify()
            except Exception as exc:
                problems.append(f"--image {job.image}: not a readable image ({type(exc).__name__}: {exc})")
    if problems:
        raise UserError("Invalid job:\n  - " + "\n  - ".join(problems))


def check_task(job: Job, task: str, model_name: str) -> None:
    """An image is required for image-to-video and refused for text-to-video."""
    if task == "i2v" and job.image is None:
        raise UserError(f"{model_name} is an image-to-video model: give the first frame with --image PATH.")
    if task == "t2v" and job.image is not None:
        raise UserError(
            f"{model_name} is a text-to-video model and takes no --image. Drop --image, or use an image-to-video "
            "model (e.g. wan2.1-i2v-14b-480p, or tiny-random-i2v for the demo)."
        )
