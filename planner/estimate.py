"""Predict a plan's peaks (VRAM, RAM) and time per stage: load -> encode -> denoise -> decode.

The stages run one after another and a component is on the GPU only during its stage (the text and
image encoders and the first-frame VAE encode during `encode`, a denoiser during its denoise phase, the
VAE during `decode`), so a plan's peak is the largest stage (or phase) peak. A two-expert model's denoise
stage has two phases, one per expert: at the boundary the active expert leaves the GPU before the next
one arrives, so each phase holds one expert.

RAM is process memory that cannot be dropped (planner.memory): page-locked copies of streamed weights,
activations of what runs on the CPU, the video, load transients. Weights otherwise sit memory-mapped in
their files (page cache): when those files do not fit in RAM beside the process, reading them again costs
disk time at each use instead of memory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from lowvram.caching.estimate import CallCounts, denoise_calls
from lowvram.job import Job
from planner import constants as C
from planner import memory as M
from planner import timing as T
from planner.families import default_shift
from planner.plan import PHASE_OF, ComponentPlan, Plan, StagePeak
from planner.schedule import expert_steps
from planner.spec import ModelSpec


def passes_for(guidance: float) -> int:
    """Classifier-free guidance runs the transformer twice a step; <= 1 turns it off."""
    return 2 if guidance > 1.0 else 1


def cfg_passes(job: Job) -> int:
    return passes_for(job.guidance)


def shift_for(spec: ModelSpec, job: Job) -> float:
    return job.shift if job.shift is not None else default_shift(spec, job.width, job.height)[0]


def guidance_for(spec: ModelSpec, job: Job, denoiser: str) -> float:
    """The guidance a denoiser runs with: the low-noise expert's is --guidance-2 (the job's defaults fill it from
    the model card), else the same as the high-noise expert's (as diffusers does)."""
    if denoiser != "transformer_2":
        return job.guidance
    if job.guidance_2 is not None:
        return job.guidance_2
    return job.guidance


def phase_steps(spec: ModelSpec, job: Job) -> dict[str, int]:
    """Steps each denoiser runs: {'transformer': n} or, for two experts, split at the boundary."""
    if not spec.two_experts:
        return {"transformer": job.steps}
    high, low = expert_steps(job.steps, shift_for(spec, job), spec.boundary_ratio)
    return {"transformer": high, "transformer_2": low}


@dataclass(frozen=True)
class _Held:
    """What a plan keeps in process RAM at each point of the run (bytes)."""

    always: int  # pinned copies kept for the whole run
    per_phase: dict  # denoiser -> pinned bytes held only during its phase


def quantize_seconds(spec: ModelSpec, components) -> float:
    """Seconds a first run spends quantizing these denoisers: quanto on the CPU, the fast levels on the GPU."""
    return sum(spec.component(cp.name).params / (C.FAST_QUANTIZE_PARAMS_PER_SECOND if cp.fast else C.QUANTIZE_PARAMS_PER_SECOND)
               for cp in components)


def lora_footprints(plan: Plan, job: Job, name: str) -> tuple:
    """The footprints (lowvram.loras.LoraFootprint) of the job's LoRAs that apply to denoiser `name`."""
    return tuple(lora.footprint for lora in job.loras
                 if lora.footprint is not None and name in lora.components(plan.two_experts))


def lora_ram_bytes(plan: Plan, spec: ModelSpec, job: Job) -> tuple[int, int]:
    """(unfused adapters' host copies, fused weights that no longer map their file: memory.fused_heap_bytes):
    process RAM the LoRAs hold for the whole run."""
    adapters = fused = 0
    for cp in plan.denoisers:
        loras = lora_footprints(plan, job, cp.name)
        if cp.lora == "unfused":
            adapters += M.adapter_bytes(loras, cp.dtype)
        elif plan.device == "cuda":
            fused += M.fused_heap_bytes(spec, cp, loras)
    return adapters, fused


def cache_level(plan: Plan, job: Job, cp: ComponentPlan) -> str:
    """The quantized-cache entry a component needs, as ModelSpec.quantized_cached names it: its level, and for a
    denoiser with fused LoRAs the LoRA set ("int8@lora<key>": lowvram.loras.spec.lora_set_key)."""
    if cp.lora != "fused":
        return cp.precision
    from lowvram.loras.spec import lora_set_key

    return f"{cp.precision}@lora{lora_set_key(l for l in job.loras if cp.name in l.components(plan.two_experts))}"


def lora_forward_seconds(plan: Plan, cp: ComponentPlan, loras: tuple, tokens: int, tp: T.Throughput) -> float:
    """What unfused adapters add to one forward: their low-rank matmuls and the elementwise passes over each
    adapted layer's output (constants.LORA_*). Fused LoRAs add nothing."""
    if cp.lora != "unfused" or not loras:
        return 0.0
    flops = tokens * sum(f.flops_per_token for f in loras)
    if plan.device != "cuda":
        return flops / tp.cpu_flops
    traffic = tokens * sum(f.out_per_token for f in loras) * C.LORA_OUTPUT_PASSES * M.base_bytes(cp.dtype)
    bandwidth = tp.gpu_bandwidth or C.UNKNOWN_GPU_MEMORY_GBPS * 1e9 * C.MEMORY_EFFICIENCY
    return flops / (tp.gpu_flops * C.LORA_MATMUL_EFFICIENCY) + traffic / bandwidth


def lora_load_seconds(plan: Plan, job: Job, tp: T.Throughput) -> float:
    """Reading the LoRA files, and fusing on the CPU where the fused weights are not cached: a quantized
    denoiser's fused weights go to the quantized-weights cache (keyed by the LoRAs' hashes and scales) on the
    first run, like quantizing itself, which this model does not count either; unquantized ones fuse every run."""
    seconds = 0.0
    for cp in plan.denoisers:
        loras = lora_footprints(plan, job, cp.name)
        seconds += sum(f.params for f in loras) * 2 / tp.disk_read
        if cp.lora == "fused" and not cp.quantized:
            seconds += sum(f.target_params for f in loras) / C.LORA_FUSE_PARAMS_PER_SECOND
    return seconds


def _held(plan: Plan, spec: ModelSpec) -> _Held:
    always, per_phase = 0, {}
    for cp in plan.denoisers:
        if plan.device != "cuda":
            continue
        pinned = M.pinned_bytes(spec, cp)
        if cp.idle == "mmap" and not plan.experts_apart:
            per_phase[cp.name] = pinned
        else:
            always += pinned
    return _Held(always, per_phase)


def mapped_bytes(plan: Plan, spec: ModelSpec) -> int:
    """Bytes of weights at the plan's precision, memory-mapped from their files (page cache when read)."""
    return sum(M.component_bytes(spec.component(cp.name), cp.precision) for cp in plan.components if spec.get(cp.name))


def gpu_index(device: str) -> int:
    """'cuda:1' -> 1; anything else (the plan's own 'cuda', 'cpu') -> 0."""
    return int(device[5:]) if device.startswith("cuda:") and device[5:].isdigit() else 0


class _PerGpu:
    """VRAM of one stage on each GPU: weights add up per card, activations take the largest per card."""

    def __init__(self) -> None:
        self.weights: dict[int, int] = {}
        self.acts: dict[int, int] = {}

    def add(self, gpu: int, weights: int = 0, act: int = 0) -> None:
        self.weights[gpu] = self.weights.get(gpu, 0) + weights
        self.acts[gpu] = max(self.acts.get(gpu, 0), act)

    def totals(self, gpus: int) -> tuple[int, ...]:
        return tuple(self.weights.get(i, 0) + self.acts.get(i, 0) for i in range(gpus))


def _peak(stage: str, per_gpu: tuple[int, ...], ram: int, seconds: float, phase: str = "") -> StagePeak:
    """A StagePeak: vram_bytes the largest card's; the per-card list only when the plan uses several."""
    vram = max(per_gpu, default=0)
    return StagePeak(stage, vram, ram, seconds, phase, per_gpu if len(per_gpu) > 1 else ())


def denoiser_gpu_bytes(spec: ModelSpec, cp: ComponentPlan, tokens: int, loras: tuple = ()) -> dict[int, int]:
    """A denoiser's VRAM on each card while it computes: a layer split puts its non-block modules and the first
    blocks on its first device and the rest on the next ones (activations, and LoRA adapters, on every card
    they visit: counted on each, a slight over-estimate)."""
    if not cp.layer_split:
        return {gpu_index(cp.devices[0]) if cp.devices else 0: M.denoiser_vram_bytes(spec, cp, tokens, loras)}
    t = spec.component(cp.name)
    per_block = M.block_bytes(t, cp.precision)
    on_every = M.denoiser_vram_bytes(spec, cp, tokens, loras) - M.rest_bytes(t, cp.precision) - t.num_blocks * per_block
    out: dict[int, int] = {}
    for i, device in enumerate(cp.block_devices(t.num_blocks)):
        g = gpu_index(device)
        out[g] = out.get(g, on_every) + per_block
    first = gpu_index(cp.devices[0])
    out[first] = out.get(first, on_every) + M.rest_bytes(t, cp.precision)
    return out


def context_parallel_vram(spec: ModelSpec, cp: ComponentPlan, tokens: int, plan: Plan, loras: tuple = ()) -> int:
    """One rank's VRAM while the denoiser computes its share: activations of tokens / N, plus the collectives'
    buffers (ulysses: a copy of q, k, v; ring: the gathered k and v of the whole sequence)."""
    n = plan.parallel_gpus
    local = -(-tokens // n)
    d = spec.dims.dim
    buffers = 3 * local * d * 2 if plan.parallel == "ulysses" else 2 * tokens * d * 2
    return M.denoiser_vram_bytes(spec, cp, local, loras) + buffers


def predict(plan: Plan, spec: ModelSpec, job: Job, tp: T.Throughput, ram_budget: Optional[int] = None,
            cache: Optional[CallCounts] = None) -> tuple[tuple[StagePeak, ...], float]:
    """The plan's predicted StagePeaks (load, encode, denoise or its phases, decode) and total seconds.

    `ram_budget`: the RAM the planner may use; when the memory-mapped weights do not fit beside the
    process in it, they are read from disk again at each use (slower copies, same RAM). `cache`: the
    calls the job's step cache computes per denoiser (lowvram.caching), when known; a skipped call is
    counted as free.

    Several GPUs: each stage's VRAM is counted per card (StagePeak.vram_per_gpu). A context-parallel plan runs
    one process per GPU: each holds the one-GPU placement and computes 1/N of the tokens; RAM adds up over the
    processes (memory-mapped weights are shared page cache); only the first process decodes and writes.
    """
    on_gpu = plan.device == "cuda"
    ranks = plan.parallel_gpus if plan.parallel else 1
    # cards one process uses (a context-parallel process uses one: its own)
    cards = 1 if plan.parallel or not on_gpu else max(plan.gpus, default=0) + 1
    base_ram = C.PROCESS_RAM_BASE_CPU + (C.PROCESS_RAM_CUDA_EXTRA if on_gpu else 0)
    h, w, f = job.height, job.width, job.frames
    tokens = spec.tokens(w, h, f)
    held = _held(plan, spec)
    # what the LoRAs hold all run counts as RAM at every stage (not as pinned weights: no page-locking time);
    # fused weights replace their mapped pages
    adapters, fused = lora_ram_bytes(plan, spec, job)
    base_ram += adapters + fused
    te = plan.component("text_encoder")
    vae = plan.component("vae")
    ie = plan.get("image_encoder")
    image_input = job.image is not None or spec.task == "i2v"
    te_gpu = on_gpu and te.placement == "gpu"
    te_offload = on_gpu and te.placement == "offload"
    vae_gpu = on_gpu and vae.placement in ("gpu", "gpu_tiled")
    tiled = vae.placement == "gpu_tiled"
    te_bytes = M.component_bytes(spec.text_encoder, te.precision)
    vae_bytes = M.component_bytes(spec.vae, vae.precision)
    ie_bytes = M.component_bytes(spec.image_encoder, ie.precision) if ie is not None and spec.image_encoder else 0
    te_at, vae_at = gpu_index(plan.device_of("text_encoder")), gpu_index(plan.device_of("vae"))
    te_tp, vae_tp = tp.on(te_at), tp.on(vae_at)  # each computes at its own card's pace

    def every_rank(per_gpu: tuple[int, ...]) -> tuple[int, ...]:
        """A context-parallel stage runs the same on every process, each on its own GPU."""
        return per_gpu * ranks

    # Copies from memory-mapped weights: page cache (pageable speed) when it all fits in RAM, else disk.
    peak_heap_guess = ranks * (base_ram + held.always + max(held.per_phase.values(), default=0)) + 2 * M.video_bytes(h, w, f)
    cached = ram_budget is None or mapped_bytes(plan, spec) - fused + peak_heap_guess <= ram_budget

    def from_map_to(card: T.Throughput) -> float:
        return card.h2d_pageable if cached else min(card.h2d_pageable, card.disk_read) if on_gpu else card.disk_read

    def pin_rate_to(card: T.Throughput) -> float:
        return min(from_map_to(card), C.PIN_BPS)

    pin_rate = pin_rate_to(tp)

    # --- load --------------------------------------------------------------------------------------
    precisions = {cp.name: cp.precision for cp in plan.components}
    to_quantize = [cp for cp in plan.components if cp.quantized and spec.get(cp.name)
                   and (cp.name, cache_level(plan, job, cp)) not in spec.quantized_cached]
    quantized = [M.component_bytes(spec.component(cp.name), cp.precision) for cp in to_quantize]
    # first run: a component is quantized whole in RAM, saved to the weights cache shard by shard, and swapped
    # for the cache's memory-mapped copy (one at a time); later runs load the cache
    transient = max([M.staging_bytes(spec, precisions)] + [q + C.QUANT_SAVE_SHARD_BYTES for q in quantized])
    transient += max((sum(f.params for f in lora_footprints(plan, job, cp.name)) for cp in plan.denoisers),
                     default=0) * C.LORA_LOAD_BYTES_PER_PARAM  # one LoRA file's tensors and their converted copy
    # a context-parallel run loads one process at a time (the first one fills lowvram's caches, the others read them)
    load_ram = ranks * (base_ram + held.always) + transient
    read_bytes = sum(M.component_bytes(c, "bf16") for c in spec.components)
    disk_offload = sum(M.denoiser_split(spec, cp)[2] for cp in plan.denoisers) if on_gpu else 0
    load_s = C.LOAD_FIXED_SECONDS + read_bytes / tp.disk_read + disk_offload / tp.disk_read  # read the checkpoint; write offload files
    load_s += quantize_seconds(spec, to_quantize)
    load_s += held.always / pin_rate if on_gpu else 0.0  # page-lock the weights streamed all run
    load_s += lora_load_seconds(plan, job, tp)
    stages = [_peak("load", (0,) * cards * ranks, load_ram, load_s)]

    # --- encode ------------------------------------------------------------------------------------
    te_passes = passes_for(max(job.guidance, guidance_for(spec, job, "transformer_2")))
    te_act = M.text_encoder_activation_bytes(spec.text_dims, dtype=te.dtype)
    te_flops = te_passes * T.text_encoder_flops(spec.text_encoder) * tp.time_factor(te.precision)
    enc = _PerGpu()
    cpu_acts = [0]
    if te_gpu:
        enc.add(te_at, te_bytes, te_act)
        encode_s = te_bytes / from_map_to(te_tp) + te_flops / te_tp.gpu_flops
    elif te_offload:
        # group offload without streams: one block on the GPU at a time, the rest (embedding) as one group
        enc.add(te_at, M.rest_bytes(spec.text_encoder, te.precision) + M.block_bytes(spec.text_encoder, te.precision), te_act)
        encode_s = te_passes * te_bytes / from_map_to(te_tp) * C.NO_STREAM_COPY_FACTOR + te_flops / te_tp.gpu_flops
    else:
        cpu_acts.append(te_act)
        encode_s = te_flops / tp.cpu_flops
    if image_input:
        # Wan2.1/2.2 I2V encode the first frame padded with zeros to the whole video; TI2V the first frame alone
        enc_frames = 1 if spec.expand_timesteps else f
        vae_enc = M.vae_peak_bytes(spec, h, w, enc_frames, tiled=tiled, encode=True, precision=vae.precision)
        acts = [vae_enc]
        moved = vae_bytes
        ie_flops = 0.0
        if ie is not None and spec.image_encoder is not None:
            acts.append(M.image_encoder_activation_bytes(spec.image_encoder))
            ie_flops = T.image_encoder_flops(spec.image_encoder)
            moved += ie_bytes
        if vae_gpu:
            enc.add(vae_at, moved, max(acts))
            encode_s += (moved / from_map_to(vae_tp) + ie_flops / vae_tp.gpu_flops
                         + T.vae_gpu_seconds(spec, h, w, enc_frames, vae_tp, vae.precision, tiled, encode=True))
        else:
            cpu_acts += acts
            encode_s += (T.vae_flops(spec, h, w, enc_frames, encode=True) + ie_flops) / tp.cpu_flops
    enc_ram = ranks * (base_ram + held.always + max(cpu_acts))
    stages.append(_peak("encode", every_rank(enc.totals(cards)), enc_ram, encode_s))
    # A text encoder that computed on the GPU (quantized or not) points at its CPU tensors again when it leaves
    # (lowvram.placement.apply._move_whole): no RAM beyond them. Run 17's +6.8 GiB after the encode, once read as
    # an int8 UMT5 back in the heap, was the pinned copies of the blocks an out-of-memory fallback streamed; run 19
    # (no fallback) measured +0.3 GiB from the encode to the denoise (docs/benchmarks.md).

    # --- denoise (one phase per denoiser) ------------------------------------------------------------
    steps = phase_steps(spec, job)
    compiled = False  # both experts have one block shape: the first compiled phase pays for both
    apart = plan.experts_apart
    earlier_compute = 0.0
    for cp in plan.denoisers:
        n = steps.get(cp.name, 0)
        passes = passes_for(guidance_for(spec, job, cp.name))
        loras = lora_footprints(plan, job, cp.name)
        # adapters, like the base weights, run on this process's tokens only (1/N of them under context parallel)
        card = slowest_card(plan, cp, tp)
        forward_s = forward_seconds(plan, cp, spec, tokens, tp) + lora_forward_seconds(plan, cp, loras, -(-tokens // ranks), card)
        ram = ranks * (base_ram + held.always + held.per_phase.get(cp.name, 0))
        if on_gpu:
            den = _PerGpu()
            if plan.parallel:
                den.add(0, context_parallel_vram(spec, cp, tokens, plan, loras))
            else:
                for g, b in denoiser_gpu_bytes(spec, cp, tokens, loras).items():
                    den.add(g, b)
            if apart:  # the other expert is on its own card too (weights only) for the whole stage
                for other in plan.denoisers:
                    if other is not cp:
                        for g, b in denoiser_gpu_bytes(spec, other, 0, lora_footprints(plan, job, other.name)).items():
                            den.add(g, b)
            resident, streamed, _ = M.denoiser_split(spec, cp)
            switch = resident / from_map_to(card) + (streamed / pin_rate_to(card) if cp.idle == "mmap" else 0.0)
            compute = denoise_calls(n, passes, cache, cp.name) * forward_s
            if apart and cp is not plan.denoisers[0]:
                # it was copied to its card in the background while the first expert computed
                switch = max(0.0, switch - earlier_compute)
            earlier_compute = compute
            seconds = switch + compute
            per_gpu = every_rank(den.totals(cards))
        else:
            per_gpu = (0,) * ranks
            ram += ranks * M.transformer_activation_bytes(spec.dims, -(-tokens // ranks), cp.dtype, spec.expand_timesteps)
            if cp.lora == "unfused":
                ram += ranks * M.adapter_activation_bytes(loras, -(-tokens // ranks), cp.dtype)
            seconds = denoise_calls(n, passes, cache, cp.name) * forward_s
        if cp.compile and not compiled and n > 0:
            seconds += compile_seconds(plan, tp)
            compiled = True
        phase = PHASE_OF[cp.name] if plan.two_experts else ""
        stages.append(_peak("denoise", per_gpu, ram, seconds, phase))

    # --- decode (the first process only) -------------------------------------------------------------
    out = M.video_bytes(h, w, f)
    dec_act = M.vae_peak_bytes(spec, h, w, f, tiled=tiled and vae_gpu, precision=vae.precision)
    dec_ram = base_ram + held.always + 2 * out  # the video, then its uint8 frames
    dec = _PerGpu()
    if vae_gpu:
        dec.add(vae_at, vae_bytes, dec_act)
        decode_s = vae_bytes / from_map_to(vae_tp) + T.vae_gpu_seconds(spec, h, w, f, vae_tp, vae.precision, tiled)
    else:
        dec_ram += dec_act
        decode_s = T.vae_flops(spec, h, w, f) / tp.cpu_flops
    stages.append(_peak("decode", dec.totals(cards) + (0,) * (ranks - 1), dec_ram, decode_s))
    return tuple(stages), sum(s.seconds for s in stages)


def compile_seconds(plan: Plan, tp: T.Throughput) -> float:
    """Compiling the denoisers' blocks once (the first compiled forward pays it; both experts share it)."""
    compiled = [cp for cp in plan.denoisers if cp.compile]
    return tp.compile_seconds_for(compiled[0].precision) if compiled and plan.device == "cuda" else 0.0


def block_compute_seconds(cp: ComponentPlan, spec: ModelSpec, tokens: int, tp: T.Throughput) -> float:
    """One block's compute on the GPU at `cp`'s precision, compiled or not (placement-independent part
    of the compile gain: see forward_seconds)."""
    flops = T.transformer_block_flops(spec, tokens)
    if cp.fast and cp.compile:
        # fp8 / int8 matmuls speed up the Linear FLOPs only; unknown speed (ruled out anyway) counts as bf16
        linear = T.linear_flops(spec, tokens)
        factor = tp.fast_factor(cp.precision)
        return (flops - linear + linear * (factor if factor is not None else 1.0)) / tp.gpu_flops
    return flops / tp.gpu_flops * tp.time_factor(cp.precision)


def gpus_of(plan: Plan, cp: ComponentPlan) -> tuple[int, ...]:
    """The GPUs denoiser `cp` computes on: every rank's under context parallel, each card of a layer split, else
    its own (GPU 0 on a one-GPU plan)."""
    if plan.parallel:
        return tuple(range(plan.parallel_gpus))
    return tuple(gpu_index(d) for d in cp.devices) if cp.layer_split else (gpu_index(plan.device_of(cp.name)),)


def slowest_card(plan: Plan, cp: ComponentPlan, tp: T.Throughput) -> T.Throughput:
    """The throughput of the slowest card denoiser `cp` computes on (what holds up a step that waits for all)."""
    return min((tp.on(g) for g in gpus_of(plan, cp)), key=lambda card: card.gpu_flops)


def forward_seconds(plan: Plan, cp: ComponentPlan, spec: ModelSpec, tokens: int, tp: T.Throughput) -> float:
    """One forward of denoiser `cp` under its placement (compiled: its compute at the placement's compile factor;
    the copies are not faster), on the card(s) it computes on, each at its own pace. Context parallel: the
    slowest process's share of the work (every step waits for it) plus the collectives; a layer split: each
    card's blocks at that card's pace, plus the activations crossing between cards."""
    link = min(tp.on(g).gpu_link for g in gpus_of(plan, cp))
    if plan.parallel:
        # each process computes 1/N of the work (its tokens against all of them) and streams what it streams
        n = plan.parallel_gpus
        shares = (replace(card, gpu_flops=card.gpu_flops * n, cpu_flops=card.cpu_flops * n)
                  for card in (tp.on(g) for g in range(n)))
        return max(_forward_one_gpu(plan, cp, spec, tokens, share) for share in shares) + \
            T.context_parallel_comm_seconds(spec, tokens, n, plan.parallel, link)
    if cp.layer_split and plan.device == "cuda":
        blocks = cp.block_devices(spec.component(cp.name).num_blocks)
        one = sum(blocks.count(d) / len(blocks) * _forward_one_gpu(plan, cp, spec, tokens, tp.on(gpu_index(d)))
                  for d in cp.devices)
        return one + (len(cp.devices) - 1) * T.layer_split_crossing_bytes(spec, tokens) / link
    return _forward_one_gpu(plan, cp, spec, tokens, tp.on(gpus_of(plan, cp)[0]))


def _forward_one_gpu(plan: Plan, cp: ComponentPlan, spec: ModelSpec, tokens: int, tp: T.Throughput) -> float:
    n = spec.dims.num_layers
    if plan.device != "cuda":
        return n * T.transformer_block_flops(spec, tokens) / tp.cpu_flops
    compute = block_compute_seconds(cp, spec, tokens, tp)
    if cp.compile:
        compute *= tp.compile_factor(cp.placement)
    block = M.block_bytes(spec.component(cp.name), cp.precision)
    copy = block / tp.h2d_pinned
    kind = cp.placement
    if kind == "resident":
        return n * compute
    if kind == "partial":
        streamed = n - cp.resident_blocks
        return cp.resident_blocks * compute + streamed * T.streamed_seconds(compute, copy, cp.precision)
    if kind == "block_offload":
        if not cp.use_stream:
            return n * (compute + copy / C.PAGEABLE_OVER_PINNED * C.NO_STREAM_COPY_FACTOR)
        return n * T.streamed_seconds(compute, copy, cp.precision)
    if kind == "leaf_offload":
        leaves = spec.component(cp.name).whole.leaves
        return n * T.leaf_streamed_seconds(compute, copy) + leaves * C.LEAF_HOOK_SECONDS
    if kind == "disk_offload":
        read = block / tp.disk_read
        return n * (T.streamed_seconds(compute, read, cp.precision) + C.DISK_INTERFERENCE * min(compute, read))
    raise ValueError(f"unknown denoiser placement {kind!r}")


__all__ = ["block_compute_seconds", "cfg_passes", "compile_seconds", "context_parallel_vram", "denoiser_gpu_bytes",
           "forward_seconds", "gpu_index", "gpus_of", "guidance_for", "lora_footprints", "lora_forward_seconds",
           "lora_load_seconds", "lora_ram_bytes", "mapped_bytes", "passes_for", "phase_steps", "predict", "shift_for",
           "slowest_card"]
