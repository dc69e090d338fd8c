"""Every fitted or assumed number of the memory and time models, in one place so that it can be refit.

Each constant says where it comes from:
- "REFERENCE.md anchor": fitted to the H200 measurements in /work/shared/REFERENCE.md
  (random-weight real shapes, one forward at 480x832x81 = 32,760 tokens). Refit from docs/benchmarks.md
  measurements when the bench lands.
- "meta trace": computed on the CPU by running the real diffusers module on the meta device while
  summing the bytes of live tensors (shapes only, no weights) or counting FLOPs (torch FlopCounterMode).
  It excludes the CUDA caching allocator's slack, which the VRAM reserve covers.
- "datasheet": a vendor's published number.
- "estimate": reasoned, not measured; the first candidates to refit.
"""

from __future__ import annotations

GIB = 1024**3
GB = 1e9

# --- Weights ---------------------------------------------------------------------------------------
# Bytes per nn.Linear weight parameter after quantization with optimum-quanto (everything else in a
# quantized module stays in the plan's dtype). REFERENCE.md anchor: the 1.3B transformer, quanto
# qint8 / qfloat8 / qint4 all on GPU: 1.38 / 1.38 / 0.82 GiB for 1,417.6 M Linear parameters (the rest,
# 1.4 M, in bf16). Includes quanto's scales (per row at 8 bit, per group of 128 with shift at 4 bit).
QUANT_BYTES_PER_LINEAR_PARAM: dict[str, float] = {"bf16": 2.0, "fp8": 1.0433, "int8": 1.0433, "int4": 0.6192}
DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}

# --- Transformer activations ----------------------------------------------------------------------
# Peak activation bytes of one transformer forward = tokens * (A_DIM * dim + A_FFN * ffn_dim), bf16,
# SDPA attention (memory linear in tokens). cond and uncond run one after the other, so no x2.
# REFERENCE.md anchor: all-on-GPU peaks 4.17 GiB (1.3B: dim 1536, ffn 8960) and 30.1 GiB (14B: dim 5120,
# ffn 13824) minus their bf16 weights (2.643 / 26.615 GiB) at 32,760 tokens: two equations, two unknowns.
# Confirmed by the bench run in docs/benchmarks.md (H200, 8 points, 1.3B and 14B at 8,190-75,600
# tokens): a least-squares refit gives 13.73 / 3.156 and these values stay within 2% of every point.
# Check (tests/test_planner_memory.py): block+stream 1.75 / 5.25 GiB and block no-stream 1.66 / 4.59 GiB
# are reproduced within 1%, leaf+stream 1.55 / 3.50 GiB within +2% / +8% (over: the safe side).
ACT_BYTES_PER_TOKEN_DIM = 13.465
ACT_BYTES_PER_TOKEN_FFN = 3.2773
# Streamed placements keep this many groups on the GPU: the one computing and the one being prefetched
# (REFERENCE.md anchor: block+stream = rest + 2 blocks + activations, block no-stream = rest + 1 block).
STREAM_BUFFER_GROUPS = 2
# Page-locked host RAM per byte of streamed weights. Bench (docs/benchmarks.md, H200, diffusers group
# offload with streams): 1.43 (1.3B) and 1.52 (14B): tensor.pin_memory() goes through torch's caching host
# allocator, which rounds each tensor up to a power of two. The larger is kept (RAM short = a failed run).
PINNED_RAM_PER_WEIGHT_BYTE = 1.52

# --- Text and image encoders ------------------------------------------------------------------------
# UMT5 encoder peak activations for one 512-token prompt: the per-layer relative position bias and
# attention scores (heads x L x L, fp32) plus the gated FFN's intermediates (3 x L x d_ff, bf16).
# Estimate from shapes (~0.2 GiB for UMT5-XXL); it is small next to the 11 GiB of weights.
TE_SCORE_COPIES = 3
TE_FFN_COPIES = 3
# CLIP ViT-H activations for one 224 px image (257 tokens): estimate from shapes, all hidden states
# kept (the pipeline reads the second to last): 33 x 257 x 1280 x 4 B, plus scores 16 x 257^2 x 4 B x 3.
IMAGE_ENCODER_KEEPS_HIDDEN_STATES = 33

# --- VAE (AutoencoderKLWan, float32 as lowvram.models.loading loads it) ---------------------------------
# Peak live bytes per output pixel (H x W) = alpha + beta * frames. Meta trace of diffusers'
# AutoencoderKLWan (base_dim 96) decode/encode at 480x832 and 720x1280, 9/33/81 frames; bytes per pixel
# were the same at both resolutions within 0.1%. Cross-check: Wan2.1's own report of 8.19 GB peak for
# 1.3B at 480p (REFERENCE.md) vs 8.17 GB from the untiled decode here. Scaled by base_dim / 96 for other VAEs.
# Decode coefficients rescaled to the GPU (bench, docs/benchmarks.md, H200, fp32, random weights): measured
# peaks above weights were 1.15x the meta trace untiled (2.14 GiB at 240x416x33, 8.76 GiB at 480x832x81)
# and tiled at 240x416x33 (1.31 GiB; one-tile bound), 1.10x tiled at 480x832x81 (1.87 GiB): cuDNN conv3d
# workspaces and allocator rounding that a meta trace does not see. Meta trace was (19458, 12.25) / (3167, 17.2).
VAE_DECODE_BYTES_PER_PIXEL = (22474.0, 14.15)
# Inside lowvram's runner (bench wan22 runs 11-12, docs/benchmarks.md, H200, 480x832x81 untiled, after the
# experts left the GPU) the decode's peak follows the room there is: cuDNN picks convolution algorithms with
# larger workspaces when memory is free. Under a 16 GiB cap it peaked at 9.73 GiB allocated (9.26 above the
# weights: x1.05 the coefficients above), under 24 GiB caps at 13.40 and 17.58. The constrained figure is the
# need; the rest is workspace cuDNN gives back up when memory is short.
VAE_DECODE_RUNTIME_FACTOR = 1.05
VAE_DECODE_TILED_BYTES_PER_PIXEL = (3493.0, 18.97)
VAE_ENCODE_BYTES_PER_PIXEL = (14080.0, 12.5)
VAE_ENCODE_TILED_BYTES_PER_PIXEL = (2316.0, 12.7)
VAE_REFERENCE_BASE_DIM = 96
# Wan2.2's VAE (TI2V-5B: 16x compression by a 2x2 patchify, decoder_base_dim 256, residual up/down
# shortcuts) against the Wan2.1 coefficients above scaled by width and patch (memory._vae_scale): bench
# wan22 run 13 (docs/benchmarks.md, H200, fp32, random weights, 1280x704x121) measured 21.04 GiB untiled and
# 5.69 GiB tiled above the weights where the scaled coefficients said 14.21 and 3.40. Its extra shortcut
# tensors and wider top level are what the Wan2.1 fit does not see; the measured ratios are applied to
# patchified VAEs. Encode was not measured: it takes the untiled ratio (same blocks, same shortcuts).
VAE_PATCHIFIED_FACTOR_UNTILED = 21.04 / 14.21
VAE_PATCHIFIED_FACTOR_TILED = 5.69 / 3.40
# diffusers' default tile (sample pixels) and stride: below one tile, tiling changes nothing.
VAE_TILE = 256
VAE_TILE_STRIDE = 192
# FLOPs per output pixel-frame of a decode (meta trace with FlopCounterMode: 8.9e6 at 64-128 px, 5-9 frames).
VAE_DECODE_FLOPS_PER_PIXEL = 8.9e6
VAE_ENCODE_FLOPS_PER_PIXEL = 4.5e6  # estimate: the encoder has about half the decoder's convolutions
# The VAE on the GPU (planner.timing.vae_gpu_seconds): the share of the GPU's matmul rate its convolutions reach,
# over the Wan2.1 decoder's FLOPs per pixel, for both Wan VAEs. H200: fp32 untiled decodes took 2.85 s (Wan2.1 VAE,
# 832x480x81, run 5) and 9.43 s (Wan2.2 VAE, 1280x704x121, run 13), 0.20 and 0.21 of 5.0e14 FLOP/s; the model
# without this factor predicted 0.62 s and 3.70 s. Tiled, measured: 5.35 s and 18.57 s (the tile overlap's 1.78x
# predicts 5.09 s and 17.2 s).
VAE_GPU_EFFICIENCY = 0.20
# A bf16 VAE's time over an fp32 one's on the GPU: run 19, the Wan2.2 VAE tiled at 1280x704x121: 15.6 s (bf16,
# lowvram's decode with its per-frame progress) vs 18.57 s (fp32, diffusers' tiled decode, run 13).
VAE_BF16_TIME = 0.84

# --- Loading ------------------------------------------------------------------------------------
# Quantizing at load (first run) writes lowvram.placement.quant_cache's shards; safetensors serializes one whole
# shard in memory, so the transient is one shard (lowvram.placement.quant_cache.SHARD_BYTES, 2 GiB). Bench
# (docs/benchmarks.md, Loading): checkpoints load memory-mapped (page cache, not heap); the cached int8
# load peaks at 1.2x its size, quantizing at load at 1.8x in heap.
QUANT_SAVE_SHARD_BYTES = 2 * GIB
# quanto quantizing a component at load (first run only; later runs load the cache): bench wan22 run (H200
# host CPU) quantized two 14.3 B-param experts to int8 in ~145 s: 0.2 B params/s.
QUANTIZE_PARAMS_PER_SECOND = 0.2e9
# torchao's fast levels, quantized one block at a time on the GPU (lowvram.placement.fast_quant.quantize_fast):
# `lowvram bench fp8-compile` (run 21, H200 host, 14B blocks) 0.47-0.55 B params/s with the copies there and
# back, against 0.36 B params/s for torchao on the host's CPU; the lower figure
FAST_QUANTIZE_PARAMS_PER_SECOND = 0.47e9
# What loading costs besides reading the weights: importing diffusers and transformers, building each component
# (on the meta device, then assigning the mapped tensors), the tokenizer and the scheduler. The demo model, whose
# weights take no time to read, loads in 3.9 s on the 2-core CI machine (`lowvram generate` on tiny-random, its
# "predicted vs measured" table; it showed a predicted 0.0 s); a desktop CPU is faster: 3 s.
LOAD_FIXED_SECONDS = 3.0

# --- Time -----------------------------------------------------------------------------------------
# Dense bf16 tensor-core throughput with fp32 accumulation (datasheet: NVIDIA Hopper/Ampere/Ada
# whitepapers; GeForce cards run fp32-accumulate at half their fp16-accumulate rate). Matched on the
# GPU name, first match wins.
GPU_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("RTX 6000 Ada", 364.0),
    ("A6000", 155.0),
    ("RTX 4090", 165.2),
    ("RTX 4080", 97.5),
    ("RTX 4070 Ti", 80.2),
    ("RTX 4070", 58.3),
    ("RTX 4060 Ti", 44.1),
    ("RTX 4060", 30.1),
    ("RTX 3090", 71.0),
    ("RTX 3080", 59.5),
    ("RTX 3070", 40.6),
    ("RTX 3060", 25.6),
)
UNKNOWN_GPU_BF16_TFLOPS = 25.6  # estimate: assume the slowest card of the table rather than a fast one
# Memory bandwidth, GB/s (datasheet: NVIDIA product pages; H100 SXM5, A100 80 GB SXM4). Matched like the table
# above. Elementwise work (unfused LoRA adapters add, scale and write whole outputs) runs at this speed.
GPU_MEMORY_GBPS: tuple[tuple[str, float], ...] = (
    ("H200", 4800.0),
    ("H100", 3350.0),
    ("A100", 2039.0),
    ("L40S", 864.0),
    ("RTX 6000 Ada", 960.0),
    ("A6000", 768.0),
    ("RTX 4090", 1008.0),
    ("RTX 4080", 716.8),
    ("RTX 4070 Ti", 504.2),
    ("RTX 4070", 504.2),
    ("RTX 4060 Ti", 288.0),
    ("RTX 4060", 272.0),
    ("RTX 3090", 936.2),
    ("RTX 3080", 760.3),
    ("RTX 3070", 448.0),
    ("RTX 3060", 360.0),
)
UNKNOWN_GPU_MEMORY_GBPS = 360.0  # estimate: the slowest card of the table, as for TFLOPS
# Achieved fraction of the datasheet bandwidth by large elementwise kernels (estimate: ~80% is what
# bandwidth tests reach on these GPUs); refit from `lowvram bench lora`.
MEMORY_EFFICIENCY = 0.8
# Achieved fraction of the datasheet rate over a whole forward. Bench (docs/benchmarks.md, H200, all on
# GPU, bf16, SDPA): 1.3B 0.618 s at 32,760 tokens / 2.468 s at 75,600; 14B 3.266 s / 12.253 s, against
# the FLOPs of planner.timing.transformer_flops: 0.463, 0.512, 0.520, 0.538; the mean. (REFERENCE.md's
# anchors 0.54 s / 2.89 s gave 0.56.)
MATMUL_EFFICIENCY = 0.508
# Host-to-device copy bandwidth, bytes/s. Bench (docs/benchmarks.md, H200, PCIe 5, 1 GiB copies): pinned
# 55.5 GB/s, pageable 10.5 GB/s (REFERENCE.md: 55 / 9.8). Consumer cards on PCIe 4 x16: 31.5 GB/s on the wire, ~25 GB/s achieved (estimate,
# ~80% of the link as on the H200's PCIe 5 link: 55 of 63 GB/s); pageable keeps the H200's ratio.
H2D_PINNED_DATACENTER = 55.5 * GB
H2D_PINNED_CONSUMER = 25 * GB
PAGEABLE_OVER_PINNED = 10.5 / 55.5
DATACENTER_GPU_MARKERS = ("H200", "H100", "A100", "L40", "A6000", "RTX 6000")
# A streamed block costs max(compute, copy) + a fixed cost per streamed block: group offload's hooks wait on the
# copy's event and swap the group's tensors in and out, about twice as long for torchao's fast weights (two
# tensors per Linear layer). Measured (H200, docs/benchmarks.md) as a partial plan's step over the same plan
# all resident, per streamed block: bf16 0.8-1.0 ms (14B, compiled, runs 19-20), 1.0 ms (1.3B, eager, run 20);
# fp8_fast 2.0 ms (14B, run 19), 1.9 ms (1.3B, run 20), compiled; lowvram's block offload of run 8 gave
# 0.45 ms (1.3B) / 0.9 ms (14B). None of it grew with the block's copy time (0.8-12.6 ms): the earlier model,
# 0.18 x min(compute, copy) fitted to run 8, gave the 1.3B's streamed blocks 0.15-0.3 ms and predicted its
# partial plans 12-19% fast. (Upstream diffusers block x1 + stream copies the non-block part in and out every
# forward too: 0.728 / 0.705 of the copy time in run 8, REFERENCE.md 0.63.)
STREAMED_BLOCK_SECONDS = 1.0e-3
STREAMED_FAST_BLOCK_SECONDS = 2.0e-3
# Disk offload reads each streamed block from its file while the one before computes: at NVMe rates the read
# takes about as long as a block's compute on a consumer card, where the two contend (page cache, CPU, PCIe).
# Not measured: the copy-proportional interference of the earlier model (run 8's fit) is kept for it.
DISK_INTERFERENCE = 0.18
# Leaf-level offload: a fixed cost per leaf hook per forward plus interference. Bench (docs/benchmarks.md,
# H200): diffusers leaf + stream 1.042 (1.3B, 488 leaves) and 1.023 (14B, 648 leaves) of the all-on-GPU
# step: two equations, two unknowns (lowvram.bench.fit). REFERENCE.md's 1.13 / 1.09 had given 0.376 / 1.05e-4.
LEAF_INTERFERENCE = 0.088
LEAF_HOOK_SECONDS = 4.46e-5
# Group offload without streams (pageable copies, nothing overlapped): REFERENCE.md anchor block x1
# no stream, 14B: 20.3 s vs 2.89 s compute and 2.9 s of pageable copy = 5.9x the copy time (1.3B: 1.8x;
# the larger factor is kept: it is the one that hurts).
NO_STREAM_COPY_FACTOR = 5.9
# Page-locking weights read from their (memory-mapped) files before streaming them: a host copy into
# cudaHostAlloc'ed memory. Estimate (half the H200's pageable copy rate); refit from the Wan2.2 bench.
PIN_BPS = 5.0 * GB
# Disk offload reads the streamed weights from a file each forward. Estimate: a PCIe 3 NVMe SSD's
# sequential read (2-3.5 GB/s); SATA SSDs are 4x slower.
DISK_READ_BPS = 2.0 * GB
# CPU matmul throughput. Estimate for an 8-core desktop with AVX2 (bf16 converted to fp32);
# `lowvram calibrate` measures it.
CPU_FLOPS = 2.0e11
# quanto kernels: time of a forward relative to bf16 at the same placement. REFERENCE.md anchor (H200):
# qint8 1.09, qfloat8 1.28, qint4 5.8 (all on GPU).
QUANT_TIME_FACTOR: dict[str, float] = {"bf16": 1.0, "int8": 1.09, "fp8": 1.28, "int4": 5.8,
                                       # a single file kept as stored (fp8 / GGUF, upcast per layer): estimate,
                                       # between quanto's int8 and fp8; not measured yet
                                       "stored": 1.2}
# A float32 transformer (--prefer quality) runs its matmuls on the CUDA cores (torch leaves TF32 off for
# matmuls): datasheet fp32 vs dense bf16 tensor rates. GeForce (Ampere/Ada): 35.6 vs 71 (RTX 3090), 82.6 vs
# 165 (RTX 4090) TFLOPS: 2x. Data-centre Hopper: 67 vs 989: ~15x.
FP32_TIME_FACTOR_CONSUMER = 2.0
FP32_TIME_FACTOR_DATACENTER = 15.0
# fp8 matmul needs compute capability 8.9 (Ada, Hopper); below, quanto falls back to slow paths.
FP8_MIN_COMPUTE_CAPABILITY = (8, 9)

# --- Regional compile and fast quantized matmuls (issue 13) ------------------------------------------
# Regional compile (lowvram.placement.compile: torch.compile of each repeated block's forward, offload hooks
# outside the compiled region): a forward's compute time is multiplied by this, per denoiser placement.
# REFERENCE.md anchors (H200, 480p): resident x0.83 (1.3B) / x0.86 (14B): the mean. Block offload with streams
# + compile ran the 1.3B at x0.92 of eager resident where the same recipe eager ran x1.06: upstream copies
# the non-block part in every forward, which compile does not speed up; on the compute alone that is the
# same factor (0.83 x 1.0 + 0.06 = 0.89 ~ 0.92), so streamed kinds keep it (the benchmark refits each kind:
# `python -m lowvram bench fast`). Leaf offload: no gain (its per-layer hooks split the block and hit torch's
# recompile limit; REFERENCE.md), so the planner never compiles it and ComponentPlan refuses it.
COMPILE_COMPUTE_FACTOR: dict[str, float] = {"resident": 0.845, "partial": 0.845, "block_offload": 0.845,
                                            "disk_offload": 0.845, "leaf_offload": 1.0}
# Compiling the blocks once per process, paid by the first forward of the first denoiser (both experts of a
# Wan2.2 A14B model have one block shape: one compile), per precision of the blocks' weights. Cold: inductor
# compiles the block graph; warm: dynamo traces it again and inductor loads it from its FX graph cache under
# lowvram's cache folder (an earlier run of the same shapes, GPU and torch). H200, the first compiled forward's
# extra time (docs/benchmarks.md): bf16 10-12 s cold (14B, 1.3B; runs 20-22), 1.9 s warm (1.3B, a second
# process); fp8_fast 9.4 s cold (14B block graph, run 22 `lowvram bench fp8-compile`, a fresh inductor cache, bf16
# 10.6 s beside it) and ~1 s warm (in process). fp8_fast was 152-212 s in runs 20-21 only because torchao's
# quantize_ switched on inductor's coordinate-descent tuning (174 s the same graph in run 22 with it on, for the
# same step); lowvram.placement.fast_quant turns that off. int8_fast 12.9 s cold (run 22, the same bench, bf16
# 8.0 s beside it); its warm compile is taken as fp8's.
# `lowvram.placement.compile_records` keeps which shapes this machine compiled (warm or cold is known per job).
COMPILE_SECONDS_COLD: dict[str, float] = {"bf16": 12.0, "fp8_fast": 12.0, "int8_fast": 12.0}
COMPILE_SECONDS_WARM: dict[str, float] = {"bf16": 2.0, "fp8_fast": 2.0, "int8_fast": 2.0}
# torchao dynamic activation + weight quantization (per-row scales): the Linear layers' FLOPs run at this
# fraction of their bf16 time; attention and elementwise work are unchanged. Compiled only: eager, the
# activation quantization costs more than the faster matmul saves (REFERENCE.md: fp8 without compile x1.25
# (1.3B) / x1.04 (14B)). fp8: least squares over REFERENCE.md's anchors fp8 + compile x0.78 (1.3B) / x0.72 (14B)
# against compile alone x0.83 / x0.86, with the Linear share of the FLOPs at 32,760 tokens (0.290 / 0.468,
# planner.timing.linear_flops): 0.69; each anchor is reproduced within 3.5%. Datasheets give fp8 twice the
# bf16 rate on both Hopper and Ada, so Ada (RTX 4090) keeps the factor until calibrated. int8: None = not
# measured faster than bf16 on a whole model yet, so the planner keeps int8_fast out (say so in the plan);
# `lowvram calibrate` measures both on the user's GPU and the benchmark on the H200. Run 19 (H200): the 14B's
# compiled FFN at int8_fast ran x0.904 of bf16 (4.1% per-forward error on the whole 14B) - faster on the
# largest matmul only, the whole model's step not measured; int8_fast stays out until `lowvram calibrate`
# measures it faster on the user's card (an RTX 3090, where bf16 tensor cores run at half the rate of the
# H200's relative to int8, is where it would gain).
FAST_LINEAR_FACTOR: dict[str, float | None] = {"fp8_fast": 0.69, "int8_fast": None}
FAST_WITHOUT_COMPILE_FACTOR = 1.15  # whole forward, eager: the mean of REFERENCE.md's x1.25 / x1.04
# The lowest compute capability each fast level runs on: fp8 tensor cores (Ada, Hopper); int8 tensor cores
# with torch._int_mm (Ampere and up).
FAST_MIN_COMPUTE_CAPABILITY: dict[str, tuple[int, int]] = {"fp8_fast": (8, 9), "int8_fast": (8, 0)}
# Weight bytes per Linear parameter of a fast level: 1 byte plus an fp32 scale per output row (about
# 4 / 5120 on the 14B, 4 / 1536 on the 1.3B). Only the blocks' Linear layers are quantized (the non-block
# part stays in bf16: its matmuls are tiny and it conditions every block).
FAST_BYTES_PER_LINEAR_PARAM = 1.003
# The quantized copy of a Linear layer's input while it computes: the FFN's hidden activation (tokens x
# ffn_dim) in 1 byte is the largest. Estimate from shapes.
FAST_ACT_BYTES_PER_TOKEN_FFN = 1.0
# Per-forward relative error of a fast level against bf16 (||out - out_bf16|| / ||out_bf16||, one transformer
# forward). Measured on the CPU (tests/test_fast_quant.py's tiny Wan transformer, 2 blocks of 32-wide layers,
# 3 seeds): fp8_fast 1.02-1.22%, int8_fast 0.50-0.53%; the largest, rounded up. On the 14B's real shapes
# (random weights, 40 blocks; `lowvram bench fast`, H200 run 13, docs/benchmarks.md) the same measure gave
# fp8_fast 10.5% and int8_fast 4.1%: about 8x the tiny model's for both, error compounding over 20x the blocks.
# Run 19 measured quanto's fp8 weight-only level on the same real shapes: 12.7% (FAST_LEVEL_ERROR_REAL). Both
# scales rank the levels the same way (int8_fast < fp8_fast < quanto fp8, which lowvram allows by default), so
# the planner's figures and bound stay the tiny model's (a consistent pair) and the plan explanation shows the
# real-shape figures beside them. Random weights are not trained weights: the figures rank the levels, they
# are not a quality measure.
FAST_LEVEL_ERROR: dict[str, float] = {"fp8_fast": 0.013, "int8_fast": 0.006}
FAST_LEVEL_ERROR_REAL: dict[str, float] = {"fp8_fast": 0.105, "int8_fast": 0.041, "quanto_fp8": 0.127}
# The bound the planner uses: a fast level whose per-forward error is above it is not a candidate
# (--max-error changes it). About twice the error of quanto's fp8 weight-only level, which lowvram allows by
# default: 2.5-2.9% per forward on the same shapes and seeds (quanto int8: 0.70-0.73%).
FAST_ERROR_BOUND = 0.05
# --- More than one GPU (planner.multi_gpu) ------------------------------------------------------------
# GPU-to-GPU bandwidth, bytes/s, as NCCL moves it (context parallel all-to-alls, layer-split activations).
# NVLink cards (H100/H200 SXM, A100 SXM): fitted to diffusers' context parallel on two H200s (issue 19:
# ulysses 2, eager bf16, 14B: 0.55 of the one-GPU step at 480p, 0.52 at 720p; one-GPU steps 3.266 s and
# 12.253 s, docs/benchmarks.md) with CP_BLOCK_OVERHEAD_SECONDS below: two equations, two unknowns.
# Consumer cards (GeForce: no peer-to-peer) go through host memory over PCIe 4 x16: estimate, about half of
# the pinned host-to-device rate (one device-to-host and one host-to-device copy per byte). `lowvram bench
# multigpu` measures both.
GPU_LINK_BPS_NVLINK = 321 * GB
GPU_LINK_BPS_PCIE = 10 * GB
NVLINK_GPU_MARKERS = ("H200", "H100", "A100")
# Fixed cost per transformer block of a context-parallel forward (collective launches and waits, smaller
# matmuls per rank): the other unknown of the fit above (0.100 s per 40-block forward).
CP_BLOCK_OVERHEAD_SECONDS = 2.5e-3
# Ulysses all-to-alls per block, each of (tokens / N) x dim bf16 values per rank, (N-1)/N of it leaving:
# self-attention q, k, v and its output, cross-attention q and its output (its text k/v are 512 tokens:
# left out). diffusers 0.42 WanAttnProcessor: every attention goes through the context-parallel dispatch.
CP_ULYSSES_TENSORS = 6
# Ring attention (rotate_method "allgather") gathers every rank's k and v of the self-attention: 2 tensors of
# (tokens / N) x dim from each of the N - 1 others; the gathered k/v (2 x tokens x dim) stay in memory.
CP_RING_TENSORS = 2

# --- LoRAs (lowvram.loras; docs/loras.md) ------------------------------------------------------------
# Unfused adapters (peft's LoRA Linear: result + lora_B(lora_A(x)) * scaling) per adapted layer and token:
# the two low-rank matmuls (their FLOPs, LoraFootprint.flops_per_token), then elementwise passes over the
# layer's output: lora_B writes it, the scaling reads and writes it, the sum reads two and writes one:
# 6 passes of out_features values in the compute dtype. Estimate from peft's forward; refit from
# `lowvram bench lora` (docs/benchmarks.md).
LORA_OUTPUT_PASSES = 6
# Low-rank matmuls (rank 16-128 against 5120-13824 wide layers) run well below the dense rate: estimate, the
# fraction of MATMUL_EFFICIENCY they reach; refit from the bench.
LORA_MATMUL_EFFICIENCY = 0.5
# Extra activation peak of unfused adapters: while `result + delta * scaling` is formed, the adapter's output
# and its scaled copy (or the scaled copy and the sum) are alive beside the layer's own output: two copies of
# the widest adapted layer's output. Estimate from peft's forward; refit from the bench's peak VRAM.
LORA_EXTRA_OUTPUT_COPIES = 2
# Loading a LoRA: the file's tensors (up to float32) and diffusers' converted copy are alive at once
# (estimate: two copies at 4 bytes per parameter).
LORA_LOAD_BYTES_PER_PARAM = 8
# Fusing runs on the CPU before the weights are placed: per adapted layer peft computes B @ A in float32, casts it,
# adds it to the weight and checks the result is finite. Memory traffic, not the matmul, sets the pace: run 19
# (H200 host) fused a rank-64 LoRA into the 14B's 14.05 B adapted parameters in 70 s (load 85.6 s fused vs
# 15.6 s without, the same plan: 0.20 B params/s; the matmul alone would be 9 s at CPU_FLOPS); on the 2-core CI
# machine 0.46 B params of the 1.3B's shapes fused in 3.5 s (0.13 B/s). Per adapted parameter, ranks up to 128.
LORA_FUSE_PARAMS_PER_SECOND = 0.2e9

# --- Reserves and RAM -------------------------------------------------------------------------------
# VRAM kept free: ComfyUI's reserve for the driver and other programs (0.4-0.6 GB) plus its minimum
# inference memory (0.8 GB), which here covers the CUDA context and the caching allocator's slack
# (REFERENCE.md, peers).
VRAM_RESERVE_DRIVER = int(0.5 * GIB)
VRAM_RESERVE_INFERENCE = int(0.8 * GIB)
DEFAULT_VRAM_RESERVE = VRAM_RESERVE_DRIVER + VRAM_RESERVE_INFERENCE
# RAM kept free for the OS, the desktop and the file cache (estimate: what a desktop session uses).
DEFAULT_RAM_RESERVE = 2 * GIB
# lowvram's own process without weights: python + torch + diffusers + transformers + quanto + imageio.
# Measured on this machine (CPU build): 0.36 GiB after the imports; 0.38-0.42 GiB RSS per stage of
# `lowvram generate` on the demo model (0.1 MB of weights, 64x64x5): the run's peak is kept. CUDA libraries
# add about 1.5 GiB of host memory (estimate: cuBLAS/cuDNN/kernel images).
PROCESS_RAM_BASE_CPU = int(0.42 * GIB)
# bench wan22 run (H200, torch 2.11 + CUDA 13): the runner's encode stage held 1.07 GiB of unreclaimable RAM
# with a GPU plan whose weights were all memory-mapped: 0.65 GiB above the CPU-only base.
PROCESS_RAM_CUDA_EXTRA = int(0.65 * GIB)
# Higher precision wins when its predicted time is within this fraction of the fastest fitting plan.
TIE_TOLERANCE = {"speed": 0.03, "quality": 0.15}
