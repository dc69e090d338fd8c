"""`lowvram calibrate`: measure this GPU (H2D bandwidth pinned/pageable, transformer block time, the gain of
regional compile, the speed of fp8 / int8 matmuls) and the CPU's matmul throughput, into a
planner.calibration.Calibration (which `lowvram calibrate` saves where the planner's time model finds it).

Side effects only: it builds random-weight Wan blocks and FFNs on the GPU and times them, quantized and compiled
as lowvram.placement does.
"""

from __future__ import annotations

import time

from lowvram.errors import UserError
from planner.calibration import Calibration

# The block measured: Wan2.1 1.3B's shape (dim 1536, ffn 8960, 12 heads), a few layers so that launch
# overheads are amortized as in a real forward, at 480x832 latents.
CALIBRATION_LAYERS = 4
CALIBRATION_LATENT = {"full": (21, 60, 104), "quick": (5, 60, 104)}  # latent frames, H/8, W/8
COPY_BYTES = 512 * 1024**2  # one H2D copy of this size, repeated
REPEATS = 5


def measure_cpu_flops(n: int = 1024, repeats: int = 3) -> float:
    """float32 matmul FLOP/s on the CPU (the text encoder and VAE on 'cpu' run at about this rate)."""
    import torch

    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def _h2d(pinned: bool) -> float:
    import torch

    src = torch.empty(COPY_BYTES, dtype=torch.uint8, pin_memory=pinned)
    dst = torch.empty(COPY_BYTES, dtype=torch.uint8, device="cuda")
    dst.copy_(src, non_blocking=pinned)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(REPEATS):
        dst.copy_(src, non_blocking=pinned)
    torch.cuda.synchronize()
    return COPY_BYTES * REPEATS / (time.perf_counter() - t0)


def measure_transformer(config: dict, latent: tuple[int, int, int], device: str, repeats: int = REPEATS) -> tuple[float, float, int]:
    """(achieved FLOP/s, seconds per block, tokens) of a Wan transformer built from `config`, random weights,
    one forward at `latent` = (latent frames, H/8, W/8), in bf16 on `device`."""
    import torch
    from diffusers import WanTransformer3DModel

    from planner.spec import ModelSpec, TextEncoderDims, TransformerDims, component_spec
    from planner.timing import transformer_flops

    frames, h, w = latent
    model = WanTransformer3DModel(**config).to(device, torch.bfloat16).eval()
    c = model.config
    x = torch.randn(1, c.in_channels, frames, h, w, device=device, dtype=torch.bfloat16)
    text = torch.randn(1, 512, c.text_dim, device=device, dtype=torch.bfloat16)
    t = torch.tensor([500.0], device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)  # warm-up
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)
        sync()
    seconds = (time.perf_counter() - t0) / repeats
    tokens = frames * (h // 2) * (w // 2)
    dims = TransformerDims(c.num_attention_heads * c.attention_head_dim, c.ffn_dim, c.num_attention_heads,
                           c.num_layers, c.in_channels, c.text_dim, False)
    spec = ModelSpec("calibration", "wan", "t2v", (component_spec("transformer", model, model.blocks),), dims,
                     TextEncoderDims(0, 0, 0))
    return transformer_flops(spec, tokens) / seconds, seconds / c.num_layers, tokens


def _timed(fn, repeats: int, device: str) -> float:
    """Median seconds of `fn()` after one warm-up call (which compiles, when fn is compiled)."""
    import statistics

    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        fn()
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ffn_levels(tokens: int, dim: int = 5120, ffn_dim: int = 13824, levels: tuple[str, ...] = ("fp8_fast", "int8_fast"),
               device: str = "cuda", repeats: int = REPEATS) -> dict:
    """A Wan FFN (Linear dim->ffn, GELU, Linear ffn->dim; the 14B's sides by default) compiled at bf16 and at each
    fast level: {level: {"seconds", "factor" (over bf16), "error" (relative, vs bf16)}} and {"bf16": {"seconds"}}.
    The factor is the planner's FAST_LINEAR_FACTOR."""
    import copy

    import torch

    from lowvram.placement.fast_quant import torchao_config

    gen = torch.Generator(device="cpu").manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(dim, ffn_dim), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(ffn_dim, dim))
    with torch.no_grad():
        for p in base.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    base = base.to(device, torch.bfloat16).eval().requires_grad_(False)
    x = torch.randn(tokens, dim, generator=gen).to(device, torch.bfloat16)
    out: dict = {}
    with torch.no_grad():
        ref = base(x).float()
    compiled = torch.compile(base, fullgraph=True, dynamic=False)
    out["bf16"] = {"seconds": _timed(lambda: compiled(x), repeats, device)}
    for level in levels:
        model = copy.deepcopy(base)
        try:
            from torchao.quantization import quantize_

            quantize_(model, torchao_config(level))
            run = torch.compile(model, fullgraph=True, dynamic=False)
            seconds = _timed(lambda: run(x), repeats, device)
            with torch.no_grad():
                error = float((run(x).float() - ref).norm() / ref.norm())
            out[level] = {"seconds": seconds, "factor": seconds / out["bf16"]["seconds"], "error": error}
        except Exception as exc:  # a level this GPU or this torchao cannot run: recorded, the others go on
            out[level] = {"error_message": f"{type(exc).__name__}: {exc}"[:300]}
        del model
    return out


def compile_gain(config: dict, latent: tuple[int, int, int], device: str = "cuda", repeats: int = REPEATS) -> float:
    """A Wan transformer's compiled (regional, lowvram.placement.compile) over eager forward time, resident."""
    import torch
    from diffusers import WanTransformer3DModel

    from lowvram.placement.compile import apply_compile

    frames, h, w = latent
    model = WanTransformer3DModel(**config).to(device, torch.bfloat16).eval().requires_grad_(False)
    c = model.config
    x = torch.randn(1, c.in_channels, frames, h, w, device=device, dtype=torch.bfloat16)
    text = torch.randn(1, 512, c.text_dim, device=device, dtype=torch.bfloat16)
    t = torch.tensor([500.0], device=device)
    forward = lambda: model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)  # noqa: E731
    eager = _timed(forward, repeats, device)
    apply_compile(model, True, "bf16")
    return _timed(forward, repeats, device) / eager


def measure_gpu(quick: bool = False) -> tuple[float, float, float, float, int]:
    """(bf16 FLOP/s over a forward, block seconds, pinned B/s, pageable B/s, tokens) on the current GPU."""
    import torch

    from planner.known_configs import WAN_1_3B

    config = dict(WAN_1_3B, num_layers=CALIBRATION_LAYERS)
    flops, block_s, tokens = measure_transformer(config, CALIBRATION_LATENT["quick" if quick else "full"], "cuda")
    torch.cuda.empty_cache()
    return flops, block_s, _h2d(True), _h2d(False), tokens


def calibrate(quick: bool = False) -> Calibration:
    """Measure this machine. Raises UserError without a CUDA GPU (there is nothing to calibrate)."""
    from datetime import date

    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "no CUDA GPU found: there is nothing to calibrate. The planner plans for the CPU on this machine; "
            "run `lowvram calibrate` on a machine with an NVIDIA GPU and a CUDA build of torch."
        )
    gpu_flops, block_s, pinned, pageable, tokens = measure_gpu(quick)
    gains = measure_gains(quick)
    return Calibration(
        gpu_name=torch.cuda.get_device_name(torch.cuda.current_device()),
        created=date.today().isoformat(),
        gpu_flops=gpu_flops,
        h2d_pinned=pinned,
        h2d_pageable=pageable,
        cpu_flops=measure_cpu_flops(),
        tokens=tokens,
        block_seconds=block_s,
        **gains,
    )


def measure_gains(quick: bool = False) -> dict:
    """compile_factor, fp8_linear_factor, int8_linear_factor for Calibration (0.0 where a level cannot run here).
    Compiling takes a minute or two the first time (inductor's cache keeps it for later runs)."""
    import torch

    from planner.known_configs import WAN_1_3B

    frames = CALIBRATION_LATENT["quick" if quick else "full"]
    tokens = frames[0] * (frames[1] // 2) * (frames[2] // 2)
    out = {"compile_factor": compile_gain(dict(WAN_1_3B, num_layers=CALIBRATION_LAYERS), frames)}
    torch.cuda.empty_cache()
    cc = torch.cuda.get_device_capability()
    levels = ("fp8_fast", "int8_fast") if cc >= (8, 9) else ("int8_fast",)
    ffn = ffn_levels(tokens, levels=levels)
    for level, key in (("fp8_fast", "fp8_linear_factor"), ("int8_fast", "int8_linear_factor")):
        out[key] = float(ffn.get(level, {}).get("factor", 0.0))
    torch.cuda.empty_cache()
    return out
