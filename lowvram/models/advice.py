"""What can be said about a job before anything loads: what a model name tells (task, size, trained
resolutions), the video size an input image suggests, and warnings where a job leaves the range a model was
trained on. Warnings never refuse a job (planner.job_checks refuses what a model cannot do); `generate`,
`plan` and the TUI show them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lowvram.job import MAX_SIDE, Job

SIZE_MULTIPLE = 16  # the VAE's 8x spatial compression times the transformer's 2x2 patches
P480_AREA, P720_AREA = 832 * 480, 1280 * 720
TRAINED_FRAMES = 81  # Wan2.1 was trained on clips of 81 frames (5 s at 16 fps)
ASPECT_TOLERANCE = 0.05  # a relative difference of aspect ratios below this is not worth a warning


@dataclass(frozen=True)
class ModelTraits:
    """What a model name says about it. None: not known from the name (a folder, an unknown hub id)."""

    task: Optional[str] = None  # "t2v" or "i2v"
    size: Optional[str] = None  # "1.3b", "14b"
    trained_at: tuple[str, ...] = ()  # "480p", "720p"
    demo: bool = False


def model_traits(model: str) -> ModelTraits:
    """Read from the name (short name, hub id) or, for a local folder, from its model_index.json."""
    from lowvram.models.names import DEMO_NAMES

    if model in DEMO_NAMES:
        task = None if "ti2v" in model else "i2v" if model.endswith("i2v") else "t2v"  # TI2V takes an image or not
        return ModelTraits(task=task, demo=True)
    text, size = _name(model)
    folder = Path(model).expanduser()
    task = None
    if (folder / "model_index.json").is_file():
        task = _folder_task(folder)
    elif "ti2v" not in text:  # Wan2.2 TI2V takes an image or not
        task = "i2v" if "i2v" in text else "t2v" if "t2v" in text else None
    return ModelTraits(task=task, size=size, trained_at=_trained_at(text, size))


def trained_at_from_name(model: str) -> tuple[str, ...]:
    """The resolutions a model was trained at, from its name alone (nothing read from disk)."""
    from lowvram.models.names import DEMO_NAMES

    return () if model in DEMO_NAMES else _trained_at(*_name(model))


def _name(model: str) -> tuple[str, Optional[str]]:
    """(the name as text to read: a short name's hub id, lower case; the size it names: 1.3b, 14b or None)."""
    from lowvram.models.names import SHORT_NAMES

    text = SHORT_NAMES.get(model.lower(), model).lower()
    return text, "1.3b" if "1.3b" in text else "14b" if "14b" in text else None


def _trained_at(text: str, size: Optional[str]) -> tuple[str, ...]:
    if "i2v" in text and ("480p" in text or "720p" in text):
        return ("480p",) if "480p" in text else ("720p",)
    if size == "1.3b":
        return ("480p",)
    if size == "14b":
        return ("480p", "720p")
    return ()


def _folder_task(folder: Path) -> Optional[str]:
    from lowvram.models.loading import detect_task

    try:
        index = json.loads((folder / "model_index.json").read_text())
        config_path = folder / "transformer" / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    except (OSError, ValueError):
        return None  # loading says what is wrong with the folder
    return detect_task(index, config)


def image_size(path: str) -> Optional[tuple[int, int]]:
    """(width, height) of an image file, None when it cannot be read (validate_job reports that)."""
    try:
        from PIL import Image

        with Image.open(Path(path).expanduser()) as img:
            return img.size
    except Exception:
        return None


def size_for_image(image_width: int, image_height: int, area: int, multiple: int = SIZE_MULTIPLE,
                   max_side: int = MAX_SIDE) -> tuple[int, int]:
    """The video size with the image's aspect ratio and about `area` pixels, in multiples of `multiple` (16, 32
    for Wan2.2 TI2V-5B; as the diffusers Wan image-to-video example computes it). A very long image's size is
    scaled down to at most `max_side` on its long side (a job's limit, which the user did not choose here)."""
    aspect = image_height / image_width
    height = max(multiple, round(math.sqrt(area * aspect)) // multiple * multiple)
    width = max(multiple, round(math.sqrt(area / aspect)) // multiple * multiple)
    longest = max(width, height)
    if longest > max_side:
        width = max(multiple, width * max_side // longest // multiple * multiple)
        height = max(multiple, height * max_side // longest // multiple * multiple)
    return width, height


def size_multiple(model: str, base: Optional[str] = None) -> int:
    """Width and height of a job for this model must be multiples of this (16, or 32 for Wan2.2 TI2V-5B): from
    its spec where that is known without the network (a demo, a short name, a folder or file here), else from
    the name."""
    from lowvram.models.names import DEMO_NAMES, SHORT_NAMES

    first = model.split(",")[0]
    if not first:
        return SIZE_MULTIPLE
    if model in DEMO_NAMES or model.lower() in SHORT_NAMES or Path(first).expanduser().exists():
        try:
            from lowvram.models.specs import spec_for_model

            return spec_for_model(model, base).spatial_multiple
        except Exception:  # an unreadable model is reported where it is planned
            pass
    return 2 * SIZE_MULTIPLE if "ti2v" in f"{model} {base or ''}".lower() else SIZE_MULTIPLE


def aspect_warning(job: Job) -> Optional[str]:
    """The image will be stretched to the video size when their aspect ratios differ."""
    if job.image is None:
        return None
    size = image_size(job.image)
    if size is None:
        return None
    iw, ih = size
    if abs((job.width / job.height) / (iw / ih) - 1) <= ASPECT_TOLERANCE:
        return None
    m = size_multiple(job.model, job.base)
    w, h = size_for_image(iw, ih, job.width * job.height, m)
    if (w, h) == (job.width, job.height):  # the nearest size in the model's multiples: nothing closer to offer
        return (f"the image is {iw}x{ih} but the video {job.width}x{job.height} (the nearest size in multiples of {m}): "
                "the first frame will be stretched slightly")
    return (f"the image is {iw}x{ih} but the video {job.width}x{job.height}: the first frame will be stretched; "
            f"{w}x{h} keeps the image's shape")


def range_warnings(job: Job) -> list[tuple[str, str]]:
    """Where the job leaves what the model was trained on (it runs, but quality usually drops), as
    (what it concerns: "size" or "frames", the warning)."""
    traits = model_traits(job.model)
    out = []
    area = job.width * job.height
    if traits.trained_at == ("480p",) and area > P480_AREA * 1.2:
        out.append(("size", f"{job.model} was trained at 480p (832x480); at {job.width}x{job.height} its videos are usually "
                            "less stable (the Wan team recommends 480p for it)"))
    if traits.trained_at == ("720p",) and area < P720_AREA * 0.8:
        out.append(("size", f"{job.model} was trained at 720p (1280x720); {job.width}x{job.height} is below what it was trained on"))
    if traits.trained_at and job.frames > TRAINED_FRAMES:
        out.append(("frames", f"{job.model} was trained on clips of up to {TRAINED_FRAMES} frames; {job.frames} frames often "
                              "repeat or lose coherence (make several clips instead)"))
    return out


def job_warnings(job: Job) -> list[str]:
    """Every warning for this job, in the order a user reads the job: model range, then image."""
    out = [text for _, text in range_warnings(job)]
    aspect = aspect_warning(job)
    if aspect:
        out.append(aspect)
    return out
