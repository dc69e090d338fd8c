"""Predict a plan's peaks (VRAM, RAM) and time per stage: load -> encode -> denoise -> decode.

The stages run one after another and a component is on the GPU only during its stage (the text and
image encoders and the I2V first-frame VAE encode during `encode`, the transformer during `denoise`,
the VAE during `decode`), so a plan's peak is the largest stage peak. Everything not on the GPU is in
RAM, except disk-offloaded weights. Checkpoints are memory-mapped: their pages are page cache the kernel
can drop, so RAM here is heap (what the process holds), as docs/benchmarks.md measures it.

RAM while loading: what stays in RAM after loading (quantized weights at their quantized size, streamed
weights pinned) plus a transient: one unquantized block in flight, or, when quantizing at load (first
run), one quantized-cache shard being serialized. The bf16 pages read while quantizing are page cache.
"""

from __future__ import annotations

from typing import Optional

from lowvram.caching.estimate import CallCounts, denoise_calls
from lowvram.job import Job
from planner import constants as C
from planner import memory as M
from planner import timing as T
from planner.plan import Plan, StagePeak
from planner.spec import ModelSpec


def cfg_passes(job: Job) -> int:
    """Classifier-free guidance runs the transformer (and the text encoder) twice; <= 1 turns it off."""
    return 2 if job.guidance > 1.0 else 1


def predict(plan: Plan, spec: ModelSpec, job: Job, tp: T.Throughput, cache: Optional[CallCounts] = None) -> tuple[tuple[StagePeak, ...], float]:
    """The plan's predicted StagePeaks (load, encode, denoise, decode) and total seconds. `cache`: the calls
    the job's step cache computes (lowvram.caching), when known; a skipped call is counted as free."""
    on_gpu = plan.device == "cuda"
    dtype = plan.dtype
    i2v = spec.task == "i2v" and spec.image_encoder is not None
    tq, teq = plan.transformer_quant, plan.text_encoder_quant
    tr = plan.transformer
    base_ram = C.PROCESS_RAM_BASE_CPU + (C.PROCESS_RAM_CUDA_EXTRA if on_gpu else 0)

    # Weights, as they sit in memory after loading (quantized where the plan says).
    te_bytes = M.component_bytes(spec.text_encoder, teq, dtype)
    ie_bytes = M.component_bytes(spec.image_encoder, "bf16", dtype) if i2v else 0
    vae_bytes = M.component_bytes(spec.vae, "bf16", dtype)
    t_total = M.component_bytes(spec.transformer, tq, dtype)
    if on_gpu:
        t_resident, t_pinned, t_disk = M.transformer_ram_split(
            spec, tq, tr.kind, tr.resident_blocks, tr.blocks_per_group, dtype
        )
    else:
        t_resident, t_pinned, t_disk = 0, 0, 0
    pinned = int(t_pinned * C.PINNED_RAM_PER_WEIGHT_BYTE)  # page-locked for the whole run
    t_in_ram = t_resident + pinned if on_gpu else t_total  # outside denoise the resident part is parked on the CPU

    te_gpu = on_gpu and plan.text_encoder == "gpu"
    te_offload = on_gpu and plan.text_encoder == "offload"
    vae_gpu = on_gpu and plan.vae in ("gpu", "gpu_tiled")
    tiled = plan.vae == "gpu_tiled"
    h, w, f = job.height, job.width, job.frames
    te_act = M.text_encoder_activation_bytes(spec.text_dims, dtype=dtype)
    passes = cfg_passes(job)

    # --- load --------------------------------------------------------------------------------------
    held = t_in_ram + te_bytes + ie_bytes + vae_bytes
    quantizing = tq != "bf16" or teq != "bf16"
    transient = max(M.staging_bytes(spec, dtype), C.QUANT_SAVE_SHARD_BYTES if quantizing else 0)
    load_ram = base_ram + held + transient
    read_bytes = sum(M.component_bytes(c, "bf16", dtype) for c in spec.components)
    load_s = read_bytes / tp.disk_read + t_disk / tp.disk_read  # read the checkpoint; write offload files
    load = StagePeak("load", 0, load_ram, load_s)

    # --- encode ------------------------------------------------------------------------------------
    enc_vram = 0
    gpu_acts = [0]  # activations of what runs on the GPU in this stage, one computation at a time
    te_flops = passes * T.text_encoder_flops(spec.text_encoder) * C.QUANT_TIME_FACTOR[teq]
    if te_gpu:
        enc_vram += te_bytes
        gpu_acts.append(te_act)
        encode_s = te_bytes / tp.h2d_pageable + te_flops / tp.gpu_flops
    elif te_offload:
        # group offload without streams: one block on the GPU at a time, the rest (embedding) as one group
        enc_vram += M.rest_bytes(spec.text_encoder, teq, dtype) + M.block_bytes(spec.text_encoder, teq, dtype)
        gpu_acts.append(te_act)
        copy = passes * te_bytes / tp.h2d_pageable * C.NO_STREAM_COPY_FACTOR
        encode_s = copy + te_flops / tp.gpu_flops
    else:
        encode_s = te_flops / tp.cpu_flops
    enc_ram = base_ram + t_in_ram + vae_bytes + ie_bytes + (0 if te_gpu else te_bytes)
    cpu_acts = [0 if (te_gpu or te_offload) else te_act]
    if i2v:
        vae_enc = M.vae_peak_bytes(spec, h, w, f, tiled=tiled, encode=True)
        ie_act = M.image_encoder_activation_bytes(spec.image_encoder)
        flops = T.image_encoder_flops(spec.image_encoder)
        flops += T.vae_flops(spec, h, w, f, encode=True) * (T.tiling_overhead() if tiled else 1.0)
        if on_gpu:
            enc_vram += ie_bytes + vae_bytes
            enc_ram -= ie_bytes + vae_bytes
            gpu_acts += [ie_act, vae_enc]
            encode_s += (ie_bytes + vae_bytes) / tp.h2d_pageable + flops / tp.gpu_flops
        else:
            cpu_acts += [ie_act, vae_enc]
            encode_s += flops / tp.cpu_flops
    enc_vram += max(gpu_acts)
    enc_ram += max(cpu_acts)
    encode = StagePeak("encode", enc_vram, enc_ram, encode_s)

    # --- denoise -----------------------------------------------------------------------------------
    tokens = job.tokens
    forward_s = _forward_seconds(plan, spec, tokens, tp)
    den_ram = base_ram + te_bytes + ie_bytes + vae_bytes + pinned
    if on_gpu:
        den_vram = M.transformer_vram_bytes(
            spec, tq, tr.kind, tokens, tr.resident_blocks, tr.blocks_per_group, tr.use_stream, dtype
        )
        denoise_s = t_resident / tp.h2d_pageable + denoise_calls(job.steps, passes, cache) * forward_s
    else:
        den_vram = 0
        den_ram += M.transformer_activation_bytes(spec.dims, tokens, dtype)
        denoise_s = denoise_calls(job.steps, passes, cache) * forward_s
    denoise = StagePeak("denoise", den_vram, den_ram, denoise_s)

    # --- decode ------------------------------------------------------------------------------------
    out = M.video_bytes(h, w, f)
    dec_act = M.vae_peak_bytes(spec, h, w, f, tiled=tiled and vae_gpu)
    dec_flops = T.vae_flops(spec, h, w, f) * (T.tiling_overhead() if tiled and vae_gpu else 1.0)
    dec_ram = base_ram + t_in_ram + te_bytes + ie_bytes + 2 * out  # the video, then its uint8 frames
    if vae_gpu:
        dec_vram = vae_bytes + dec_act
        decode_s = vae_bytes / tp.h2d_pageable + dec_flops / tp.gpu_flops
    else:
        dec_vram = 0
        dec_ram += vae_bytes + dec_act
        decode_s = dec_flops / tp.cpu_flops
    decode = StagePeak("decode", dec_vram, dec_ram, decode_s)

    stages = (load, encode, denoise, decode)
    return stages, sum(s.seconds for s in stages)


def _forward_seconds(plan: Plan, spec: ModelSpec, tokens: int, tp: T.Throughput) -> float:
    """One transformer forward under the plan's placement."""
    n = spec.dims.num_layers
    block_flops = T.transformer_block_flops(spec, tokens)
    if plan.device != "cuda":
        return n * block_flops / tp.cpu_flops
    factor = C.QUANT_TIME_FACTOR[plan.transformer_quant]
    compute = block_flops / tp.gpu_flops * factor
    tr = plan.transformer
    block = M.block_bytes(spec.transformer, plan.transformer_quant, plan.dtype)
    copy = block / tp.h2d_pinned
    if tr.kind == "resident":
        return n * compute
    if tr.kind == "partial":
        streamed = n - tr.resident_blocks
        return tr.resident_blocks * compute + streamed * T.streamed_seconds(compute, copy)
    if tr.kind == "block_offload":
        if not tr.use_stream:
            return n * (compute + copy / C.PAGEABLE_OVER_PINNED * C.NO_STREAM_COPY_FACTOR)
        return n * T.streamed_seconds(compute, copy)
    if tr.kind == "leaf_offload":
        leaves = spec.transformer.whole.leaves
        return n * T.streamed_seconds(compute, copy, C.LEAF_INTERFERENCE) + leaves * C.LEAF_HOOK_SECONDS
    if tr.kind == "disk_offload":
        return n * T.streamed_seconds(compute, block / tp.disk_read)
    raise ValueError(f"unknown transformer placement {tr.kind!r}")
