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


# Bounds on what a job may ask for: beyond them a run is an accident (a typo, a hostile file), and some values
# allocate before anything can check memory (the sampler's timestep tables grow with the steps).
MAX_SIDE = 4096  # px: above 4K; a 14B step at this size already needs hours
MAX_FRAMES = 1025  # 4k+1: about a minute at 16 fps
MAX_STEPS = 1000  # the schedulers' training timesteps: more steps repeat timesteps
MAX_FPS = 240
MAX_PROMPT_CHARS = 20_000  # the text encoder reads 512 tokens; the sidecar keeps the whole prompt
MAX_IMAGE_PIXELS = 64_000_000  # a guard against decompression bombs: a small file decoding to huge pixels


def validate_job(job: Job) -> None:
    """Check what can be checked without loading a model. Raises UserError naming the fix."""
    problems = []
    if not job.prompt or not job.prompt.strip():
        problems.append("the prompt is empty; describe the video you want")
    for name, text in (("the prompt", job.prompt), ("--negative-prompt", job.negative_prompt)):
        if text and len(text) > MAX_PROMPT_CHARS:
            problems.append(f"{name} has {len(text)} characters, over the limit of {MAX_PROMPT_CHARS} (the text encoder reads the first 512 tokens); shorten it")
    for name, value in (("width", job.width), ("height", job.height)):
        if value < 16 or value % 16:
            lower = min(MAX_SIDE - 16, max(16, value // 16 * 16))
            problems.append(f"--{name} {value} must be a positive multiple of 16 (e.g. {lower} or {lower + 16})")
        elif value > MAX_SIDE:
            problems.append(f"--{name} {value} is over the limit of {MAX_SIDE} pixels")
    if job.frames < 1 or (job.frames - 1) % 4:
        k = min((MAX_FRAMES - 5) // 4, max(0, (job.frames - 1) // 4))
        problems.append(f"--frames {job.frames} must be of the form 4k+1 (e.g. {4 * k + 1} or {4 * k + 5})")
    elif job.frames > MAX_FRAMES:
        problems.append(f"--frames {job.frames} is over the limit of {MAX_FRAMES} frames")
    if job.steps < 1:
        problems.append(f"--steps {job.steps} must be at least 1")
    elif job.steps > MAX_STEPS:
        problems.append(f"--steps {job.steps} is over the limit of {MAX_STEPS} steps (Wan models use 30 to 50)")
    if not job.guidance >= 0 or job.guidance == float("inf"):  # also catches nan
        problems.append(f"--guidance {job.guidance} must be a finite number >= 0 (1.0 or less turns guidance off)")
    if job.guidance_2 is not None and (not job.guidance_2 >= 0 or job.guidance_2 == float("inf")):
        problems.append(f"--guidance-2 {job.guidance_2} must be a finite number >= 0 (1.0 or less turns guidance off)")
    if job.shift is not None and not (0 < job.shift <= 100):  # also catches nan
        problems.append(f"--shift {job.shift} must be a number above 0 and at most 100 (Wan uses 3 to 12)")
    problems += check_loras(job.loras)
    if job.fps < 1:
        problems.append(f"--fps {job.fps} must be at least 1")
    elif job.fps > MAX_FPS:
        problems.append(f"--fps {job.fps} is over the limit of {MAX_FPS}")
    if job.seed < 0 or job.seed >= 2**64:  # torch seeds are unsigned 64-bit
        problems.append(f"--seed {job.seed} must be between 0 and {2**64 - 1}")
    if job.out is not None:
        parent = Path(job.out).expanduser().parent
        if not parent.is_dir():
            problems.append(f"--out {job.out}: the folder {parent} does not exist; create it or choose another path")
        elif not str(job.out).lower().endswith(".mp4"):
            problems.append(f"--out {job.out}: the output must end in .mp4")
    if job.image is not None:
        problem = image_problem(job.image)
        if problem:
            problems.append(f"--image {job.image}: {problem}")
    if problems:
        raise UserError("Invalid job:\n  - " + "\n  - ".join(problems))


def image_problem(path_text: str) -> Optional[str]:
    """Why the image cannot be a first frame, or None. The image is decoded in full (a truncated file passes
    Pillow's verify() but fails here), after its size is checked against MAX_IMAGE_PIXELS from the header."""
    import warnings

    from PIL import Image

    path = Path(path_text).expanduser()
    if not path.is_file():
        return "no such file"
    limit = f"the limit of {MAX_IMAGE_PIXELS // 1_000_000} megapixels (a guard against decompression bombs)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is lower; said below
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    return f"{width}x{height} is {width * height / 1e6:.0f} megapixels, over {limit}; downscale it (the video is at most {MAX_SIDE} px wide)"
                img.load()
    except Image.DecompressionBombError:
        return f"it decodes to more pixels than {limit}; downscale it"
    except Exception as exc:  # Pillow raises many kinds for damaged files (OSError, SyntaxError, ValueError, zlib.error...)
        return f"not a readable image ({type(exc).__name__}: {exc})"
    return None


TASKS = ("t2v", "i2v", "ti2v")


def task_problem(job: Job, task: str, model_name: str, inputs: bool = True) -> Optional[str]:
    """What a model accepts: t2v takes no image, i2v needs one (the first frame), ti2v takes one optionally. The
    problem in the options' words, or None. `inputs=False` (planning only): a missing first frame is no problem yet."""
    if task == "t2v" and job.image is not None:
        return (
            f"{model_name} is a text-to-video model and takes no --image: drop --image, or use an image-to-video "
            "model (wan2.2-i2v-a14b, wan2.1-i2v-14b-480p, wan2.2-ti2v-5b; tiny-random-i2v or tiny-random-ti2v for the demo)"
        )
    if inputs and task == "i2v" and job.image is None:
        return f"{model_name} is an image-to-video model: give the first frame with --image PATH"
    return None


def check_task(job: Job, task: str, model_name: str) -> None:
    problem = task_problem(job, task, model_name)
    if problem:
        raise UserError(problem + ".")
