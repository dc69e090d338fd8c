"""`lowvram bench fp8-compile`: what compiling a fast level costs and where that time goes, and what
quantizing costs on the CPU and on the GPU.

Random weights in a model's real shapes with `layers` blocks (the compiled graph is one block's, the same for
any number of blocks, so its compile time is the whole model's). At one resolution, in this order:
1. eager bf16 (the reference step and output), then bf16 compiled, cold (a fresh inductor cache folder);
2. the blocks quantized at the level on the CPU (torchao's quantize_ there), and again by
   lowvram.placement.fast_quant.quantize_fast, which moves one block at a time to the GPU: params/s of both;
3. the quantized model compiled as lowvram compiles it, cold: the first forward under cProfile (the functions
   where the compile spends its time, and dynamo's own compile_times), then the step and its error;
4. each of `tries`: inductor config values (e.g. {"triton.autotune_pointwise": False}) in effect while the
   graph compiles, again cold, timed and profiled the same way: what shortens the compile, at what step cost.
Runs 20-21 measured the 14B's fp8_fast block graph at 175-212 s cold on an H200 (bf16's: 12 s); this found why
(run 22, docs/benchmarks.md): torchao's quantize_ had switched on inductor's coordinate-descent tuning, which
compiles each Triton kernel in many block sizes; without it (lowvram.placement.fast_quant) the graph compiles
in 9.4 s for the same step. `--try 'coordinate_descent_tuning=True'` measures it again.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Callable, Optional

import torch

from lowvram.bench.build import build_transformer, param_count, transformer_inputs
from lowvram.bench.fast import rel_error
from lowvram.bench.measure import clean_cuda, profile_lines, profile_rows_of, timed
from lowvram.bench.shapes import RESOLUTIONS, TRANSFORMERS


def parse_options(text: str) -> dict:
    """"key=value;key=value" -> inductor config values (True/False/None and numbers as such, the rest strings)."""
    import json

    options = {}
    for pair in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{pair!r}: expected key=value (inductor config names, e.g. triton.autotune_pointwise=False)")
        raw = raw.strip()
        lowered = {"true": "true", "false": "false", "none": "null"}.get(raw.lower(), raw)
        try:
            options[key.strip()] = json.loads(lowered)
        except ValueError:
            options[key.strip()] = raw
    return options


def _compiled_case(model: torch.nn.Module, forward: Callable, ref: torch.Tensor, level: str, iters: int, sync: bool,
                   profile_rows: int = 0, options: Optional[dict] = None) -> dict:
    """Compile `model`'s blocks in a fresh inductor cache (with inductor config `options` in effect while it
    compiles); the first forward (profiled), then `iters` more."""
    import contextlib
    import cProfile

    from torch._inductor.utils import fresh_cache

    from lowvram.placement.compile import apply_compile

    torch._dynamo.reset()
    profile = cProfile.Profile() if profile_rows else None
    # fresh_cache: an empty inductor and Triton cache folder, and inductor's in-memory caches cleared (its
    # compiled Triton kernels are kept in memory by source: a second compile of the same graph in the process
    # would reuse them and look 10x faster than a cold one)
    with fresh_cache():
        apply_compile(model, True, level)
        with torch.no_grad():
            if profile is not None:
                profile.enable()
            patch = torch._inductor.config.patch(options) if options else contextlib.nullcontext()
            with patch:  # the graph compiles at its first call
                first, out = timed(forward, sync)
            if profile is not None:
                profile.disable()
            steps = [timed(forward, sync)[0] for _ in range(iters)]
        apply_compile(model, False)
    step = statistics.median(steps)
    r = dict(level=level, options=options or {}, first_seconds=first, step_seconds=step,
             compile_seconds=max(0.0, first - step), error_vs_eager_bf16=rel_error(out[0], ref))
    if profile is not None:
        r["profile"] = profile_rows_of(profile, profile_rows)
        try:
            r["dynamo_compile_times"] = torch._dynamo.utils.compile_times(repr="str")
        except Exception as exc:  # noqa: BLE001 (diagnostics only)
            r["dynamo_compile_times"] = f"{type(exc).__name__}: {exc}"
    return r


def run_fp8_compile(model_key: str = "14b", resolution: str = "480p", layers: int = 4, level: str = "fp8_fast",
                    iters: int = 3, device: str = "cuda", config: Optional[dict] = None, profile_rows: int = 40,
                    tries: tuple[dict, ...] = (), log: Callable[[str], None] = print) -> dict:
    from torchao.quantization import quantize_

    from lowvram.placement.fast_quant import _bf16_linear, quantize_fast, torchao_config

    sync = device == "cuda"
    cfg = dict(config or TRANSFORMERS[model_key], num_layers=layers)
    h, w, f = RESOLUTIONS[resolution]
    host = build_transformer(model_key, device="cpu", config=cfg)
    block_params = param_count(host.blocks)
    x = transformer_inputs(h, w, f, device=device, in_channels=cfg.get("in_channels", 16)).kwargs()
    data: dict = dict(model=model_key, resolution=resolution, layers=layers, level=level, block_params=block_params,
                      compile_threads=torch._inductor.config.compile_threads)

    # 1. the reference
    gpu = copy.deepcopy(host).to(device)
    forward = lambda: gpu(**x)  # noqa: E731
    with torch.no_grad():
        timed(forward, sync)
        eager = statistics.median(timed(forward, sync)[0] for _ in range(iters))
        ref = forward()[0]
    data["eager_bf16_step_seconds"] = eager
    data["bf16_compiled"] = _compiled_case(gpu, forward, ref, "bf16", iters, sync)
    log(f"[{model_key} {resolution}] eager bf16 {eager:.4f}s; compiled bf16 {data['bf16_compiled']}")
    gpu = None
    clean_cuda()

    # 2. quantizing: on the CPU, then block by block on the GPU (the runtime's path)
    cpu_copy = copy.deepcopy(host)
    t0 = time.perf_counter()
    config = torchao_config(level)
    for block in cpu_copy.blocks:
        quantize_(block, config, filter_fn=_bf16_linear)
    data["quantize_cpu_params_per_second"] = block_params / (time.perf_counter() - t0)
    del cpu_copy
    q = copy.deepcopy(host)
    if sync:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    quantize_fast(q, level, device)
    if sync:
        torch.cuda.synchronize()
    data["quantize_gpu_params_per_second"] = block_params / (time.perf_counter() - t0)
    log(f"[{model_key}] quantizing {level}: CPU {data['quantize_cpu_params_per_second'] / 1e9:.3f} B params/s, "
        f"GPU block by block {data['quantize_gpu_params_per_second'] / 1e9:.3f} B params/s")

    # 3-4. compiled as lowvram compiles it, then with each try's inductor options, profiled
    q = q.to(device)
    forward = lambda: q(**x)  # noqa: E731
    data["tries"] = []
    for options in ({},) + tuple(tries):
        r = _compiled_case(q, forward, ref, level, iters, sync, profile_rows=profile_rows, options=options)
        r["ratio_to_eager_bf16"] = r["step_seconds"] / eager
        if options:
            data["tries"].append(r)
        else:
            data["compiled"] = r
        log(f"[{model_key} {resolution}] {level} compiled {options or '(as lowvram does)'}: first {r['first_seconds']:.1f}s "
            f"step {r['step_seconds']:.4f}s (x{r['ratio_to_eager_bf16']:.3f} of eager bf16), error {r['error_vs_eager_bf16']:.4f}")
        for line in profile_lines(r.get("profile", []), profile_rows, own=20, prefix="  "):
            log(line)
        log(str(r.get("dynamo_compile_times", ""))[:3000])
    return data
