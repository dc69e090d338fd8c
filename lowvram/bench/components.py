"""Measurements of the parts around the transformer that the planner's memory and time model need:
host-to-device bandwidth (pinned and pageable), the VAE decode peak (tiled and untiled) and the UMT5-XXL
text encoder peak, each with random weights in the real shape."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from lowvram.bench.build import build_umt5, build_vae, param_bytes
from lowvram.bench.measure import GIB, clean_cuda
from lowvram.bench.shapes import TEXT_TOKENS, latent_shape


def h2d_bandwidth(size_bytes: int = 1 << 30, repeats: int = 5) -> dict:
    """Bytes per second for a host->device copy from pinned and from pageable memory (median of repeats)."""
    out = {}
    dst = torch.empty(size_bytes, dtype=torch.uint8, device="cuda")
    for kind in ("pinned", "pageable"):
        src = torch.empty(size_bytes, dtype=torch.uint8, pin_memory=(kind == "pinned"))
        src.fill_(1)
        times = []
        for _ in range(repeats + 1):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            dst.copy_(src, non_blocking=(kind == "pinned"))
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out[kind] = size_bytes / statistics.median(times[1:])
        del src
    # device -> host into pageable memory: what making a host copy of a model costs
    host = torch.empty(size_bytes, dtype=torch.uint8)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    host.copy_(dst)
    torch.cuda.synchronize()
    out["d2h_pageable"] = size_bytes / (time.perf_counter() - t0)
    del dst, host
    clean_cuda()
    return out | {"size_bytes": size_bytes}


def _peak_of(fn: Callable[[], object]) -> tuple[float, int]:
    """(seconds, peak allocated above what was allocated before) of one call."""
    clean_cuda()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = fn()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    del out
    return seconds, torch.cuda.max_memory_allocated() - base


def vae_decode_peaks(shapes: list[tuple[int, int, int]], dtype: torch.dtype = torch.float32, log=print) -> dict:
    """Decode peak (above the VAE's weights and the latents) untiled and tiled, per (height, width, frames)."""
    vae = build_vae(dtype=dtype)
    result = {"dtype": str(dtype).replace("torch.", ""), "weights_bytes": param_bytes(vae), "points": []}
    for h, w, f in shapes:
        z = torch.randn(latent_shape(h, w, f), device="cuda", dtype=dtype)
        for tiled in (False, True):
            vae.enable_tiling()
            vae.use_tiling = tiled
            point = dict(shape=[h, w, f], tiled=tiled)
            try:
                point["seconds"], point["peak_bytes"] = _peak_of(lambda: vae.decode(z, return_dict=False)[0])
            except torch.OutOfMemoryError:
                point["oom"] = True
            result["points"].append(point)
            log(f"[vae {result['dtype']}] {h}x{w}x{f} tiled={tiled}: " + (f"{point['peak_bytes'] / GIB:.2f} GiB {point['seconds']:.1f}s" if "peak_bytes" in point else "OOM"))
        del z
    del vae
    clean_cuda()
    return result


def umt5_peak(dtype: torch.dtype = torch.bfloat16, text_tokens: int = TEXT_TOKENS, log=print) -> dict:
    """UMT5-XXL encoder: weights, peak above the weights for one prompt, and time per prompt."""
    t0 = time.perf_counter()
    enc = build_umt5(dtype=dtype)
    torch.cuda.synchronize()
    build = time.perf_counter() - t0
    ids = torch.randint(0, enc.config.vocab_size, (1, text_tokens), device="cuda")
    mask = torch.ones_like(ids)
    run = lambda: enc(input_ids=ids, attention_mask=mask).last_hidden_state  # noqa: E731
    _peak_of(run)  # warm-up
    seconds, peak = _peak_of(run)
    out = dict(dtype=str(dtype).replace("torch.", ""), params=sum(p.numel() for p in enc.parameters()), weights_bytes=param_bytes(enc), peak_bytes=peak, seconds=seconds, tokens=text_tokens, build_seconds=build)
    log(f"[umt5] {out['params'] / 1e9:.2f} B params, weights {out['weights_bytes'] / GIB:.2f} GiB, peak +{peak / GIB:.2f} GiB, {seconds:.3f}s per prompt")
    del enc, ids, mask
    clean_cuda()
    return out
