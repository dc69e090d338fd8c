"""The command line's shared options: job, step cache, profile, output, planner preferences, what-if machine.

Defaults are None where a profile may fill the value (an option not given leaves the profile's)."""

from __future__ import annotations

import argparse
import math

from lowvram.models.defaults import DEFAULT_FPS, DEFAULT_GUIDANCE
from planner.memory import QUANT_ORDER

PLAN_PROMPT = "(planning only)"  # the prompt does not change the plan


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """Job options shared by generate, plan and tui."""
    p.add_argument("--model", default=None, help="local diffusers folder, hub id, short name (wan2.1-t2v-1.3b, wan2.1-t2v-14b, wan2.1-i2v-14b-480p, wan2.1-i2v-14b-720p, wan2.2-t2v-a14b, wan2.2-i2v-a14b, wan2.2-ti2v-5b), a demo model (tiny-random, tiny-random-i2v, tiny-random-a14b, tiny-random-a14b-i2v, tiny-random-ti2v), or a single-file transformer (.safetensors: bf16/fp16/fp32/fp8/fp8 scaled; .gguf), a HIGH,LOW pair for Wan2.2 A14B (default: the profile's model, else tiny-random)")
    p.add_argument("--base", default=None, metavar="PIPELINE", help="for a single-file --model (.safetensors or .gguf transformer; HIGH,LOW for Wan2.2 A14B): the diffusers folder, hub id or short name its text encoder, VAE and tokenizer come from (default: the known model of the file's shape)")
    p.add_argument("--width", type=int, default=None, help="video width, a multiple of 16 (32 for TI2V-5B) (default: the model card's, e.g. 832; 256 for the demo models)")
    p.add_argument("--height", type=int, default=None, help="video height, a multiple of 16 (32 for TI2V-5B) (default: the model card's, e.g. 480; 144 for the demo models)")
    p.add_argument("--frames", type=int, default=None, help="number of frames, 4k+1 (default: the model card's, 81 or 121; 17 for the demo models)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model card's, 40 or 50; 8 for the demo models; a step-distillation LoRA's own, e.g. 4)")
    add_lora_argument(p)
    add_cache_arguments(p)


def add_lora_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", action="append", default=None, metavar="FILE[:SCALE][@high|@low]",
                   help="a LoRA (.safetensors: diffusers, original Wan / ComfyUI, kohya or musubi layout), repeatable; "
                        "SCALE multiplies its strength (default 1.0); @high / @low put it on one expert of a Wan2.2 A14B "
                        "model (default: both). A bare file name is looked up in the LoRA folders (LOWVRAM_LORA_DIRS). "
                        "Given, it replaces a profile's LoRAs; '--lora none' runs without. docs/loras.md")


def cache_threshold(text: str) -> float:
    """argparse type of a cache threshold: a finite number from 0 to 10."""
    from lowvram.caching.setting import MAX_THRESHOLD

    value = _finite(text)
    if value is None or not 0.0 <= value <= MAX_THRESHOLD:
        raise argparse.ArgumentTypeError(f"{text!r} is not a threshold: give a number from 0 to {MAX_THRESHOLD:g}, like 0.05")
    return value


def cache_speedup(text: str) -> float:
    """argparse type of a target speed-up: a finite number from 1 to 20."""
    from lowvram.caching.setting import MAX_SPEEDUP

    value = _finite(text)
    if value is None or not 1.0 <= value <= MAX_SPEEDUP:
        raise argparse.ArgumentTypeError(f"{text!r} is not a speed-up: give a number from 1 to {MAX_SPEEDUP:g}, like 1.8")
    return value


def _finite(text: str):
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def add_cache_arguments(p: argparse.ArgumentParser) -> None:
    """Step skipping is off unless asked for: it changes the output, so it is a choice, not a default."""
    from lowvram.caching.setting import METHODS

    g = p.add_argument_group("step skipping (reuse the transformer's output on steps where it barely changes; docs/caching.md)")
    g.add_argument("--cache", choices=METHODS, default=None, help="teacache (Wan2.1: from the timestep embedding), magcache (Wan2.1 and Wan2.2: from published or calibrated magnitude ratios) or none (default)")
    g.add_argument("--cache-threshold", type=cache_threshold, default=None, metavar="X", help="the cache's threshold: higher skips more (TeaCache: 0.05 is near-lossless on T2V-1.3B; MagCache default: the model's published one)")
    g.add_argument("--cache-speedup", type=cache_speedup, default=None, metavar="X", help="search the threshold that makes total calls / computed calls at least X")
    g.add_argument("--cache-calibrate", action="store_true", default=None, help="MagCache: run computing every step and save this model's magnitude ratios for later runs (for models without published ratios)")
    g.add_argument("--magcache-k", type=int, default=None, metavar="K", help="MagCache: most calls skipped in a row (default: the model's published K)")
    g.add_argument("--magcache-retention", type=float, default=None, metavar="R", help="MagCache: fraction of the first steps always computed (default: the model's published ratio)")
    g.add_argument("--teacache-retention", action=argparse.BooleanOptionalAction, default=None, help="TeaCache: always compute the first 5 steps, with the matching coefficients (default: on); --no-teacache-retention computes the first and last step instead")
    g.add_argument("--teacache-coefficients", default=None, metavar="MODEL", help="TeaCache: use these coefficients instead of the model's own: t2v-1.3b, t2v-14b, i2v-14b-480p, i2v-14b-720p")
    g.add_argument("--teacache", type=cache_threshold, default=None, metavar="THRESHOLD", help="same as --cache teacache --cache-threshold THRESHOLD")
    g.add_argument("--teacache-speedup", type=cache_speedup, default=None, metavar="X", help="same as --cache teacache --cache-speedup X")
    g.add_argument("--no-teacache", action="store_true", help="same as --cache none (overrides a profile that turns a cache on)")


def add_profile_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=None, metavar="FILE", help="profile TOML with job defaults and planner preferences; options given here override it")


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the output that a profile also keeps (defaults None: not given, so a profile may fill them)."""
    p.add_argument("--negative-prompt", default=None, help="what to avoid (default: the Wan team's own negative prompt, in Chinese as in the official configs; \"\" for none)")
    p.add_argument("--guidance", type=float, default=None, help=f"classifier-free guidance scale; <= 1 turns the second pass off (default: the model card's, {DEFAULT_GUIDANCE} for Wan2.1; Wan2.2 A14B T2V 4.0, I2V 3.5)")
    p.add_argument("--fps", type=int, default=None, help=f"frames per second of the mp4 (default: the model card's, {DEFAULT_FPS}; 24 for TI2V-5B)")
    p.add_argument("--guidance-2", type=float, default=None, help="two-expert Wan2.2 models: the low-noise expert's guidance scale (default: the model card's)")
    p.add_argument("--shift", type=float, default=None, help="the sampler's flow shift (default: the model card's: Wan2.1 3.0 at 480p and 5.0 at 720p, Wan2.2 T2V-A14B 12.0, I2V-A14B and TI2V-5B 5.0)")


def gib_amount(text: str) -> float:
    """argparse type of the GiB options: a finite number >= 0 (nan or inf would fail later, in int())."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of GiB >= 0; write it like 8 or 11.5")
    return value


def add_preference_arguments(p: argparse.ArgumentParser) -> None:
    """Planner preference options (defaults None: an option not given leaves the profile's value)."""
    g = p.add_argument_group("planner preferences")
    g.add_argument("--min-precision", choices=QUANT_ORDER, default=None, help="lowest transformer precision the planner may use (default: int4, anything)")
    g.add_argument("--prefer", choices=("speed", "quality"), default=None, help="what wins when plans are close in time (default: speed); quality also keeps fp8/int8 matmuls out")
    g.add_argument("--no-compile", dest="compile", action="store_false", default=None, help="never compile the transformer blocks (by default they are compiled when the job amortizes it)")
    g.add_argument("--max-error", type=float, default=None, metavar="X", help="the largest per-forward relative error vs bf16 allowed for fp8/int8 matmuls (default 0.05; 0 keeps them out)")
    g.add_argument("--vram-reserve", type=gib_amount, default=None, metavar="GiB", help="VRAM to leave free for other programs")
    g.add_argument("--ram-reserve", type=gib_amount, default=None, metavar="GiB", help="RAM to leave free for other programs")
    g.add_argument("--vram-cap", type=gib_amount, default=None, metavar="GiB", help="the most VRAM lowvram may use")
    g.add_argument("--ram-cap", type=gib_amount, default=None, metavar="GiB", help="the most RAM lowvram may use")


def gpu_list(text: str) -> tuple:
    """argparse type of --gpus: 'N' (a count), 'NxG' (N GPUs of G GiB) or 'G1,G2,...' (one GPU per size).
    Returns (count, sizes): sizes is () for a bare count."""
    text = text.strip().lower()
    how = "write it as a count (2), COUNTxGiB (2x24) or one size per GPU (24,16)"
    try:
        if "x" in text:
            count, _, size = text.partition("x")
            n, g = int(count), float(size)
            sizes = (g,) * n
        elif "," in text:
            sizes = tuple(float(x) for x in text.split(",") if x.strip())
        else:
            n, sizes = int(text), ()
            if not 1 <= n <= 16:
                raise ValueError
            return n, ()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a GPU list; {how}") from None
    if not 1 <= len(sizes) <= 16 or any(not math.isfinite(g) or g <= 0 for g in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 to 16 GPUs of more than 0 GiB each; {how}")
    return len(sizes), sizes


def add_gpus_argument(p, what_if: bool = True) -> None:
    if what_if:
        help_ = ("plan for these GPUs: 2x24 (two 24 GiB cards), 24,16 (one of each), or a count (2: copies of --vram or "
                 "of this machine's first GPU)")
    else:
        help_ = ("use only these of this machine's GPUs: a count (1: one GPU), or a most-VRAM per GPU (2x12: the first "
                 "two, at most 12 GiB each)")
    p.add_argument("--gpus", type=gpu_list, default=None, metavar="LIST", help=help_)


def add_machine_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what-if machine (instead of this one)")
    g.add_argument("--vram", type=gib_amount, default=None, metavar="GiB", help="plan for a GPU with this much free VRAM (0: no GPU)")
    add_gpus_argument(g)
    g.add_argument("--ram", type=gib_amount, default=None, metavar="GiB", help="plan for this much available RAM")
    g.add_argument("--gpu-name", default=None, help="name of the what-if GPU (its speed in the time model); with --gpus, "
                   "one for all or one per GPU: \"RTX 4090,RTX 3060\"")
    g.add_argument("--compute-capability", default=None, metavar="X.Y", help="compute capability of the what-if GPU (8.9 and up: "
                   "fast fp8); with --gpus, one for all or one per GPU: 8.9,8.6")
    g.add_argument("--saved-machine", action="store_true", help="plan for the machine the profile was saved on ([saved_on]) instead of this one")
