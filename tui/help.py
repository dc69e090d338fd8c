"""The words of the TUI's help: what each field means, each screen shows, and the job in plain words."""

from __future__ import annotations

from lowvram.models.defaults import DEFAULT_FPS

FIELD_HELP = {
    "model": "Which Wan model: tiny-random (the demo: random weights, its video is noise), wan2.1-t2v-1.3b, "
             "wan2.1-t2v-14b, wan2.1-i2v-14b-480p / -720p, wan2.2-t2v-a14b, wan2.2-i2v-a14b, wan2.2-ti2v-5b, a hub "
             "id or a local diffusers folder. → accepts the grey completion.",
    "prompt": "What the video should show: one scene, its subjects, their motion, the camera. Enter plans.",
    "negative": "What to avoid. The default is the Wan team's own negative prompt, in Chinese (garish colours, "
                "overexposed, static, blurry, extra fingers, ...). Empty: nothing.",
    "image": "The first frame, for image-to-video models (i2v); the video takes the image's shape.",
    "loras": "LoRA files (.safetensors), separated by ';': FILE, FILE:0.8 (strength), FILE@high / FILE@low (one "
             "expert of a Wan2.2 A14B model). Checked when planned; a step-distillation LoRA sets its steps, "
             "guidance and shift (shown on the plan).",
    "preset": "480p (832x480) or 720p (1280x720), the sizes Wan2.1 was trained at; custom: type width and height.",
    "width": "Video width in pixels, a multiple of 16.",
    "height": "Video height in pixels, a multiple of 16.",
    "frames": "Frames of the form 4k+1: 81 is 5 s at 16 fps. Memory and time grow with them.",
    "steps": "Denoising steps: 50 is Wan's default; fewer is faster and rougher.",
    "guidance": "How closely to follow the prompt (5 is Wan's default). 1 or less skips the negative pass: "
                "twice as fast, less faithful.",
    "seed": "Empty: a random seed, shown on the plan and kept in the sidecar. Same seed + settings = same video.",
    "teacache_mode": "A step cache skips transformer calls whose input barely changed (TeaCache; MagCache when a "
                     "profile picks it): a threshold (0.05 is near lossless on 1.3B) or a target speed-up (1.5, 2). "
                     "The video changes slightly.",
    "teacache_value": "The cache's threshold (e.g. 0.08) or target speed-up (e.g. 1.5).",
    "out": "Where the mp4 goes; empty: outputs/<prompt>-seed<N>.mp4. Never overwrites: a -1 suffix is added.",
    "profile": "Saved settings: model, sizes, planner limits. ^l picks one (shipped or yours), ^s saves these.",
    "plan": "Plan the job for this machine: nothing loads until you run it.",
}

GLOBAL_KEYS = (("F1 / ?", "this help"), ("Ctrl-Q", "quit (during a run: stop after the step, then quit)"),
               ("Ctrl-P", "command palette"))

SCREEN_HELP = {
    "new job": ("Set up what to make. Tab / ↑↓ move between fields; Enter on a list opens it. Every problem "
                "shows under its field at once and goes away when fixed; yellow lines are warnings that "
                "do not block.",
                (("Ctrl-R / Enter", "plan the job"), ("Ctrl-L", "pick a profile (shipped or yours)"),
                 ("Ctrl-S", "save these settings as a profile"))),
    "plan": ("How the job fits this machine: the plan with its predicted peaks and time per stage, the "
             "alternatives and why they lost, the TeaCache schedule and, when the plan is very slow, what "
             "would help.",
             (("Enter / r", "run the plan"), ("Esc / b", "back to the job"), ("↑↓ PgUp PgDn", "scroll"))),
    "run": ("The run: stage, progress with the time left (from the known TeaCache schedule and the "
            "predicted decode), memory over time, which steps computed or skipped, and a log.",
            (("c", "cancel (stops after the current step or decoded frame; latents kept for --resume)"),
             ("Ctrl-C", "cancel and quit; pressed again, abort at once"), ("Esc", "back to the job when done"))),
    "done": ("Where the video is, predicted vs measured time and peaks, what TeaCache skipped.",
             (("n", "edit these settings for another job"), ("a", "plan and run the same job again (a random seed is drawn anew)"), ("q", "quit"))),
}


def job_summary(values: dict[str, str]) -> list[str]:
    """The job the form describes, in plain words (what can be read of it; nothing is validated here)."""
    from lowvram.models.advice import model_traits

    lines = []
    model = values.get("model", "").strip()
    if model:
        traits = model_traits(model)
        what = {"t2v": "text-to-video", "i2v": "image-to-video"}.get(traits.task or "", "task read from the checkpoint")
        extra = " demo (random weights: noise)" if traits.demo else (f", {traits.size.upper()}" if traits.size else "")
        trained = f", trained at {' and '.join(traits.trained_at)}" if traits.trained_at else ""
        lines.append(f"{model}: {what}{extra}{trained}")
    try:
        width, height, frames = int(values["width"]), int(values["height"]), int(values["frames"])
        lines.append(f"{width}x{height}, {frames} frames = {frames / DEFAULT_FPS:.1f} s at {DEFAULT_FPS} fps")
        tokens = ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)
        lines.append(f"{tokens:,} tokens per transformer pass")
    except (KeyError, ValueError):
        pass
    try:
        steps, guidance = int(values["steps"]), float(values["guidance"])
        passes = 2 if guidance > 1 else 1
        lines.append(f"{steps} steps x {passes} pass{'es' if passes > 1 else ''} = {steps * passes} transformer calls")
    except (KeyError, ValueError):
        pass
    loras = [part.strip() for part in values.get("loras", "").split(";") if part.strip()]
    if loras:
        lines.append(f"{len(loras)} LoRA{'s' if len(loras) > 1 else ''}: {', '.join(loras)}")
    mode = values.get("teacache_mode", "off")
    value = values.get("teacache_value", "").strip()
    lines.append("TeaCache off" if mode == "off" else f"TeaCache {'threshold' if mode == 'threshold' else 'target speed-up'} {value or '?'}")
    seed = values.get("seed", "").strip()
    lines.append(f"seed {seed}" if seed else "seed: random (drawn when planned)")
    return lines
