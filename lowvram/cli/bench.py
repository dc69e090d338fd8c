"""`lowvram bench`: measure lowvram's plans against the upstream recipes on this GPU (random weights)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _words(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark plans against upstream offload recipes on this GPU", description="Benchmark lowvram's plans against diffusers/accelerate offload recipes with random weights in the real Wan2.1 shapes. Needs a CUDA GPU.")
    bsub = p.add_subparsers(dest="bench_command", metavar="WHAT")

    m = bsub.add_parser("matrix", help="one model: all-on-GPU floor, per-block times, activation peaks, then each recipe at each budget")
    m.add_argument("--model", required=True, choices=("1.3b", "14b"))
    m.add_argument("--budgets", type=_floats, default=None, help="comma-separated GiB budgets (default: issue 8's matrix for the model)")
    m.add_argument("--resolutions", type=_words, default=None, help="comma-separated, from 480p,720p (default: the matrix's)")
    m.add_argument("--recipes", type=_words, default=None, help="comma-separated recipes (default: all): resident,block_stream,leaf_stream,model_offload,mmgp_p4,lowvram")
    m.add_argument("--ram-gib", type=float, default=64.0, help="RAM the planner is told the machine has (default %(default)s)")
    m.add_argument("--warmup", type=int, default=1)
    m.add_argument("--iters", type=int, default=2, help="timed forwards per case at 480p (720p uses 1)")
    m.add_argument("--floor-resolutions", type=_words, default=("480p", "720p"), help="resolutions at which to measure the uncapped all-on-GPU floor and per-block times (default 480p,720p)")
    m.add_argument("--plans", type=_words, default=(), help="forced plans to run as well, QUANT:KIND[:K] (e.g. bf16:partial:20,int8:block_offload,bf16:leaf_offload)")
    m.add_argument("--plans-budget", type=float, default=None, help="GiB budget for --plans (default 24)")
    m.add_argument("--profile", type=_words, default=(), help="recipes to profile one extra forward of (torch.profiler), RECIPE or RECIPE@BUDGET")
    m.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    m.set_defaults(func=run_matrix)

    c = bsub.add_parser("components", help="H2D bandwidth, VAE decode peaks, UMT5-XXL encoder peak")
    c.add_argument("--skip", type=_words, default=(), help="comma-separated parts to skip: h2d,vae,umt5")
    c.add_argument("--vae-dtype", default="float32", choices=("float32", "bfloat16"))
    c.add_argument("--out", type=Path, default=None)
    c.set_defaults(func=run_components)

    e = bsub.add_parser("e2e", help="end to end (text encode + steps + VAE decode): all on the GPU vs lowvram's plan at a budget")
    e.add_argument("--model", required=True, choices=("1.3b", "14b"))
    e.add_argument("--budget", type=float, required=True, help="GiB")
    e.add_argument("--resolution", default="480p", choices=("480p", "720p"))
    e.add_argument("--steps", type=int, default=50)
    e.add_argument("--measured-steps", type=int, default=None, help="measure only this many steps and compose the rest from the steady step (default: all)")
    e.add_argument("--ram-gib", type=float, default=64.0)
    e.add_argument("--out", type=Path, default=None)
    e.set_defaults(func=run_e2e)

    w = bsub.add_parser("wan22", help="Wan2.2 (A14B or TI2V-5B) through lowvram's real loading and expert switching vs diffusers all resident (issue 12's targets)")
    w.add_argument("--model", default="a14b", choices=("a14b", "ti2v"))
    w.add_argument("--folder", type=Path, required=True, help="where the random-weight checkpoint is written (or reused)")
    w.add_argument("--cases", type=_words, default=("24:64", "24:32", "16:32"), help="VRAM:RAM GiB pairs (default %(default)s)")
    w.add_argument("--steps", type=int, default=5, help="measured steps (the card's count is composed from them)")
    w.add_argument("--out", type=Path, default=None)
    w.add_argument("--resident-json", type=Path, default=None, help="reuse this earlier resident measurement (same model, same machine kind)")
    w.set_defaults(func=run_wan22)

    wc = bsub.add_parser("wan22-case", help=argparse_hidden())
    wc.add_argument("--model", required=True, choices=("a14b", "ti2v"))
    wc.add_argument("--folder", type=Path, required=True)
    wc.add_argument("--steps", type=int, required=True)
    wc.add_argument("--vram", type=float, default=None)
    wc.add_argument("--ram", type=float, default=None)
    wc.add_argument("--resident", action="store_true")
    wc.add_argument("--case-out", type=Path, required=True)
    wc.set_defaults(func=run_wan22_case)

    k = bsub.add_parser("cache", help="denoising wall time with TeaCache's and MagCache's schedules vs none, under a resident and an offloaded plan (issue 14's target)")
    k.add_argument("--model", default="1.3b", choices=("1.3b", "14b"))
    k.add_argument("--plans", type=_words, default=("bf16:resident", "bf16:block_offload"), help="forced plans QUANT:KIND[:K] (default %(default)s)")
    k.add_argument("--budget", type=float, default=8.0, help="GiB cap (default %(default)s)")
    k.add_argument("--steps", type=int, default=50)
    k.add_argument("--teacache-speedup", type=float, default=2.0, help="TeaCache's target, searched on the damped random time embedder (default %(default)s)")
    k.add_argument("--out", type=Path, default=None)
    k.set_defaults(func=run_cache)

    f = bsub.add_parser("fast", help="issue 13's table: compile and fp8/int8 matmuls vs eager bf16, the planner's plans at "
                        "each budget, the upstream recipes with and without compile, end to end composed (~6 min on an H200)")
    f.add_argument("--models", type=_words, default=("14b", "1.3b"), help="comma-separated, from 14b,1.3b (default both)")
    f.add_argument("--leaf-compile-models", type=_words, default=("1.3b",), help="models on which diffusers' leaf offload + "
                   "compile is measured too (default %(default)s: on the 14B its recompiles cost a minute)")
    f.add_argument("--no-upstream-compile", action="store_true", help="skip the upstream recipes with compile_repeated_blocks()")
    f.add_argument("--resolutions", type=_words, default=("480p", "720p"), help="table rows at these resolutions only (default %(default)s)")
    f.add_argument("--ram-gib", type=float, default=64.0, help="RAM the planner is told the machine has (default %(default)s)")
    f.add_argument("--budgets", type=_floats, default=None, help="table rows at these GiB budgets only (default: all)")
    f.add_argument("--no-upstream", action="store_true", help="skip the upstream recipes (another process measures them)")
    f.add_argument("--table-only", action="store_true", help="the table's cases only: no warm-compile run, no errors of "
                   "int8_fast and quanto fp8, no FFN factors (for a second process on another GPU while one measures them)")
    f.add_argument("--kinds", type=_words, default=("planner", "bf16_only"), help="which plans per row: planner "
                   "(the default preferences) and/or bf16_only (default both)")
    f.add_argument("--profile-first", type=_words, default=(), help="profile the first forward of these kinds' plans "
                   "(planner, bf16_only: where a compile or a placement's first call spends its time)")
    f.add_argument("--out", type=Path, default=None, help="write the results as JSON here (after every case)")
    f.add_argument("--predict", action="store_true", help="print what the planner's time model predicts for the table on "
                   "an H200 (no GPU needed) and exit")
    f.set_defaults(func=run_fast)
    c = bsub.add_parser("fp8-compile", help="what compiling a fast level costs and where its time goes (profiled), "
                        "and quantizing on the CPU vs block by block on the GPU (a few blocks of the real shapes, ~4 min)")
    c.add_argument("--model", default="14b", choices=("14b", "1.3b"))
    c.add_argument("--resolution", default="480p", choices=("480p", "720p"))
    c.add_argument("--layers", type=int, default=4, help="blocks built (the compiled graph is one block's; default %(default)s)")
    c.add_argument("--level", default="fp8_fast", choices=("fp8_fast", "int8_fast"))
    c.add_argument("--try", dest="tries", action="append", default=[], metavar="KEY=VALUE;...",
                   help="one more cold compile with these inductor config values in effect (repeatable), e.g. "
                   "'triton.autotune_pointwise=False;max_autotune_gemm_backends=ATEN'")
    c.add_argument("--out", type=Path, default=None)
    c.set_defaults(func=run_fp8_compile)
    g = bsub.add_parser("multigpu", help="two GPUs (issue 19's targets): context parallel at 720p, 14B under 2 x 12 GiB caps, A14B one expert per 24 GiB GPU; --smoke: the demo models in a minute")
    g.add_argument("--parts", type=_words, default=None, help="comma-separated, from cp720,split480,a14b (default: all, or none with --smoke)")
    g.add_argument("--smoke", action="store_true", help="the demo models on two GPUs (context parallel ulysses and ring, a layer split, one expert per GPU) against one GPU, about a minute")
    g.add_argument("--compile", action="store_true", help="cp720: also regional compile (compile_repeated_blocks) with context parallel")
    g.add_argument("--fast", default="", choices=("", "fp8_fast", "int8_fast"), help="cp720: also this fast level, compiled, with context parallel (fp8_fast: compute capability >= 8.9)")
    g.add_argument("--out", type=Path, default=None)
    g.set_defaults(func=run_multigpu)

    lo = bsub.add_parser("lora", help="a rank-R LoRA fused vs as adapters vs none: step time and peak VRAM under the planner's plans at each budget (issue 15)")
    lo.add_argument("--model", default="14b", choices=("1.3b", "14b"))
    lo.add_argument("--budgets", type=_floats, default=(12.0, 24.0), help="comma-separated GiB budgets (default 12,24)")
    lo.add_argument("--rank", type=int, default=64)
    lo.add_argument("--resolution", default="480p", choices=("480p", "720p"))
    lo.add_argument("--steps", type=int, default=3, help="steps measured per case; the first is not counted (default %(default)s)")
    lo.add_argument("--guidance", type=float, default=1.0, help="1.0: one pass per step, as a distillation LoRA runs (default %(default)s)")
    lo.add_argument("--ram-gib", type=float, default=64.0)
    lo.add_argument("--min-precision", default="bf16", choices=("bf16", "fp8", "int8", "int4"), help="lowest precision the plans may use (default bf16: no CPU quantizing per case)")
    lo.add_argument("--out", type=Path, default=None)
    lo.set_defaults(func=run_lora)

    r = bsub.add_parser("report", help="render result JSON files as markdown tables")
    r.add_argument("files", nargs="+", type=Path)
    r.add_argument("--command", default="", help="the command that produced them, quoted in the output")
    r.set_defaults(func=run_report)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _need_cuda() -> None:
    import torch

    from lowvram.errors import UserError

    if not torch.cuda.is_available():
        raise UserError("lowvram bench needs a CUDA GPU (none found). Run it on a machine with an NVIDIA GPU and a CUDA build of torch.")


def run_matrix(args) -> int:
    from lowvram.bench.matrix import run_matrix as run
    from lowvram.bench.recipes import ALL_RECIPES
    from lowvram.bench.shapes import cases_for

    _need_cuda()
    cases = cases_for(args.model, args.budgets, args.resolutions)
    recipes = args.recipes or ALL_RECIPES
    iters = {"480p": args.iters, "720p": 1}
    data = run(args.model, cases, recipes, out_path=args.out, warmup=args.warmup, iters=iters, ram_gib=args.ram_gib, log=lambda s: print(s, flush=True), floor_resolutions=args.floor_resolutions, plans=args.plans, plans_budget=args.plans_budget, profile=args.profile, profile_dir=args.out.parent if args.out else None)
    data["command"] = " ".join(shlex.quote(a) for a in ["lowvram", *sys.argv[1:]])
    _dump(data, args.out)
    from lowvram.bench.report import model_section

    print(model_section(data))
    return 0


def run_components(args) -> int:
    import torch

    from lowvram.bench import components as C
    from lowvram.bench.matrix import environment
    from lowvram.bench.report import components_section

    _need_cuda()
    data: dict = {"kind": "components", "environment": environment()}
    if "h2d" not in args.skip:
        data["h2d"] = C.h2d_bandwidth()
        _dump(data, args.out)  # after each part: a later part may run out of memory
    if "umt5" not in args.skip:
        data["umt5"] = C.umt5_peak()
        _dump(data, args.out)
    if "vae" not in args.skip:
        dtype = getattr(torch, args.vae_dtype)
        data["vae"] = C.vae_decode_peaks([(240, 416, 33), (480, 832, 81)], dtype=dtype)
        _dump(data, args.out)
    print(components_section(data))
    return 0


def _dump(data: dict, out) -> None:
    if out:
        out.write_text(json.dumps(data, indent=1, default=str))


def run_e2e(args) -> int:
    from lowvram.bench.e2e import run_e2e as run
    from lowvram.bench.matrix import environment
    from lowvram.bench.report import e2e_section

    _need_cuda()
    data = run(args.model, args.budget, args.resolution, args.steps, args.measured_steps, args.ram_gib, log=lambda s: print(s, flush=True))
    data["environment"] = environment()
    _dump(data, args.out)
    print(e2e_section(data))
    return 0


def run_fast(args) -> int:
    from lowvram.bench.fast import FAST_TARGETS, UPSTREAM, FastSetup, fit_fast
    from lowvram.bench.fast import run_fast as run
    from lowvram.bench.report import fast_section
    from lowvram.placement.compile import inductor_cache_dir

    if args.predict:
        from lowvram.bench.fast import predicted_table

        print("| case | planner's plan (predicted step / eager bf16) | bf16-only plan | target |")
        print("|---|---|---|---|")
        for r in predicted_table(args.ram_gib):
            print(f"| {r['model']} {r['resolution']} @ {r['budget_gib']:g} GiB | {r['planner']['plan']} x{r['planner']['ratio']:.3f} "
                  f"| {r['bf16_only']['plan']} x{r['bf16_only']['ratio']:.3f} | {r['target']} |")
        return 0
    from lowvram.errors import UserError

    # the options first (exit 2 before any GPU work), then the GPU
    unknown = [m for m in args.models if m not in ("14b", "1.3b")]
    if unknown:
        raise UserError(f"--models: {', '.join(unknown)} unknown; use 14b and/or 1.3b")
    upstream = () if args.no_upstream else tuple(u for u in UPSTREAM if not (args.no_upstream_compile and u.endswith("_compile")))
    cases = tuple(c for c in FAST_TARGETS if c[1] in args.resolutions and (args.budgets is None or c[2] in args.budgets))
    if not any(c[0] in args.models for c in cases):
        rows = ", ".join(f"{m} {r} @ {b:g} GiB" for m, r, b in FAST_TARGETS)
        budgets = f" --budgets {','.join(f'{b:g}' for b in args.budgets)}" if args.budgets else ""
        raise UserError(f"no row of the table matches --models {','.join(args.models)} --resolutions "
                        f"{','.join(args.resolutions)}{budgets}; its rows: {rows}")
    kinds = tuple(args.kinds)
    if not kinds or any(k not in ("planner", "bf16_only") for k in kinds):
        raise UserError(f"--kinds: {','.join(kinds) or 'nothing'}; use planner and/or bf16_only")
    _need_cuda()
    if not upstream:  # lowvram's plans alone: run as `lowvram generate` runs them (the upstream rows keep torch's default)
        _allocator_as_generate()
    setup = FastSetup(models=tuple(args.models), ram_gib=args.ram_gib, upstream=upstream, cases=cases,
                      leaf_compile_models=tuple(args.leaf_compile_models), extras=not args.table_only, kinds=kinds,
                      profile_first=tuple(args.profile_first))
    print(f"inductor cache: {inductor_cache_dir()}", flush=True)
    data = run(setup, log=lambda s: print(s, flush=True), save=lambda d: _dump(d, args.out))
    data["command"] = " ".join(shlex.quote(a) for a in ["lowvram", *sys.argv[1:]])
    data["fit"] = fit_fast(data)
    _dump(data, args.out)
    print(fast_section(data, data["command"]))
    print("refit (planner/constants.py):", json.dumps(data["fit"], indent=1, default=str))
    return 0


def _allocator_as_generate() -> None:
    """Benchmarks of lowvram's plans alone run with the allocator settings `lowvram generate` uses (expandable
    segments: run 19's LoRA bench ran out of memory under the 12 GiB cap at 10.6 GiB allocated, the default
    allocator's fragments). Those that compare with upstream recipes keep torch's default for both."""
    from lowvram.cli import use_expandable_segments

    use_expandable_segments()


def run_cache(args) -> int:
    from lowvram.bench.cache import run_cache as run
    from lowvram.bench.matrix import environment
    from lowvram.bench.report import cache_section

    _need_cuda()
    _allocator_as_generate()
    data = run(args.model, args.plans, args.budget, args.steps, teacache_speedup=args.teacache_speedup, log=lambda s: print(s, flush=True))
    data["environment"] = environment()
    data["command"] = " ".join(shlex.quote(a) for a in ["lowvram", *sys.argv[1:]])
    _dump(data, args.out)
    print(cache_section(data))
    return 0


def run_lora(args) -> int:
    from lowvram.bench.lora import lora_section
    from lowvram.bench.lora import run_lora as run
    from lowvram.bench.matrix import environment

    _need_cuda()
    _allocator_as_generate()
    data = run(args.model, args.budgets, args.rank, args.resolution, args.steps, args.guidance, args.ram_gib,
               log=lambda s: print(s, flush=True), min_precision=args.min_precision, save=lambda d: _dump(d, args.out))
    data["environment"] = environment()
    data["command"] = " ".join(shlex.quote(a) for a in ["lowvram", *sys.argv[1:]])
    _dump(data, args.out)
    print(lora_section(data))
    return 0


def run_fp8_compile(args) -> int:
    from lowvram.bench.fp8_compile import parse_options
    from lowvram.bench.fp8_compile import run_fp8_compile as run
    from lowvram.bench.matrix import environment
    from lowvram.errors import UserError
    from lowvram.placement.fast_quant import check_device

    try:
        tries = tuple(parse_options(t) for t in args.tries)
    except ValueError as exc:
        raise UserError(f"--try {exc}") from None
    _check_inductor_options(tries)
    _need_cuda()
    check_device(args.level, "cuda")
    _allocator_as_generate()
    data = run(args.model, args.resolution, args.layers, args.level, tries=tries, log=lambda s: print(s, flush=True))
    data["environment"] = environment()
    data["command"] = " ".join(shlex.quote(a) for a in ["lowvram", *sys.argv[1:]])
    _dump(data, args.out)
    return 0


def _check_inductor_options(tries: tuple) -> None:
    """Unknown inductor config names exit 2 before any GPU work (inductor's patch would fail mid-run)."""
    import torch._inductor.config as inductor_config

    from lowvram.errors import UserError

    known = set(inductor_config.get_config_copy())
    unknown = sorted({k for options in tries for k in options if k not in known})
    if unknown:
        raise UserError(f"--try: {', '.join(unknown)} is not an inductor config name (torch._inductor.config); "
                        "nested ones are written with a dot, e.g. triton.autotune_pointwise")


def run_multigpu(args) -> int:
    import torch

    from lowvram.bench.multigpu import PARTS, Setup, run, table
    from lowvram.errors import UserError

    _need_cuda()
    if torch.cuda.device_count() < 2:
        raise UserError(f"lowvram bench multigpu needs two CUDA GPUs; this machine has {torch.cuda.device_count()}.")
    parts = args.parts if args.parts is not None else (() if args.smoke else PARTS)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise UserError(f"--parts: unknown {', '.join(unknown)}; use {', '.join(PARTS)}")
    data = run(tuple(parts), args.out, Setup(compile=args.compile, fast=args.fast), smoke=args.smoke, log=lambda s: print(s, flush=True))
    data["command"] = " ".join(shlex.quote(a) for a in ["lowvram", *sys.argv[1:]])
    _dump(data, args.out)
    print(table(data), end="")
    return 0 if data.get("smoke", {}).get("ok", True) else 1


def run_report(args) -> int:
    from lowvram.bench.report import render

    datas = [json.loads(f.read_text()) for f in args.files]
    print(render(datas, args.command), end="")
    return 0


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


def run_wan22(args) -> int:
    from lowvram.bench.wan22 import run

    cases = [_wan22_case(c) for c in args.cases]
    _need_cuda()
    run(args.model, args.folder, cases, args.steps, args.out, resident_json=args.resident_json)
    return 0


def _wan22_case(text: str) -> tuple[float, float]:
    """'VRAM:RAM' in GiB, both positive numbers."""
    from lowvram.errors import UserError

    parts = text.split(":")
    try:
        vram, ram = (float(x) for x in parts)
    except ValueError:
        raise UserError(f"--cases: {text!r} is not VRAM:RAM in GiB (e.g. 24:64,12:32)") from None
    if vram <= 0 or ram <= 0:
        raise UserError(f"--cases: {text!r}: VRAM and RAM must be positive GiB (e.g. 24:64)")
    return vram, ram


def run_wan22_case(args) -> int:
    from lowvram.bench.wan22 import run_lowvram_case, run_resident_case

    if args.resident:
        result = run_resident_case(args.model, args.folder, args.steps)
    else:
        result = run_lowvram_case(args.model, args.folder, args.vram, args.ram, args.steps, args.case_out.parent)
    args.case_out.write_text(json.dumps(result, indent=1, default=str))
    return 0
