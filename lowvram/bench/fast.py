"""`lowvram bench fast`: issue 13's table in one process: compile and fp8/int8 matmuls against eager bf16.

Random weights in the real Wan2.1 shapes, built on the GPU. Every ratio is a step (one transformer forward) over
the eager bf16 all-on-GPU step measured in the same process; budgets are simulated with
`torch.cuda.set_per_process_memory_fraction`. Per model, in this order (GPU time is the constraint):

1. the eager bf16 floor at 480p, then the same model compiled (regional compile: lowvram.placement.compile), cold,
   then once more after dynamo forgot it (a warm compile: inductor's FX graph cache has it);
2. the same weights quantized to fp8_fast as a first run does (from the CPU, block by block on the GPU: timed for
   the end-to-end row), compiled (speed and per-forward error against the floor's
   output), then once more after dynamo forgot it (its warm compile: a second run's, for the end-to-end row); int8_fast's per-forward error from one eager forward, and its speed from a compiled FFN of the
   14B's sides against bf16 (lowvram.calibrate.ffn_levels: the planner's FAST_LINEAR_FACTOR; the largest
   matmuls are where int8 gains most). int8_fast enters the planner only if that FFN runs faster than bf16;
3. at each budget, the planner's plan and its bf16-only plan (--min-precision bf16), placed by lowvram.placement
   on fresh modules over host copies of the bf16 and fp8 weights (no quantizing on the CPU), compiled graphs
   reused from step 1-2 (same shapes: no new compile);
4. the upstream recipes once (their placement does not depend on the budget): diffusers block-level and
   leaf-level group offload with streams, each also with diffusers' `compile_repeated_blocks()` (leaf + compile
   on the models in `leaf_compile_models` only: REFERENCE.md measured no gain, and on the 14B its recompiles
   cost a minute of GPU time);
5. 720p (the 14B): the floor and both plans at 24 GiB.

End to end, 14B at 24 GiB, 50 steps with CFG, is composed from the measured steps: 100 forwards, plus the
measured compile warm-up (the first forward's extra time), plus the planner's encode and decode times, which
are the same on both sides and only dilute the ratio. Predicted step times come from planner.estimate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from lowvram.bench.build import HostCopy, build_transformer, param_bytes, transformer_inputs, transformer_on_meta
from lowvram.bench.measure import CaseResult, Recipe, clean_cuda, profile_lines, run_case
from lowvram.bench.recipes import BenchPipe, _Holder, bench_job, bench_probe, group_offload
from lowvram.bench.shapes import MODEL_NAMES, RESOLUTIONS, TRANSFORMERS, tokens

# issue 13's table: (model, resolution, budget GiB) -> the target ratio of lowvram's plan to the eager bf16 step
FAST_TARGETS: dict[tuple[str, str, float], float] = {
    ("14b", "480p", 24): 0.75,
    ("14b", "480p", 12): 0.85,
    ("14b", "720p", 24): 0.85,
    ("1.3b", "480p", 8): 0.80,
    ("1.3b", "480p", 4): 0.90,
}
BF16_ONLY_TARGET = 0.95
E2E_TARGET = 0.85
E2E_CASE = ("14b", "480p", 24)
E2E_STEPS = 50
STEP_PREDICTION_TOLERANCE = 0.15
FAST_LEVELS = ("fp8_fast", "int8_fast")
UPSTREAM = ("block_stream", "leaf_stream", "block_stream_compile", "leaf_stream_compile")


@dataclass
class FastSetup:
    """What to run. Defaults: the issue's table on this GPU. Tests pass tiny configs, the CPU and forced plans."""

    models: tuple[str, ...] = ("14b", "1.3b")
    configs: dict = field(default_factory=dict)  # model -> WanTransformer3DModel config (default: the real one)
    cases: tuple[tuple[str, str, float], ...] = tuple(FAST_TARGETS)
    levels: tuple[str, ...] = FAST_LEVELS
    device: str = "cuda"
    ram_gib: float = 64.0
    warmup: int = 1
    iters: dict = field(default_factory=lambda: {"14b": 1, "1.3b": 3})
    floor_iters: dict = field(default_factory=lambda: {"14b": 2, "1.3b": 3})
    upstream: tuple[str, ...] = UPSTREAM
    leaf_compile_models: tuple[str, ...] = ("1.3b",)
    ffn_models: tuple[str, ...] = ("14b",)  # the FFN speed measurement, on these models' sides
    ffn_levels: tuple[str, ...] = ("int8_fast",)  # fp8's speed is measured on the whole model already
    # (model, resolution, budget, prefs name) -> Plan; default: the planner on a probe of this GPU
    plan_fn: Optional[Callable[..., Any]] = None
    text_tokens: int = 512
    text_dim: int = 4096
    shapes: dict = field(default_factory=lambda: dict(RESOLUTIONS))
    # False: the table's cases only (no warm-compile run, no error of the other levels or quanto fp8, no FFN
    # factors): for a second process on another GPU while the first measures those
    extras: bool = True
    kinds: tuple[str, ...] = ("planner", "bf16_only")  # which plans per row
    profile_first: tuple[str, ...] = ()  # kinds whose first forward is profiled (cProfile rows in the case's extra)


def second_run_spec(model: str):
    """The model's spec as a user's second video sees it: its quantized weights are in lowvram's cache (the
    first run quantized them), so planning counts no quantizing time."""
    from dataclasses import replace

    from lowvram.models.specs import spec_for_model

    spec = spec_for_model(MODEL_NAMES[model])
    return replace(spec, quantized_cached=tuple((d.name, level) for d in spec.denoisers for level in FAST_LEVELS))


def _planner_plan(model: str, resolution: str, budget: float, prefs_name: str, ram_gib: float):
    """The planner's plan on a probe of this GPU with the budget as its VRAM, for a second video of the job: the
    quantized weights cached (second_run_spec), and the compile records of this machine counting, as they do
    for `lowvram generate` here (steps 1-2 compiled these shapes in this process: a warm compile)."""
    from lowvram.placement.compile_records import warm_compiles
    from planner.choose import Preferences, make_plan

    prefs = Preferences(min_quant="bf16") if prefs_name == "bf16_only" else Preferences()
    job = bench_job(model, resolution)
    probe = bench_probe(budget, ram_gib)
    spec = second_run_spec(model)
    warm = warm_compiles(spec, spec.tokens(job.width, job.height, job.frames), probe.gpu_name)
    return make_plan(probe, spec, job, prefs, warm_precisions=warm).plan


def predicted_step(plan, model: str, resolution: str, ram_gib: float) -> Optional[float]:
    """planner.estimate's forward seconds of the plan's denoiser on a probe of this GPU."""
    from lowvram.models.specs import spec_for_model
    from planner.estimate import forward_seconds
    from planner.timing import throughput_for

    if model not in MODEL_NAMES or plan.device != "cuda":
        return None
    spec = spec_for_model(MODEL_NAMES[model])
    h, w, f = RESOLUTIONS[resolution]
    tp = throughput_for(bench_probe(24, ram_gib))
    return forward_seconds(plan, plan.component("transformer"), spec, spec.tokens(w, h, f), tp)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


class _Keep:
    """A forward that keeps its last output (for the errors)."""

    def __init__(self, fn):
        self.fn, self.out = fn, None

    def __call__(self):
        self.out = self.fn()[0]
        return self.out


def _kept(name: str, keep: _Keep) -> Recipe:
    """A forward of a module already on the device (the floor, the resident compiled runs)."""
    return Recipe(name, lambda result: keep)


def _upstream(name: str, host: HostCopy, inputs, device: str) -> Recipe:
    """diffusers' own recipes as a user writes them; `_compile`: then `compile_repeated_blocks()`."""
    level = "block_level" if name.startswith("block") else "leaf_level"
    if not name.endswith("_compile"):
        return group_offload(host, inputs, level, device)
    holder = _Holder()

    def setup_with_compile(result: CaseResult):
        holder.module = host.fresh()
        kwargs = dict(onload_device=torch.device(device), offload_device=torch.device("cpu"), offload_type=level,
                      use_stream=device != "cpu")
        if level == "block_level":
            kwargs["num_blocks_per_group"] = 1
        holder.module.enable_group_offload(**kwargs)
        holder.module.compile_repeated_blocks()
        result.notes.append(f"diffusers enable_group_offload({level}, use_stream={device != 'cpu'}) + compile_repeated_blocks()")
        args = inputs.kwargs()
        return lambda: holder.module(**args)

    return Recipe(name, setup_with_compile, holder.clear)


def _lowvram(plan, host: HostCopy, inputs, name: str) -> Recipe:
    from lowvram import placement

    holder = _Holder()

    def setup(result: CaseResult):
        result.plan = plan.summary()
        holder.pipe = BenchPipe(transformer=host.fresh())
        placement.prepare(holder.pipe, plan)
        placement.enter_stage(holder.pipe, plan, "denoise")
        args = inputs.kwargs()
        return lambda: holder.pipe.transformer(**args)

    def teardown():
        if holder.pipe is not None:
            placement.leave_all(holder.pipe)
        holder.clear()

    return Recipe(name, setup, teardown)


def _e2e_selected(model: str, setup: FastSetup) -> bool:
    """The end-to-end row is among the cases (it needs the plan level's warm compile for its second run)."""
    return E2E_CASE in setup.cases and model == E2E_CASE[0] and "planner" in setup.kinds


def _warm_compile(model: str, level: str, keep: "_Keep", setup: FastSetup, log) -> Optional[float]:
    """A warm compile of the resident compiled model `keep` runs (a later run's cost): dynamo forgets the graph,
    inductor's FX graph cache still has it. The first forward's extra seconds."""
    torch._dynamo.reset()
    warm = _run(_case(model, "480p", None, f"compiled_{level}_warm", setup), _kept(f"compiled_{level}_warm", keep),
                setup, model, iters=1, log=log)
    return warm.get("warmup_extra_seconds")


def _case(model: str, res: str, budget: Optional[float], name: str, setup: FastSetup) -> CaseResult:
    h, w, f = setup.shapes[res]
    return CaseResult(model, res, budget, name, tokens(h, w, f))


def _run(result: CaseResult, recipe: Recipe, setup: FastSetup, model: str, iters: Optional[int] = None,
         warmup: Optional[int] = None, log=print, profile_first: int = 0) -> dict:
    cuda = setup.device == "cuda"
    run_case(result, recipe, warmup=setup.warmup if warmup is None else warmup,
             iters=setup.iters.get(model, 1) if iters is None else iters, cuda=cuda, log=log, profile_first=profile_first)
    for line in profile_lines(result.extra.get("first_profile", []), profile_first, prefix="  first forward: "):
        log(line)
    out = result.to_dict()
    if result.first_seconds is not None and result.step_seconds is not None:
        out["warmup_extra_seconds"] = result.first_seconds - result.step_seconds  # compile, when compiled
    return out


def measure_model(model: str, setup: FastSetup, log: Callable[[str], None] = print, save=lambda: None,
                  into: Optional[dict] = None) -> dict:
    """Everything for one model (the docstring's steps 1-5). Returns plain data, filled into `into` as it is
    measured (so that `save` writes every case done when a run is cut short)."""
    from lowvram.placement.compile import apply_compile
    from lowvram.placement.fast_quant import quantize_fast

    config = setup.configs.get(model)
    device = setup.device
    data: dict = into if into is not None else {}
    data.update({"model": model, "cases": [], "upstream": [], "errors": {}, "resident": {}})
    meta = lambda: transformer_on_meta(model, config)  # noqa: E731
    inputs = {}

    def inputs_for(res: str):
        if res not in inputs:
            h, w, f = setup.shapes[res]
            inputs[res] = transformer_inputs(h, w, f, device=device, text_tokens=setup.text_tokens,
                                             text_dim=setup.text_dim, in_channels=(config or TRANSFORMERS[model]).get("in_channels", 16))
        return inputs[res]

    t0 = time.perf_counter()
    gpu = build_transformer(model, device=device, config=config)
    data["build_seconds"] = time.perf_counter() - t0
    data["weights_bytes"] = param_bytes(gpu)
    x480 = inputs_for("480p").kwargs()

    # 1. the floor, then compiled
    keep = _Keep(lambda: gpu(**x480))
    floor = _run(_case(model, "480p", None, "eager_bf16", setup), _kept("eager_bf16", keep), setup, model,
                 iters=setup.floor_iters.get(model, 2), log=log)
    ref = keep.out
    data["floor"] = {"480p": floor}
    apply_compile(gpu, True, "bf16")
    r = _run(_case(model, "480p", None, "compiled_bf16", setup), _kept("compiled_bf16", keep), setup, model, log=log)
    r["error_vs_eager_bf16"] = rel_error(keep.out, ref)
    data["resident"]["bf16"] = r
    if setup.extras:
        data["warm_compile_seconds"] = _warm_compile(model, "bf16", keep, setup, log)
    save()
    host = {"bf16": HostCopy.of(gpu, meta)}

    # 2. fp8 compiled (in place), int8's error eagerly and the FFN speeds
    apply_compile(gpu, False)
    # without the extras, the planner's level only, and only where a planner plan is measured (a bf16-only
    # process skips the fast level's quantizing and compile)
    levels = setup.levels if setup.extras else setup.levels[:1] if "planner" in setup.kinds else ()
    for level in levels:
        gpu = None  # the previous weights leave the GPU first
        clean_cuda()
        # quantized as a first run quantizes them: the bf16 weights on the CPU, one block at a time on the GPU
        # (lowvram.placement.fast_quant), so the end-to-end row counts what a user's first run pays
        held = host["bf16"].fresh()
        try:
            started = time.perf_counter()
            quantize_fast(held, level, device)
            if device == "cuda":
                torch.cuda.synchronize()
            data.setdefault("quantize_seconds", {})[level] = time.perf_counter() - started
        except Exception as exc:  # noqa: BLE001 (a level this GPU cannot run is a result)
            data["errors"][level] = f"{type(exc).__name__}: {exc}"[:300]
            continue
        gpu = held.to(device)
        with torch.no_grad():
            data["errors"][level] = rel_error(gpu(**x480)[0], ref)
        if level == setup.levels[0]:  # the planner's level: measured compiled, resident, and kept for the plans
            apply_compile(gpu, True, level)
            keep = _Keep(lambda: gpu(**x480))
            r = _run(_case(model, "480p", None, f"compiled_{level}", setup), _kept(level, keep), setup, model, log=log)
            r["error_vs_eager_bf16"] = rel_error(keep.out, ref)
            data["resident"][level] = r
            if setup.extras or _e2e_selected(model, setup):
                data.setdefault("warm_compile_by_level", {})[level] = _warm_compile(model, level, keep, setup, log)
            apply_compile(gpu, False)
            host[level] = HostCopy.of(gpu, meta)
        log(f"[{model}] {level}: per-forward error vs eager bf16 {data['errors'][level]}")
        save()
    # 3. the bound's reference at the same shapes: quanto's weight-only fp8, which lowvram allows by default
    # (planner.constants.FAST_ERROR_BOUND is set against it)
    from lowvram.placement.quantize import quantize_weights

    gpu = None
    clean_cuda()
    if setup.extras:
        gpu = host["bf16"].fresh().to(device)
        quantize_weights(gpu, "fp8", device)
        with torch.no_grad():
            data["errors"]["quanto_fp8"] = rel_error(gpu(**x480)[0], ref)
        log(f"[{model}] quanto fp8 (weight-only): per-forward error vs eager bf16 {data['errors']['quanto_fp8']}")
        save()
        gpu = None
        clean_cuda()
    if setup.extras and model in setup.ffn_models:
        from lowvram.calibrate import ffn_levels

        dims = config or TRANSFORMERS[model]
        inner = dims["num_attention_heads"] * dims["attention_head_dim"]
        data["ffn"] = ffn_levels(tokens(*setup.shapes["480p"]), inner, dims["ffn_dim"], setup.ffn_levels, device)
        log(f"[{model}] FFN compiled vs bf16: {data['ffn']}")
        clean_cuda()
        save()

    # 3-5. the plans at each budget and resolution, the upstream recipes once
    floor_of = {"480p": floor}
    upstream_done: dict = {}
    for m, res, budget in sorted(setup.cases, key=lambda c: (c[1], c[2])):
        if m != model:
            continue
        if res not in floor_of:
            big = host["bf16"].fresh().to(device)
            x = inputs_for(res).kwargs()
            floor_of[res] = _run(_case(model, res, None, "eager_bf16", setup), _kept("eager_bf16", _Keep(lambda: big(**x))),
                                 setup, model, warmup=0, iters=1, log=log)
            data["floor"][res] = floor_of[res]
            del big
            clean_cuda()
        base = floor_of[res].get("step_seconds")
        seen = []
        for prefs_name in setup.kinds:
            plan_fn = setup.plan_fn or (lambda *a: _planner_plan(*a, setup.ram_gib))
            plan = plan_fn(model, res, budget, prefs_name)
            if plan in seen:  # the same plan twice (a GPU without fast matmuls): measured once
                data["cases"].append(dict(data["cases"][-1], kind=prefs_name, notes=["same plan as the planner's default"]))
                continue
            seen.append(plan)
            level = plan.component("transformer").precision
            source = host.get(level, host["bf16"])
            result = _case(model, res, budget, prefs_name, setup)
            out = _run(result, _lowvram(plan, source, inputs_for(res), prefs_name), setup, model, log=log,
                       profile_first=30 if prefs_name in setup.profile_first else 0)
            out.update(kind=prefs_name, predicted_step_seconds=predicted_step(plan, model, res, setup.ram_gib),
                       ratio=_ratio(out, base), plan_dict=plan.to_dict())
            data["cases"].append(out)
            save()
        if res == "480p" and not upstream_done:
            for name in setup.upstream:
                if name == "leaf_stream_compile" and model not in setup.leaf_compile_models:
                    continue
                out = _run(_case(model, res, budget, name, setup), _upstream(name, host["bf16"], inputs_for(res), device),
                           setup, model, log=log)
                out.update(kind="upstream", ratio=_ratio(out, base), budget_independent=True)
                upstream_done[name] = out
                data["upstream"].append(out)
                save()
            torch._dynamo.reset()  # upstream's compiled modules: gone (ours keep their graphs in the FX cache)
    return data


def _ratio(case: dict, base: Optional[float]) -> Optional[float]:
    step = case.get("step_seconds")
    return step / base if step and base else None


def e2e(data: dict, ram_gib: float) -> Optional[dict]:
    """14B at 24 GiB, 50 steps with CFG, composed from the measured steps (see the module docstring)."""
    from lowvram.models.specs import spec_for_model
    from planner.estimate import predict
    from planner.plan import Plan
    from planner.timing import throughput_for

    model, res, budget = E2E_CASE
    m = data.get("models", {}).get(model)
    if not m:
        return None
    case = next((c for c in m["cases"] if c["kind"] == "planner" and c["resolution"] == res and c["budget_gib"] == budget), None)
    floor = m["floor"].get(res, {}).get("step_seconds")
    if case is None or not case.get("step_seconds") or not floor:
        return None
    plan = Plan.from_dict(case["plan_dict"])
    job = bench_job(model, res, E2E_STEPS)
    stages, _ = predict(plan, spec_for_model(MODEL_NAMES[model]), job, throughput_for(bench_probe(budget, ram_gib)))
    other = sum(s.seconds for s in stages if s.stage in ("encode", "decode"))
    forwards = 2 * E2E_STEPS
    # the compile a first run pays: the plan's case reused graphs compiled earlier in this process, so its own
    # warm-up is not it; the same level's first compiled forward (cold, resident, same shapes) is
    t = plan.component("transformer")
    level = t.precision
    cold = (m.get("resident", {}).get(level) or {}).get("warmup_extra_seconds") if t.compile else None
    compile_s = max(0.0, case.get("warmup_extra_seconds") or 0.0, cold or 0.0)
    # a first run quantizes too (later runs load lowvram's quantized cache): measured from the CPU-held weights
    quantize_s = (m.get("quantize_seconds") or {}).get(level, 0.0)  # timed for the fast levels only: bf16 has none
    plan_s = forwards * case["step_seconds"] + compile_s + quantize_s + other
    floor_s = forwards * floor + other
    # a second run of the job: the level's graph in inductor's cache (measured with --table-only off)
    warm = (m.get("warm_compile_by_level") or {}).get(level) if t.compile else None
    second = None
    if warm is not None:
        second_s = forwards * case["step_seconds"] + max(0.0, warm) + other
        second = dict(plan_seconds=second_s, ratio=second_s / floor_s, compile_seconds=max(0.0, warm))
    return dict(model=model, resolution=res, budget_gib=budget, steps=E2E_STEPS, forwards=forwards,
                plan_seconds=plan_s, floor_seconds=floor_s, ratio=plan_s / floor_s, compile_seconds=compile_s,
                quantize_seconds=quantize_s,
                second_run=second, encode_decode_predicted_seconds=other, target=E2E_TARGET,
                note="composed: 100 x the measured step (+ the measured cold compile warm-up of the plan's level and, first "
                     "run, its quantizing on the GPU) vs 100 x the eager bf16 step; "
                     "encode and decode from the planner's prediction on both sides")


def run_fast(setup: FastSetup, log: Callable[[str], None] = print, save: Callable[[dict], None] = lambda d: None) -> dict:
    from lowvram.bench.matrix import environment

    started = time.perf_counter()
    data: dict = {"kind": "fast", "environment": environment(), "models": {}}
    try:
        import importlib.metadata as md

        data["environment"]["torchao"] = md.version("torchao")
    except Exception:  # noqa: BLE001
        data["environment"]["torchao"] = None
    for model in setup.models:
        torch._dynamo.reset()
        data["models"][model] = {}
        measure_model(model, setup, log, save=lambda: save(data), into=data["models"][model])
        clean_cuda()
        save(data)
    data["e2e"] = e2e(data, setup.ram_gib)
    data["total_seconds"] = time.perf_counter() - started
    save(data)
    return data


def predicted_table(ram_gib: float = 64.0, gpu_name: str = "NVIDIA H200", cc: tuple[int, int] = (9, 0),
                    warm: bool = True) -> list[dict]:
    """What the time model predicts for the table on a what-if GPU (no GPU needed): per case, the planner's plan
    and its bf16-only plan for a second video (as the benchmark plans them), each step over the eager bf16
    resident step. `warm`: the compile records of a run that compiled these shapes before."""
    from planner.choose import Preferences, make_plan
    from planner.estimate import forward_seconds
    from planner.plan import ComponentPlan, Plan
    from planner.probe import synthetic_probe
    from planner.timing import throughput_for

    rows = []
    for (model, res, budget), target in FAST_TARGETS.items():
        spec = second_run_spec(model)
        h, w, f = RESOLUTIONS[res]
        n = spec.tokens(w, h, f)
        probe = synthetic_probe(budget, ram_gib, gpu_name=gpu_name, compute_capability=cc)
        tp = throughput_for(probe)
        eager = ComponentPlan("transformer", "bf16", "resident")
        floor = forward_seconds(Plan("cuda", (eager,)), eager, spec, n, tp)
        row = dict(model=model, resolution=res, budget_gib=budget, target=target)
        for name, prefs in (("planner", Preferences()), ("bf16_only", Preferences(min_quant="bf16"))):
            plan = make_plan(probe, spec, bench_job(model, res), prefs,
                             warm_precisions=("bf16", "fp8_fast") if warm else ()).plan
            t = plan.component("transformer")
            row[name] = dict(plan=t.describe(), ratio=forward_seconds(plan, t, spec, n, tp) / floor)
        rows.append(row)
    return rows


def fit_fast(data: dict) -> dict:
    """What planner/constants.py should say after this run: compile factor (resident, from the compiled bf16
    step), FAST_LINEAR_FACTOR per level (from the FFN), FAST_LEVEL_ERROR per level (the worst model), the
    compile seconds per precision, cold and warm (the largest measured warm-up extra of each)."""
    out: dict = {"COMPILE_COMPUTE_FACTOR[resident]": {}, "FAST_LINEAR_FACTOR": {}, "FAST_LEVEL_ERROR": {}}
    warmups: dict = {}
    for model, m in data.get("models", {}).items():
        floor = m.get("floor", {}).get("480p", {}).get("step_seconds")
        compiled = m.get("resident", {}).get("bf16", {}).get("step_seconds")
        if floor and compiled:
            out["COMPILE_COMPUTE_FACTOR[resident]"][model] = compiled / floor
        for level, info in m.get("ffn", {}).items():
            if "factor" in info:
                out["FAST_LINEAR_FACTOR"].setdefault(level, {})[model] = info["factor"]
        for level, err in m.get("errors", {}).items():
            # quanto fp8 is the bound's reference (FAST_ERROR_BOUND: about twice it), not a fast level
            key = "quanto fp8 (FAST_ERROR_BOUND's reference)" if level == "quanto_fp8" else level
            if isinstance(err, float):
                out["FAST_LEVEL_ERROR"][key] = max(err, out["FAST_LEVEL_ERROR"].get(key, 0.0))
        for level, r in m.get("resident", {}).items():
            if r.get("warmup_extra_seconds") is not None:
                warmups[level] = max(r["warmup_extra_seconds"], warmups.get(level, 0.0))
    if warmups:
        out["COMPILE_SECONDS_COLD"] = warmups
    warm: dict = {}
    for m in data.get("models", {}).values():
        by_level = {"bf16": m.get("warm_compile_seconds"), **(m.get("warm_compile_by_level") or {})}
        for level, seconds in by_level.items():
            if seconds is not None:
                warm[level] = max(seconds, warm.get(level, 0.0))
    if warm:
        out["COMPILE_SECONDS_WARM"] = warm
    return out

