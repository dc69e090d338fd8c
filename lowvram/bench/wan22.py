"""Wan2.2 through lowvram's real path on a GPU: random weights in the real shapes, saved as a diffusers checkpoint,
then loaded, planned and run by `lowvram.sampling.runner.generate` (memory-mapped loading, expert phases, the
switch), against diffusers' own pipeline with every component resident on the uncapped card.

    python -m lowvram bench wan22 --model a14b --folder /tmp/a14b --cases 24:64,24:32,16:32 --steps 5 --out a14b.json

Each case runs in its own process (clean RAM and VRAM): the VRAM budget is simulated with
torch.cuda.set_per_process_memory_fraction, the RAM budget is what the planner is told (the machine has more;
the measured peak of unreclaimable RAM is compared with the plan's). To fit the device time, `--steps` steps are
measured and the model card's step count is composed from the median step of each expert's phase, the measured
switch, encode and decode; the result says so.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

GIB = 1024**3
PROMPT = "a red fox runs through a snowy forest, cinematic"
MODELS = {
    # name: (job size and card settings, total steps of the card)
    "a14b": dict(width=832, height=480, frames=81, guidance=4.0, guidance_2=3.0, shift=12.0, card_steps=40),
    "ti2v": dict(width=1280, height=704, frames=121, guidance=5.0, guidance_2=None, shift=5.0, card_steps=50),
}


# ------------------------------------------------------------------------------------ the checkpoint


def build_checkpoint(model: str, folder: Path, log: Callable[[str], None] = print) -> Path:
    """Random weights in the real shapes, saved with save_pretrained (bf16 transformers and text encoder, fp32 VAE)."""
    import torch
    from diffusers import UniPCMultistepScheduler, WanPipeline

    from lowvram.bench.build import build_transformer, build_umt5, build_vae
    from lowvram.models.demo import _tokenizer
    from planner.known_configs import WAN21_VAE, WAN22_TI2V_5B, WAN22_VAE, WAN_14B

    folder = Path(folder)
    if (folder / "lowvram_bench.json").is_file():
        log(f"[wan22] reusing {folder}")
        return folder
    t0 = time.perf_counter()
    two = model == "a14b"
    config = WAN_14B if two else WAN22_TI2V_5B
    vae_config = dict(WAN21_VAE if two else WAN22_VAE)
    if not two:  # the Wan2.2 VAE's 48 latent channels need 48 statistics (random weights: identity ones)
        vae_config.update(latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
    parts = dict(tokenizer=_tokenizer(), scheduler=UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0 if two else 5.0))
    parts["text_encoder"] = build_umt5(device="cuda")
    parts["vae"] = build_vae(device="cuda", config=vae_config)
    parts["transformer"] = build_transformer("14b" if two else "5b", device="cuda", config=config, seed=1)
    if two:
        parts["transformer_2"] = build_transformer("14b", device="cuda", config=config, seed=2)
    pipe = WanPipeline(**parts, boundary_ratio=0.875 if two else None, expand_timesteps=not two)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(folder), safe_serialization=True, max_shard_size="5GB")
    del pipe, parts
    torch.cuda.empty_cache()
    (folder / "lowvram_bench.json").write_text(json.dumps({"model": model, "random_weights": True}))
    size = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    log(f"[wan22] built and saved {model} ({size / GIB:.1f} GiB) in {time.perf_counter() - t0:.0f}s")
    return folder


# ------------------------------------------------------------------------------------ one case (own process)


def _job(model: str, folder: Path, steps: int, out: Path, size: Optional[tuple[int, int, int]] = None):
    from lowvram.job import Job

    m = dict(MODELS[model])
    if size:  # tests: tiny sizes on the demo models
        m.update(width=size[0], height=size[1], frames=size[2])
    return Job(prompt=PROMPT, model=str(folder), width=m["width"], height=m["height"], frames=m["frames"],
               steps=steps, guidance=m["guidance"], guidance_2=m["guidance_2"], shift=m["shift"], seed=0,
               out=str(out))


def run_lowvram_case(model: str, folder: Path, vram_gib: float, ram_gib: float, steps: int, out_dir: Path,
                     size: Optional[tuple[int, int, int]] = None) -> dict:
    """Plan for a `vram_gib` card told `ram_gib` of RAM, run generate(), report the plan, the measured stage and
    phase peaks and the step times."""
    import torch

    from lowvram.bench.measure import set_budget
    from lowvram.sampling.runner import generate
    from lowvram.telemetry import EventLog, PhaseStarted, PlanSwitched, StageStarted, StepFinished
    from lowvram.telemetry.memory import allocator_retries
    from lowvram.planning import plan_for_job
    from planner.choose import Preferences
    from planner.probe import override_probe, probe_hardware

    if torch.cuda.is_available():
        set_budget(vram_gib)
    job = _job(model, folder, steps, out_dir / f"lowvram-{vram_gib:g}-{ram_gib:g}.mp4", size)
    probe = override_probe(probe_hardware(), vram_gib=vram_gib, ram_gib=ram_gib)
    result = plan_for_job(job, probe=probe, prefs=Preferences())
    log = EventLog()
    t0 = time.perf_counter()
    run = generate(job, plan=result.plan, on_event=log)
    wall = time.perf_counter() - t0
    steps_ev = log.of(StepFinished)
    denoise_start = next(e.t for e in log.of(StageStarted) if e.stage == "denoise")
    switches = {}
    prev_end = denoise_start
    for e in steps_ev:
        start = e.t - e.seconds
        if e.expert and e.expert not in switches:
            switches[e.expert] = start - prev_end  # moving experts, pinning: time before its first step
        prev_end = e.t
    return dict(
        kind="lowvram", model=model, vram_gib=vram_gib, ram_gib=ram_gib, steps=steps, wall_seconds=wall,
        plan=result.plan.to_dict(), summary=result.plan.summary(), explanation=list(result.explanation),
        predicted=[dict(s.__dict__, key=s.key) for s in result.plan.predicted],
        measured=run.stage_peaks,
        step_seconds=[dict(step=e.step, expert=e.expert or "transformer", seconds=e.seconds) for e in steps_ev],
        switch_seconds=switches,
        phases=[dict(component=e.component, step=e.step) for e in log.of(PhaseStarted)],
        vram_max_reserved=torch.cuda.max_memory_reserved() if torch.cuda.is_available() else 0,
        # times the caching allocator hit the cap, freed its cache (a device-wide sync) and tried again: a plan
        # that runs close to its cap pays this per allocation (a candidate for run 19's slow 12 GiB TI2V steps)
        alloc_retries=allocator_retries(),
        # out of memory and a leaner plan: the measured peaks and steps are partly the leaner plan's
        fallbacks=[dict(stage=e.stage, reason=e.reason[:300], summary=e.new_summary) for e in log.of(PlanSwitched)],
        ran_summary=run.plan.summary(),
    )


def run_resident_case(model: str, folder: Path, steps: int) -> dict:
    """diffusers' own pipeline, every component resident on the uncapped card: the floor lowvram is measured against."""
    import torch
    from diffusers import DiffusionPipeline, UniPCMultistepScheduler

    m = MODELS[model]
    t_load = time.perf_counter()
    pipe = DiffusionPipeline.from_pretrained(str(folder), dtype={"default": torch.bfloat16, "vae": torch.float32})
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=m["shift"])
    pipe.to("cuda")
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - t_load
    marks: list[float] = []

    def mark(_pipe, i, t, kwargs):
        torch.cuda.synchronize()
        marks.append(time.perf_counter())
        return kwargs

    kwargs = dict(prompt=PROMPT, negative_prompt="", height=m["height"], width=m["width"], num_frames=m["frames"],
                  num_inference_steps=steps, guidance_scale=m["guidance"], output_type="np",
                  generator=torch.Generator("cpu").manual_seed(0), callback_on_step_end=mark)
    if m["guidance_2"] is not None:
        kwargs["guidance_scale_2"] = m["guidance_2"]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        pipe(**kwargs)
    torch.cuda.synchronize()
    end = time.perf_counter()
    step_seconds = [b - a for a, b in zip(marks, marks[1:])]
    median = statistics.median(step_seconds)
    peak = torch.cuda.max_memory_allocated()
    return dict(kind="resident", model=model, steps=steps, load_seconds=load, total_seconds=end - t0,
                encode_seconds=marks[0] - t0 - median, decode_seconds=end - marks[-1], step_seconds=step_seconds,
                vram_max_allocated=peak, vae=vae_peaks(pipe, m))


def vae_peaks(pipe, m: dict) -> dict:
    """The VAE decode's peak allocated VRAM above its weights and input, untiled and tiled, for the job's latents
    (the planner's VAE coefficients were fitted on Wan2.1's VAE; Wan2.2's is measured here)."""
    import torch

    vae = pipe.vae
    z = torch.randn(1, vae.config.z_dim, (m["frames"] - 1) // 4 + 1, m["height"] // pipe.vae_scale_factor_spatial,
                    m["width"] // pipe.vae_scale_factor_spatial, device="cuda", dtype=vae.dtype)
    out = {}
    for tiled in (False, True):
        vae.enable_tiling() if tiled else vae.disable_tiling()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                vae.decode(z, return_dict=False)
            torch.cuda.synchronize()
            out["tiled" if tiled else "untiled"] = dict(peak_above=torch.cuda.max_memory_allocated() - base,
                                                        seconds=time.perf_counter() - t0)
        except torch.OutOfMemoryError as exc:
            out["tiled" if tiled else "untiled"] = dict(error=str(exc).splitlines()[0][:200])
    vae.disable_tiling()
    return out


# ------------------------------------------------------------------------------------ composition and report


def compose(case: dict, resident: dict, card_steps: int, boundary: Optional[float], shift: float) -> dict:
    """The card's step count end to end (encode + steps + decode), from the measured steps: each phase's median
    step (its first step left out: it pays the switch), the measured switches, encode and decode."""
    from planner.schedule import expert_steps

    high, low = expert_steps(card_steps, shift, boundary) if boundary else (card_steps, 0)
    counts = {"transformer": high, "transformer_2": low}
    ours = case["measured"]["encode"]["seconds"] + case["measured"]["decode"]["seconds"]
    per_expert = {}
    for expert, n in counts.items():
        times = [s["seconds"] for s in case["step_seconds"] if s["expert"] == expert]
        if not n:
            continue
        steady = statistics.median(times[1:] or times)
        per_expert[expert] = steady
        ours += case["switch_seconds"].get(expert, 0.0) + (times[0] if times else steady) + (n - 1) * steady
    theirs = resident["encode_seconds"] + resident["decode_seconds"] + card_steps * statistics.median(resident["step_seconds"])
    switch = case["switch_seconds"].get("transformer_2", 0.0)
    return dict(card_steps=card_steps, steps_per_expert=counts, composed_seconds=ours, resident_composed_seconds=theirs,
                ratio=ours / theirs, switch_seconds=switch, switch_share=switch / ours if ours else 0.0,
                steady_step_seconds=per_expert, resident_step_seconds=statistics.median(resident["step_seconds"]))


def peaks_vs_plan(case: dict) -> list[dict]:
    """Per stage and phase: predicted vs measured VRAM (allocated) and RAM (unreclaimable), relative error."""
    rows = []
    for p in case["predicted"]:
        m = case["measured"].get(p["key"])
        if m is None:
            continue
        rows.append(dict(stage=p["key"], vram_predicted=p["vram_bytes"], vram_measured=m["vram_bytes"],
                         ram_predicted=p["ram_bytes"], ram_measured=m["ram_bytes"],
                         vram_error=(p["vram_bytes"] - m["vram_bytes"]) / m["vram_bytes"] if m["vram_bytes"] else None,
                         ram_error=(p["ram_bytes"] - m["ram_bytes"]) / m["ram_bytes"] if m["ram_bytes"] else None))
    return rows


def render(results: dict) -> str:
    lines = [f"### Wan2.2 {results['model']} ({results['job']}), measured steps {results['steps']}, composed to {results['card_steps']}", ""]
    lines.append("| case | plan | e2e composed s | vs resident | switch s (share) | peak VRAM alloc GiB | peak RAM GiB (planned) |")
    lines.append("|---|---|---|---|---|---|---|")
    res = results["resident"]
    lines.append(f"| resident (diffusers, uncapped) | everything on the GPU | {results['resident_composed']:.1f} | x1.000 | - | "
                 f"{res['vram_max_allocated'] / GIB:.2f} | - |")
    for case in results["cases"]:
        c = case["composed"]
        peak_v = max(m["vram_bytes"] for m in case["measured"].values())
        peak_r = max(m["ram_bytes"] for k, m in case["measured"].items() if k != "load")
        planned = max(p["ram_bytes"] for p in case["predicted"] if p["key"] != "load")
        plan = case["summary"]
        if case.get("fallbacks"):  # the planned plan ran out of memory: say what finished the run
            plan += f" **-> out of memory in {case['fallbacks'][0]['stage']}, finished as:** {case['ran_summary']}"
        lines.append(f"| {case['vram_gib']:g} GiB / {case['ram_gib']:g} GiB RAM | {plan} | {c['composed_seconds']:.1f} | "
                     f"x{c['ratio']:.3f} | {c['switch_seconds']:.1f} ({100 * c['switch_share']:.1f}%) | {peak_v / GIB:.2f} | "
                     f"{peak_r / GIB:.2f} ({planned / GIB:.2f}) |")
    lines += ["", "Predicted vs measured per stage (VRAM: peak allocated; RAM: resident set minus mapped file pages):", "",
              "| case | stage | VRAM pred / meas GiB (err) | RAM pred / meas GiB (err) |", "|---|---|---|---|"]
    for case in results["cases"]:
        for r in case["peaks"]:
            ve = f"{100 * r['vram_error']:+.1f}%" if r["vram_error"] is not None else "-"
            re_ = f"{100 * r['ram_error']:+.1f}%" if r["ram_error"] is not None else "-"
            lines.append(f"| {case['vram_gib']:g}/{case['ram_gib']:g} | {r['stage']} | {r['vram_predicted'] / GIB:.2f} / "
                         f"{r['vram_measured'] / GIB:.2f} ({ve}) | {r['ram_predicted'] / GIB:.2f} / {r['ram_measured'] / GIB:.2f} ({re_}) |")
    return "\n".join(lines)


def _in_subprocess(args: list[str], log: Callable[[str], None]) -> dict:
    with_env = dict(os.environ, PYTHONUNBUFFERED="1")
    if "--resident" not in args:  # as `lowvram generate` runs (lowvram.cli.use_expandable_segments)
        with_env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    out = Path(args[args.index("--case-out") + 1])
    proc = subprocess.run([sys.executable, "-m", "lowvram", "bench", "wan22-case", *args], env=with_env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join(proc.stdout.splitlines()[-25:])
        log(f"[wan22] case {args} failed ({proc.returncode}):\n{tail}")
        return {"error": tail, "args": args}
    return json.loads(out.read_text())


def run(model: str, folder: Path, cases: list[tuple[float, float]], steps: int, out: Optional[Path],
        log: Callable[[str], None] = print, resident_json: Optional[Path] = None) -> dict:
    """`resident_json`: reuse an earlier run's resident measurement (same model and machine kind) to save device time."""
    from planner.spec import known_spec

    build_checkpoint(model, folder, log)
    work = Path(out).parent if out else Path.cwd()
    m = MODELS[model]
    if resident_json is not None:
        resident = json.loads(Path(resident_json).read_text())
        resident["reused_from"] = str(resident_json)
    else:
        resident = _in_subprocess(["--model", model, "--folder", str(folder), "--steps", str(steps), "--resident",
                                   "--case-out", str(work / f"{model}-resident.json")], log)
    log(f"[wan22] resident: {json.dumps({k: v for k, v in resident.items() if k != 'step_seconds'})[:400]}")
    spec = known_spec("wan2.2-t2v-a14b" if model == "a14b" else "wan2.2-ti2v-5b")
    results = dict(model=model, job=f"{m['width']}x{m['height']}x{m['frames']}", steps=steps, card_steps=m["card_steps"],
                   resident=resident, cases=[])
    if "error" not in resident:
        results["resident_composed"] = (resident["encode_seconds"] + resident["decode_seconds"]
                                        + m["card_steps"] * statistics.median(resident["step_seconds"]))
    for vram, ram in cases:
        case = _in_subprocess(["--model", model, "--folder", str(folder), "--steps", str(steps), "--vram", str(vram),
                               "--ram", str(ram), "--case-out", str(work / f"{model}-{vram:g}-{ram:g}.json")], log)
        if "error" not in case and "error" not in resident:
            case["composed"] = compose(case, resident, m["card_steps"], spec.boundary_ratio, m["shift"])
            case["peaks"] = peaks_vs_plan(case)
            log(f"[wan22] {vram:g}/{ram:g}: x{case['composed']['ratio']:.3f}, {case['summary']}")
        results["cases"].append(case)
    if out:
        Path(out).write_text(json.dumps(results, indent=1, default=str))
    if "error" not in resident and all("error" not in c for c in results["cases"]):
        print(render(results))
    return results
