"""Two GPUs (issue 19's targets), random weights in the real shapes built on the GPUs:

- cp720:  Wan2.1 14B at 720p, 81 frames: one transformer forward on one GPU (eager bf16) vs split over both GPUs
          with diffusers' context parallel (ulysses, one process per GPU), the outputs compared; `--compile` adds
          lowvram's regional compile (lowvram.placement.compile, as `lowvram generate` runs it; run 20 and before
          used diffusers' compile_repeated_blocks) to the context-parallel run, `--fast` a fast level. Target: the
          two-GPU step <= 0.45 of the one-GPU eager step (a step is two forwards, cond and uncond: the ratio is
          the forward's).
- split480: 14B at 480p under 12 GiB caps: the planner's best two-GPU plan vs its best one-GPU plan, each run
          through lowvram's placement (bf16 only: quantizing 14 B params at load takes minutes). Target: faster.
- a14b:   Wan2.2 A14B at 480p, one expert per 24 GiB GPU: an expert's forward as the planner places it on its
          own (capped) card, with the activations coming from and going back to the first card, vs the same
          expert resident on the uncapped card (both experts resident on one large GPU run at that speed).
          End to end is composed: the model card's 40 steps split at the boundary, times two forwards a step,
          plus the planner's encode and decode (the same on both sides). Target: within x1.05.
- smoke:  the demo models on two GPUs in about a minute and a half: context parallel (ulysses) in two processes,
          a layer split and one expert per GPU in one process, each against the one-GPU latents; ring attention on a
          small transformer of its own (cuDNN's kernel wants a head size the demo does not have); `lowvram generate`
          with the ulysses plan through the real launcher (torch.distributed.run, NCCL).

Few forwards are measured (default: 1 warm-up, 2 timed; 720p: 1 timed); steps and runs are composed from their
median, and the JSON says so. Every part runs in its own processes, so one part's memory does not count in the
next's. The same functions run on the CPU with tiny shapes (tests/test_bench_multigpu.py).

    python -m lowvram bench multigpu --out multigpu.json            # cp720, split480, a14b
    python -m lowvram bench multigpu --smoke --out smoke.json
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional

GIB = 1024**3
PARTS = ("cp720", "split480", "a14b")
RESOLUTIONS = {"480p": (480, 832, 81), "720p": (720, 1280, 81)}
TARGETS = {"cp720": 0.45, "split480": 1.0, "a14b": 1.05}  # two-GPU time over the one-GPU time


@dataclass(frozen=True)
class Setup:
    """Where and what a part runs: CUDA GPUs with the real 14B, or CPU processes with a tiny config (tests)."""

    device: str = "cuda"  # "cuda" or "cpu"
    config: Optional[dict] = None  # a WanTransformer3DModel config; None: the real Wan2.1 14B
    resolution: tuple[int, int, int] = RESOLUTIONS["480p"]
    warmup: int = 1
    iters: int = 2
    compile: bool = False
    isolate: bool = True  # one-process parts in a process of their own (GPU memory); the CPU tests run them here
    parallel: str = ""  # cp part: ulysses or ring ("" picks as the planner does, by the heads)
    fast: str = ""  # cp part: also a fast level (fp8_fast) with regional compile under context parallel

    def dev(self, index: int) -> str:
        return f"cuda:{index}" if self.device == "cuda" else "cpu"


# ------------------------------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_model(setup: Setup, device: str):
    """The transformer with random weights (seed 0: the same weights on every GPU), eval, no grads."""
    import torch

    from lowvram.bench.build import build_transformer

    dtype = torch.bfloat16 if setup.device == "cuda" else torch.float32
    return build_transformer("14b", device=device, dtype=dtype, seed=0, config=setup.config)


def model_inputs(setup: Setup, model, device: str) -> dict:
    import torch

    from lowvram.bench.build import transformer_inputs

    h, w, f = setup.resolution
    dtype = torch.bfloat16 if setup.device == "cuda" else torch.float32
    inputs = transformer_inputs(h, w, f, device=device, dtype=dtype, text_dim=model.config.text_dim,
                                in_channels=model.config.in_channels)
    return inputs.kwargs()


def tokens_of(setup: Setup, model) -> int:
    from lowvram.sampling.runner import latent_tokens

    h, w, f = setup.resolution
    return latent_tokens((1, 16, (f - 1) // 4 + 1, h // 8, w // 8), model.config.patch_size)


def _sync(setup: Setup) -> None:
    import torch

    if setup.device == "cuda":
        for i in range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)


def time_forwards(setup: Setup, forward: Callable[[], Any], iters: Optional[int] = None) -> tuple[float, list, Any]:
    """(median seconds, all timed seconds, the last output) after the warm-up forwards."""
    import torch

    out = None
    with torch.no_grad():
        for _ in range(setup.warmup):
            out = forward()
        times = []
        for _ in range(iters or setup.iters):
            _sync(setup)
            t0 = time.perf_counter()
            out = forward()
            _sync(setup)
            times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def compare(out, ref) -> dict:
    """How far an output is from the reference: max |diff| and the relative L2 error (float32)."""
    a, b = out.detach().float().cpu(), ref.detach().float().cpu()
    return {"max_abs_diff": float((a - b).abs().max()), "relative_l2": float((a - b).norm() / b.norm().clamp_min(1e-12))}


def cap(setup: Setup, gib: Optional[float], index: int) -> None:
    """Cap a GPU's caching allocator (the budget of a smaller card); nothing on the CPU."""
    import torch

    if setup.device != "cuda" or gib is None:
        return
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * GIB / total), index)


def peaks(setup: Setup) -> dict:
    import torch

    if setup.device != "cuda":
        return {}
    return {f"cuda:{i}": torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())}


def spawn(fn: Callable, setup: Setup, processes: int, *args) -> dict:
    """Run fn(rank, processes, setup, port, result_path, *args) in `processes` processes; rank 0's result."""
    import torch.multiprocessing as mp

    if processes == 1 and not setup.isolate:
        return json.loads(json.dumps(fn(0, 1, setup, *args), default=str))
    with tempfile.TemporaryDirectory(prefix="lowvram-bench-") as folder:
        result = Path(folder) / "result.json"
        mp.spawn(_entry, args=(fn, processes, setup, free_port(), str(result), args), nprocs=processes, join=True)
        return json.loads(result.read_text())


def _entry(rank: int, fn: Callable, processes: int, setup: Setup, port: int, result: str, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(processes),
                      LOCAL_RANK=str(rank))
    from lowvram.parallel import group

    if processes > 1:
        group.setup(setup.device)
    try:
        data = fn(rank, processes, setup, *args)
        if rank == 0:
            Path(result).write_text(json.dumps(data, default=str))
    finally:
        group.teardown()


def apply_plan(setup: Setup, plan, model, name: str, tokens: int) -> SimpleNamespace:
    """Place `model` as denoiser `name` per `plan`, through lowvram's placement (the runner's own path); a
    context-parallel plan gets diffusers' hooks as the runner adds them."""
    from lowvram import placement
    from lowvram.parallel.group import enable_context_parallel

    pipe = SimpleNamespace(**{name: model})
    placement.prepare(pipe, plan)
    placement.enter_stage(pipe, plan, "denoise", phase=name)
    if plan.parallel:
        enable_context_parallel(model, plan, tokens)
    return pipe


def run_placed(setup: Setup, plan, model, name: str, inputs: dict) -> tuple[float, list, Any]:
    from lowvram import placement
    from lowvram.placement.devices import current_device

    pipe = apply_plan(setup, plan, model, name, tokens_of(setup, model))
    try:
        with current_device(placement.component_device(plan, name)):
            iters = 1 if setup.resolution == RESOLUTIONS["720p"] else None
            return time_forwards(setup, lambda: model(**inputs)[0], iters)
    finally:
        placement.leave_all(pipe)


# ------------------------------------------------------------------------------------------ cp720


def _cp_part(rank: int, processes: int, setup: Setup) -> dict:
    import torch

    from lowvram.parallel import group
    from lowvram.parallel.group import enable_context_parallel
    from planner.plan import Plan

    device = setup.dev(rank)
    if setup.device == "cuda":
        torch.cuda.set_device(rank)
    t0 = time.perf_counter()
    model = build_model(setup, device)
    inputs = model_inputs(setup, model, device)
    data: dict = {"build_seconds": time.perf_counter() - t0, "tokens": tokens_of(setup, model)}
    iters = 1 if setup.resolution == RESOLUTIONS["720p"] else None
    reference = None
    if rank == 0:  # one GPU, eager: the others wait
        one, times, reference = time_forwards(setup, lambda: model(**inputs)[0], iters)
        data["one_gpu"] = {"forward_seconds": one, "times": times, "peaks": peaks(setup)}
        _say(f"[cp720] one GPU, eager: {one:.3f} s per forward")
    group.barrier()
    kind = setup.parallel or ("ulysses" if model.config.num_attention_heads % processes == 0 else "ring")
    plan = Plan(device="cuda" if setup.device == "cuda" else "cpu", parallel=kind, parallel_gpus=processes)
    enable_context_parallel(model, plan, data["tokens"])
    two, times, out = time_forwards(setup, lambda: model(**inputs)[0], iters)
    data["context_parallel"] = {"kind": kind, "forward_seconds": two, "times": times, "peaks": peaks(setup)}
    if rank == 0:
        data["context_parallel"]["vs_one_gpu"] = compare(out, reference)
        data["ratio"] = two / data["one_gpu"]["forward_seconds"]
        _say(f"[cp720] {kind} on {processes}, eager: {two:.3f} s (x{data['ratio']:.3f})")
    if setup.compile:
        data["context_parallel_compiled"] = _compiled_run(setup, lambda: model, inputs, reference, iters, "bf16")
    if setup.fast:
        fast = lambda: _fast_model(setup, device, plan, data["tokens"])  # noqa: E731
        data["context_parallel_fast"] = {"level": setup.fast, **_compiled_run(setup, fast, inputs, reference, iters, setup.fast)}
    for part, ratio in (("context_parallel_compiled", "ratio_compiled"), ("context_parallel_fast", "ratio_fast")):
        if rank == 0 and "forward_seconds" in data.get(part, {}):
            data[ratio] = data[part]["forward_seconds"] / data["one_gpu"]["forward_seconds"]
            _say(f"[cp720] {part}: {data[part]['forward_seconds']:.3f} s (x{data[ratio]:.3f})")
    return data


def _say(line: str) -> None:
    """Progress from the first process as it is measured: a call cut short keeps it in the log (run 19's cp720
    part ended at its time limit with nothing: its results came back only at the end)."""
    print(line, flush=True)


def _compiled_run(setup: Setup, make_model: Callable, inputs: dict, reference, iters, precision: str) -> dict:
    """Regional compile of make_model()'s transformer (context parallel already on), timed after its warm-up, with
    its output against one GPU's (`reference`, on the first process). An error is a result: diffusers 0.42 warns
    that compile and context parallel may not mix, and a fast level may not run on this device."""
    from lowvram.placement.compile import apply_compile

    t1 = time.perf_counter()
    try:
        model = make_model()
        apply_compile(model, True, precision)  # as the runtime compiles: each block's forward, beneath the CP hooks
        seconds, times, out = time_forwards(replace(setup, warmup=max(2, setup.warmup)), lambda: model(**inputs)[0], iters)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    result = {"forward_seconds": seconds, "times": times, "compile_and_warmup_seconds": time.perf_counter() - t1 - sum(times)}
    if reference is not None:
        result["vs_one_gpu"] = compare(out, reference)
    return result


def _fast_model(setup: Setup, device: str, plan, tokens: int):
    """The same weights again (seed 0), their blocks' matmuls at `setup.fast` (lowvram's fast_quant), context
    parallel on: issue 13's fastest path under issue 19's."""
    import torch

    from lowvram.parallel.group import enable_context_parallel
    from lowvram.placement.fast_quant import quantize_fast

    if setup.device == "cuda":
        torch.cuda.empty_cache()
    model = build_model(setup, device)
    quantize_fast(model, setup.fast, setup.device)
    enable_context_parallel(model, plan, tokens)
    return model


def run_cp(setup: Setup) -> dict:
    data = spawn(_cp_part, setup, 2)
    data.update(part="cp720", target=TARGETS["cp720"], resolution=list(setup.resolution),
                note="one forward measured after one warm-up (720p); a step is two forwards (cond, uncond) of the same "
                     "shape, so the step ratio is the forward ratio")
    return data


# ------------------------------------------------------------------------------------------ plans from the planner


def planner_probe(setup: Setup, caps: tuple[float, ...], ram_gib: float):
    """A what-if probe of this machine's GPUs at these caps (their name and compute capability decide the speed)."""
    import torch

    from planner.probe import synthetic_probe, with_gpus

    name = torch.cuda.get_device_name(0) if setup.device == "cuda" else "NVIDIA H200"
    cc = tuple(torch.cuda.get_device_capability(0)) if setup.device == "cuda" else (9, 0)
    return with_gpus(synthetic_probe(caps[0], ram_gib, gpu_name=name, compute_capability=cc), caps)


def bf16_plans(model: str, resolution: tuple[int, int, int], probe, context_parallel: bool = True):
    """The planner's chosen plan for the job on `probe`, bf16 weights only."""
    from lowvram.job import Job
    from planner.choose import Preferences, make_plan
    from planner.spec import known_spec

    h, w, f = resolution
    job = Job(prompt="bench", model=model, width=w, height=h, frames=f)
    return make_plan(probe, known_spec(model), job, Preferences(min_quant="bf16", context_parallel=context_parallel))


def on_cpu(plan):
    """A planner plan for the CPU tests: the same placements, devices cuda:N -> cpu:N."""
    from planner.plan import Plan, plain

    components = [replace(c, devices=tuple(d.replace("cuda", "cpu") for d in c.devices), compute_dtype="float32",
                          precision="fp32" if c.precision == "bf16" else c.precision) for c in plan.components]
    return Plan("cpu", plain(components), parallel=plan.parallel, parallel_gpus=plan.parallel_gpus)


# ------------------------------------------------------------------------------------------ split480


def _plan_part(rank: int, processes: int, setup: Setup, plan_data: dict, caps: tuple, name: str) -> dict:
    """Measure one plan's denoiser forward (in each of its processes)."""
    import torch

    from planner.plan import Plan

    # as `lowvram generate` runs (lowvram.cli.use_expandable_segments): streamed weights fragment the default
    # allocator (run 16: out of memory at 9.9 GiB allocated under the 12 GiB cap, 1.6 GiB reserved but unusable)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    plan = Plan.from_dict(plan_data)
    if setup.device == "cuda":
        torch.cuda.set_device(rank)
    home = setup.dev(rank)
    t0 = time.perf_counter()
    model = build_model(setup, home)  # random weights made on the (not yet capped) GPU: fast
    inputs = model_inputs(setup, model, home)
    cp = plan.component(name)
    if cp.placement != "resident" or cp.devices:
        model.to("cpu")  # streamed, or split over cards: lowvram's placement puts it where the plan says
    if setup.device == "cuda":
        torch.cuda.empty_cache()
        for i in [rank] if plan.parallel else range(len(caps)):  # the caps, on the GPUs this process uses
            cap(setup, caps[i], i)
        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)
    build = time.perf_counter() - t0
    seconds, times, out = run_placed(setup, plan, model, name, inputs)
    return {"forward_seconds": seconds, "times": times, "build_seconds": build, "peaks": peaks(setup),
            "plan": plan.summary(), "predicted_peak_vram_per_gpu": list(plan.peak_vram_per_gpu),
            "output_norm": float(out.float().norm())}


def measure_plan(setup: Setup, plan, caps: tuple, name: str = "transformer") -> dict:
    processes = plan.parallel_gpus if plan.parallel else 1
    return spawn(_plan_part, setup, processes, plan.to_dict(), caps, name)


def run_split(setup: Setup, caps_gib: float = 12.0, ram_gib: float = 128.0, plans: Optional[tuple] = None) -> dict:
    """The best two-GPU plan at two caps vs the best one-GPU plan at one (or the given (one, two) plans)."""
    if plans is None:
        one = bf16_plans("wan2.1-t2v-14b", setup.resolution, planner_probe(setup, (caps_gib,), ram_gib)).plan
        two = bf16_plans("wan2.1-t2v-14b", setup.resolution, planner_probe(setup, (caps_gib, caps_gib), ram_gib)).plan
    else:
        one, two = plans
    data = {"part": "split480", "target": TARGETS["split480"], "caps_gib": caps_gib, "resolution": list(setup.resolution),
            "note": "bf16 plans (quantizing at load would take minutes of device time); forwards of the denoiser as "
                    "placed, after one warm-up",
            "one_gpu": {**measure_plan(setup, one, (caps_gib,)), "predicted_seconds": _denoise_forward(one)},
            "two_gpus": {**measure_plan(setup, two, (caps_gib, caps_gib)), "predicted_seconds": _denoise_forward(two)}}
    data["ratio"] = data["two_gpus"]["forward_seconds"] / data["one_gpu"]["forward_seconds"]
    return data


def _denoise_forward(plan) -> Optional[float]:
    return sum(s.seconds for s in plan.predicted if s.stage == "denoise") or None


# ------------------------------------------------------------------------------------------ a14b


def _a14b_part(rank: int, processes: int, setup: Setup, plan_data: dict, cap_gib: float) -> dict:
    import torch

    from planner.plan import Plan

    plan = Plan.from_dict(plan_data)
    home = setup.dev(0)
    model = build_model(setup, home)
    inputs = model_inputs(setup, model, home)
    resident, times, reference = time_forwards(setup, lambda: model(**inputs)[0])
    out: dict = {"resident_forward_seconds": resident, "resident_times": times}
    # the low-noise expert as the plan places it: on its own capped card, its inputs from the first card
    model.to("cpu")
    if setup.device == "cuda":
        torch.cuda.empty_cache()
        cap(setup, cap_gib, 1)
        torch.cuda.reset_peak_memory_stats(1)
    seconds, times, result = run_placed(setup, plan, model, "transformer_2", inputs)
    out.update(apart_forward_seconds=seconds, apart_times=times, peaks=peaks(setup), plan=plan.summary(),
               output_on=str(result.device), vs_resident=compare(result, reference))
    return out


def run_a14b(setup: Setup, cap_gib: float = 24.0, ram_gib: float = 128.0, plan=None) -> dict:
    from lowvram.job import Job
    from planner.estimate import passes_for, phase_steps
    from planner.spec import known_spec

    if plan is None:  # the planner's best one-expert-per-GPU plan (chosen or not: that is what is measured)
        result = bf16_plans("wan2.2-t2v-a14b", setup.resolution, planner_probe(setup, (cap_gib, cap_gib), ram_gib),
                            context_parallel=False)
        apart = [c for c in result.candidates if c.fits and c.plan.experts_apart]
        plan = min(apart, key=lambda c: c.plan.predicted_seconds).plan
    measured = spawn(_a14b_part, setup, 1, plan.to_dict(), cap_gib)
    h, w, f = setup.resolution
    job = Job(prompt="bench", model="wan2.2-t2v-a14b", width=w, height=h, frames=f, steps=40, guidance=4.0, guidance_2=3.0)
    steps = phase_steps(known_spec("wan2.2-t2v-a14b"), job)
    calls = sum(n * passes_for(4.0) for n in steps.values())
    fixed = sum(s.seconds for s in plan.predicted if s.stage in ("encode", "decode"))
    resident = calls * measured["resident_forward_seconds"] + fixed
    apart = calls * measured["apart_forward_seconds"] + fixed
    return {"part": "a14b", "target": TARGETS["a14b"], "cap_gib": cap_gib, "resolution": list(setup.resolution),
            "steps": steps, "transformer_calls": calls, "encode_decode_seconds_predicted": fixed,
            "resident_end_to_end_seconds": resident, "apart_end_to_end_seconds": apart, "ratio": apart / resident,
            "measured": measured, "plan": plan.summary(),
            "note": "end to end composed: 40 steps (split at the boundary) x 2 forwards at each side's measured forward, "
                    "plus the planner's encode and decode (the same on both sides); the low-noise expert's copy to its "
                    "card overlaps the high-noise phase (not measured here); one expert's random weights stand for both"}


# ------------------------------------------------------------------------------------------ smoke


def _smoke_cp(rank: int, processes: int, setup: Setup, plan_data: dict, job_data: dict) -> dict:
    from lowvram.sampling.resume import job_from_dict
    from lowvram.sampling.runner import generate
    from planner.plan import Plan

    import torch

    if setup.device == "cuda":
        torch.cuda.set_device(rank)
    result = generate(job_from_dict(job_data), Plan.from_dict(plan_data))  # the first process writes
    return {"latents": result.latents.tolist(), "video": str(result.video_path)}


# ring attention runs cuDNN's kernel, which wants a head size that is a multiple of 8 (the demo's is 12): the ring
# smoke runs a small transformer of its own, forward against forward
RING_SMOKE = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=64, in_channels=16, out_channels=16,
                  text_dim=32, freq_dim=256, ffn_dim=256, num_layers=2, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)


def smoke_plans(device: str) -> dict:
    """The demo's plans on two devices: one GPU, ulysses, a layer split."""
    from planner.plan import ComponentPlan, Plan

    gpu = device == "cuda"

    def plan(precision: str = "fp32", **fields) -> Plan:
        dtype = "" if gpu else "float32"
        where = "gpu" if gpu else "cpu"
        comps = (ComponentPlan("text_encoder", precision, where, compute_dtype=dtype),
                 ComponentPlan("transformer", precision, "resident", compute_dtype=dtype, devices=fields.pop("devices", ()),
                               split=fields.pop("split", ())),
                 ComponentPlan("vae", "fp32", where))
        return Plan("cuda" if gpu else "cpu", comps, **fields)

    d0, d1 = ("cuda:0", "cuda:1") if gpu else ("cpu:0", "cpu:1")
    return {"one": plan(), "ulysses": plan(parallel="ulysses", parallel_gpus=2), "split": plan(devices=(d0, d1), split=(1,))}


def run_smoke(setup: Setup, folder: Path) -> dict:
    """The demo models on two devices against one: latents compared (fp32 exact-ish, bf16 ring within bf16)."""
    import torch

    from lowvram.job import Job
    from lowvram.sampling.runner import generate
    from planner.plan import plain

    plans = smoke_plans(setup.device)
    folder.mkdir(parents=True, exist_ok=True)
    job = Job(prompt="a cat walks in the city", model="tiny-random", width=64, height=64, frames=5, steps=3, seed=3)
    latents, out = {}, {"part": "smoke"}

    def run(name: str, plan, model_job=job) -> None:
        t0 = time.perf_counter()
        try:
            the_job = model_job.with_(out=str(folder / f"{name}.mp4"))
            if plan.parallel:
                got = spawn(_smoke_cp, setup, 2, plan.to_dict(), the_job.to_dict())
                latents[name] = torch.tensor(got["latents"])
            else:
                latents[name] = generate(the_job, plan).latents
            out[name] = {"seconds": time.perf_counter() - t0, "plan": plan.summary()}
        except Exception as exc:
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}

    for name, plan in plans.items():
        run(name, plan)
    one = plans["one"]
    first = replace(one.component("transformer"), devices=(setup.dev(0) if setup.device == "cuda" else "cpu:0",))
    second = replace(first, name="transformer_2", devices=(setup.dev(1) if setup.device == "cuda" else "cpu:1",))
    a14b = Job(prompt="a cat", model="tiny-random-a14b", width=64, height=64, frames=5, steps=4, seed=3)
    run("a14b_one", one, a14b)
    run("a14b_apart", replace(one, components=plain([c for c in one.components if c.role != "denoiser"] + [first, second])), a14b)
    pairs = {"ulysses": "one", "split": "one", "a14b_apart": "a14b_one"}
    for name, ref in pairs.items():
        if name in latents and ref in latents:
            out[name]["vs_one_gpu"] = compare(latents[name], latents[ref])
            out[name]["bit_equal"] = bool(torch.equal(latents[name].cpu(), latents[ref].cpu()))
    if setup.device == "cuda":
        out["ring"] = _smoke_ring(setup)
        out["cli"] = _smoke_cli(plans["ulysses"], job, folder, latents.get("ulysses"))
    out["ok"] = all("error" not in v for v in out.values() if isinstance(v, dict))
    return out


def _smoke_ring(setup: Setup) -> dict:
    """Ring attention (cuDNN, bf16) in two processes against one GPU, a forward of a small transformer."""
    t0 = time.perf_counter()
    try:
        ring = replace(setup, config=RING_SMOKE, resolution=(64, 64, 5), parallel="ring", compile=False, warmup=1, iters=1)
        data = spawn(_cp_part, ring, 2)
        return {"seconds": time.perf_counter() - t0, "vs_one_gpu": data["context_parallel"]["vs_one_gpu"],
                "bit_equal": data["context_parallel"]["vs_one_gpu"]["max_abs_diff"] == 0.0}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}


def _smoke_cli(plan, job, folder: Path, reference) -> dict:
    """`lowvram generate --force-plan` with the ulysses plan: the launcher, torch.distributed.run, NCCL, the first
    process writing; its sidecar's latents hash against the same plan's run in spawned processes (ulysses is not
    bit-equal to one GPU: that comparison is the ulysses row's)."""
    import subprocess
    import sys

    from lowvram.io.sidecar import latents_record

    t0 = time.perf_counter()
    plan_path, video = folder / "cli-plan.json", folder / "cli.mp4"
    plan_path.write_text(json.dumps(plan.to_dict()))
    args = [sys.executable, "-m", "lowvram", "generate", job.prompt, "--model", job.model, "--width", str(job.width),
            "--height", str(job.height), "--frames", str(job.frames), "--steps", str(job.steps), "--seed", str(job.seed),
            "--force-plan", str(plan_path), "--out", str(video), "--quiet"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-400:]}"}
    sidecar = json.loads(video.with_suffix(".json").read_text())
    same = reference is not None and sidecar["latents"]["sha256"] == latents_record(reference)["sha256"]
    return {"seconds": time.perf_counter() - t0, "processes": len(sidecar.get("processes", [])), "bit_equal": same,
            "videos": sorted(p.name for p in folder.glob("cli*.mp4"))}


# ------------------------------------------------------------------------------------------ report


def table(data: dict) -> str:
    """The results as a short markdown table (one row per part)."""
    rows = ["| part | one GPU | two GPUs | ratio | target | output vs one GPU |", "|---|---|---|---|---|---|"]

    def row(*cells: str) -> None:
        rows.append("| " + " | ".join(cells + ("",) * (6 - len(cells))) + " |")

    def l2(d: dict) -> str:
        return f"rel. L2 {d['relative_l2']:.1e}"

    for part in PARTS:
        if "error" in data.get(part, {}):
            row(part, f"error: {data[part]['error'][:100]}")
    cp = data.get("cp720")
    if cp and "error" not in cp:
        target = f"<= x{cp['target']}"
        row("14B 720p, context parallel (eager)", f"{cp['one_gpu']['forward_seconds']:.2f} s/forward",
            f"{cp['context_parallel']['forward_seconds']:.2f} s", f"x{cp['ratio']:.3f}", target,
            l2(cp["context_parallel"]["vs_one_gpu"]))
        compiled = cp.get("context_parallel_compiled", {})
        if "forward_seconds" in compiled:
            row("14B 720p, context parallel + regional compile", "", f"{compiled['forward_seconds']:.2f} s",
                f"x{cp['ratio_compiled']:.3f}", target, l2(compiled["vs_one_gpu"]))
        elif compiled:
            row("14B 720p, context parallel + regional compile", "", compiled["error"][:60])
        fast = cp.get("context_parallel_fast", {})
        label = f"14B 720p, context parallel + {fast.get('level', '')} + regional compile"
        if "forward_seconds" in fast:
            row(label, "", f"{fast['forward_seconds']:.2f} s", f"x{cp['ratio_fast']:.3f}", target, l2(fast["vs_one_gpu"]))
        elif fast:
            row(label, "", fast["error"][:60])
    sp = data.get("split480")
    if sp and "error" not in sp:
        one, two = sp["one_gpu"], sp["two_gpus"]
        row(f"14B 480p, {sp['caps_gib']:g} GiB caps", f"{one['forward_seconds']:.2f} s/forward ({one['plan'][:40]})",
            f"{two['forward_seconds']:.2f} s ({two['plan'][:40]})", f"x{sp['ratio']:.3f}", "< x1")
    a = data.get("a14b")
    if a and "error" not in a:
        row(f"A14B 480p e2e, one expert per {a['cap_gib']:g} GiB GPU", f"{a['resident_end_to_end_seconds']:.0f} s (both resident)",
            f"{a['apart_end_to_end_seconds']:.0f} s", f"x{a['ratio']:.3f}", f"<= x{a['target']}", l2(a["measured"]["vs_resident"]))
    for name, v in ((n, data.get("smoke", {}).get(n)) for n in ("ulysses", "ring", "split", "a14b_apart", "cli")):
        if v:
            same = "bit-equal" if v.get("bit_equal") else str(v.get("vs_one_gpu", {}).get("max_abs_diff", "-"))
            row(f"smoke {name}", "", v.get("error", "%.1f s" % v.get("seconds", 0))[:60], "", "", same)
    return "\n".join(rows) + "\n"


def run(parts: tuple[str, ...], out: Optional[Path], setup: Setup = Setup(), smoke: bool = False,
        log: Callable[[str], None] = print) -> dict:
    from lowvram.bench.matrix import environment

    data: dict = {"kind": "multigpu", "environment": environment(), "setup": asdict(setup)}

    def save() -> None:
        if out:
            Path(out).write_text(json.dumps(data, indent=1, default=str))

    if smoke:
        log("[multigpu] smoke: demo models on two devices")
        data["smoke"] = run_smoke(setup, Path(out).parent / "smoke-videos" if out else Path(tempfile.mkdtemp()))
        save()
    for part in parts:
        log(f"[multigpu] {part} ...")
        t0 = time.perf_counter()
        try:
            if part == "cp720":
                data[part] = run_cp(replace(setup, resolution=RESOLUTIONS["720p"]) if setup.config is None else setup)
            elif part == "split480":
                data[part] = run_split(setup)
            elif part == "a14b":
                data[part] = run_a14b(setup)
            else:
                raise ValueError(f"unknown part {part!r}; use {', '.join(PARTS)}")
        except Exception as exc:  # a part that fails (out of memory) is a result; the next part runs
            # a spawned process's error carries its traceback in the message: its end says what failed
            data[part] = {"error": f"{type(exc).__name__}: {str(exc)[-1500:]}"}
            log(f"[multigpu] {part} failed: {exc}")
        data.setdefault(part, {})["wall_seconds"] = time.perf_counter() - t0
        log(f"[multigpu] {part} done in {data[part]['wall_seconds']:.0f}s")
        save()
    return data


__all__ = ["PARTS", "Setup", "compare", "run", "run_a14b", "run_cp", "run_smoke", "run_split", "smoke_plans", "table"]
