"""The time model: FLOPs of each stage and the machine's throughputs (calibrated, or defaults by GPU class)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from planner import constants as C
from planner.probe import HardwareProbe
from planner.spec import IMAGE_TOKENS, TEXT_SEQ_LEN, ComponentSpec, ModelSpec


@dataclass(frozen=True)
class Throughput:
    """What the time model needs of a machine. `source` says where the numbers came from."""

    gpu_flops: float  # achieved bf16 FLOP/s over a forward (0 without a GPU)
    h2d_pinned: float  # bytes/s
    h2d_pageable: float
    disk_read: float
    cpu_flops: float
    fp8_fast: bool
    source: str  # "calibrated <date>" | "defaults for <gpu class>" | "cpu"
    fp32_factor: float = C.FP32_TIME_FACTOR_CONSUMER  # a float32 forward's time over a bf16 one on this GPU
    compute_capability: Optional[tuple[int, int]] = None
    # (placement, factor on a forward's compute when its blocks are compiled), planner.constants by default
    compile_factors: tuple[tuple[str, float], ...] = tuple(C.COMPILE_COMPUTE_FACTOR.items())
    # (fast level, factor on the Linear FLOPs' time, compiled; None: not measured faster than bf16 here)
    fast_linear: tuple[tuple[str, Optional[float]], ...] = tuple(C.FAST_LINEAR_FACTOR.items())
    warm_precisions: tuple[str, ...] = ()  # compiled before at this job's shapes: inductor's cache has them
    fast_source: str = "REFERENCE.md anchors (H200)"
    gpu_bandwidth: float = 0.0  # achieved bytes/s of elementwise kernels (datasheet x MEMORY_EFFICIENCY)
    gpu_link: float = C.GPU_LINK_BPS_PCIE  # GPU-to-GPU bytes/s (several GPUs)
    # each GPU's own throughput, cuda:0 first, when the GPUs are not all one card (empty: every GPU is like this)
    cards: tuple["Throughput", ...] = ()

    def on(self, gpu: int) -> "Throughput":
        """The throughput of cuda:`gpu` (this one where every GPU is alike)."""
        return self.cards[gpu] if gpu < len(self.cards) else self

    def time_factor(self, precision: str) -> float:
        """A forward's time at `precision` relative to bf16 at the same placement (quanto's measured
        factors; a fast level eager, i.e. not compiled)."""
        if precision == "fp32":
            return self.fp32_factor
        if precision in C.FAST_LINEAR_FACTOR:
            return C.FAST_WITHOUT_COMPILE_FACTOR
        return C.QUANT_TIME_FACTOR[precision]

    def compile_seconds_for(self, precision: str) -> float:
        """Compiling the blocks of a denoiser at `precision` once (from inductor's cache when warm)."""
        table = C.COMPILE_SECONDS_WARM if precision in self.warm_precisions else C.COMPILE_SECONDS_COLD
        return table.get(precision, table["bf16"])

    def compile_factor(self, placement: str) -> float:
        """A compiled forward's compute time over the eager one's, under `placement`."""
        return dict(self.compile_factors).get(placement, 1.0)

    def fast_factor(self, level: str) -> Optional[float]:
        """The Linear FLOPs' time at a fast level over bf16, compiled; None when not known to be faster here."""
        return dict(self.fast_linear).get(level)

    def fast_unavailable(self, level: str) -> str:
        """Why a fast level is not a candidate on this GPU ('' when it is)."""
        need = C.FAST_MIN_COMPUTE_CAPABILITY[level]
        cc = self.compute_capability
        if cc is None or tuple(cc) < need:
            have = ".".join(map(str, cc)) if cc else "unknown"
            return f"{level} needs compute capability >= {need[0]}.{need[1]} (this GPU: {have})"
        factor = self.fast_factor(level)
        if factor is None:
            return (f"{level} is not measured faster than bf16 on this GPU class, so it stays out "
                    "(`lowvram calibrate` measures it here)")
        if factor >= 1.0:
            return f"{level} measured slower than bf16 here (its matmuls x{factor:.2f}; {self.fast_source})"
        return ""


def gpu_datasheet_tflops(gpu_name: Optional[str]) -> tuple[float, str]:
    """(dense bf16 TFLOPS, matched class) from the datasheet table; the slow default when unknown."""
    name = _squash(gpu_name)
    for marker, tflops in C.GPU_BF16_TFLOPS:
        if _squash(marker) in name:
            return tflops, marker
    return C.UNKNOWN_GPU_BF16_TFLOPS, "an unknown GPU (assumed as slow as an RTX 3060)"


# Cards by memory, for a what-if machine given by its VRAM: (name as in C.GPU_BF16_TFLOPS, GiB, compute
# capability). Datasheet values.
GPU_CARDS: tuple[tuple[str, int, tuple[int, int]], ...] = (
    ("RTX 3070", 8, (8, 6)), ("RTX 4060", 8, (8, 9)), ("RTX 4060 Ti", 8, (8, 9)),
    ("RTX 3080", 10, (8, 6)),
    ("RTX 3060", 12, (8, 6)), ("RTX 3080", 12, (8, 6)), ("RTX 4070", 12, (8, 9)), ("RTX 4070 Ti", 12, (8, 9)),
    ("RTX 4060 Ti", 16, (8, 9)), ("RTX 4080", 16, (8, 9)),
    ("RTX 3090", 24, (8, 6)), ("RTX 4090", 24, (8, 9)),
    ("A100", 40, (8, 0)),
    ("A6000", 48, (8, 6)), ("RTX 6000 Ada", 48, (8, 9)), ("L40S", 48, (8, 9)),
    ("A100", 80, (8, 0)), ("H100", 80, (9, 0)),
    ("H200", 141, (9, 0)),
)
# A card reports a little less free VRAM than its size; more than this below the size is another class.
CARD_SIZE_SLACK_GIB = 4


@dataclass(frozen=True)
class AssumedGpu:
    name: str
    memory_gib: int
    compute_capability: tuple[int, int]
    tflops: float


def infer_gpu(vram_gib: float, compute_capability: Optional[tuple[int, int]] = None) -> Optional[AssumedGpu]:
    """The card a what-if with this much VRAM most likely is: the smallest card size that holds it, of the
    given compute capability; without one, Ampere (no fast fp8) where that size has it. Of those, the
    slowest, so a what-if never promises more speed than it was told about. None: no card of that size."""
    sizes = sorted({gib for _, gib, _ in GPU_CARDS if vram_gib <= gib <= vram_gib + CARD_SIZE_SLACK_GIB})
    for size in sizes:
        cards = [(n, g, cc) for n, g, cc in GPU_CARDS if g == size and (compute_capability is None or cc == tuple(compute_capability))]
        if compute_capability is None:
            cards = [c for c in cards if c[2] == (8, 6)] or cards
        if cards:
            name, gib, cc = min(cards, key=lambda c: gpu_datasheet_tflops(c[0])[0])
            return AssumedGpu(name, gib, cc, gpu_datasheet_tflops(name)[0])
    return None


def known_compute_capability(gpu_name: Optional[str]) -> Optional[tuple[int, int]]:
    """The compute capability of a card named like one in GPU_CARDS ('NVIDIA GeForce RTX 4090' -> (8, 9)), the
    longest matching name first ('RTX 4060 Ti' before 'RTX 4060'); None for a name not in the table."""
    name = _squash(gpu_name)
    for card, _, cc in sorted(GPU_CARDS, key=lambda c: -len(c[0])):
        if _squash(card) in name:
            return cc
    return None


def gpu_datasheet_bandwidth(gpu_name: Optional[str]) -> float:
    """Datasheet memory bandwidth in bytes/s; the slow default when the GPU is not in the table."""
    name = _squash(gpu_name)
    for marker, gbps in C.GPU_MEMORY_GBPS:
        if _squash(marker) in name:
            return gbps * 1e9
    return C.UNKNOWN_GPU_MEMORY_GBPS * 1e9


def _squash(name: Optional[str]) -> str:
    """'NVIDIA GeForce RTX 4090' and 'rtx4090' match alike."""
    return "".join((name or "").upper().split())


def _fp8_fast(probe: HardwareProbe) -> bool:
    return probe.compute_capability is not None and tuple(probe.compute_capability) >= C.FP8_MIN_COMPUTE_CAPABILITY


def _datacenter(probe: HardwareProbe) -> bool:
    return any(_squash(m) in _squash(probe.gpu_name) for m in C.DATACENTER_GPU_MARKERS)


def _calibrated_gains(calibration) -> dict:
    """The compile and fast-matmul factors a calibration measured (those it did not measure keep the defaults)."""
    out: dict = {}
    compile_factor = getattr(calibration, "compile_factor", 0.0)
    if compile_factor > 0:
        out["compile_factors"] = tuple((kind, compile_factor if f != 1.0 else f) for kind, f in C.COMPILE_COMPUTE_FACTOR.items())
    fast = dict(C.FAST_LINEAR_FACTOR)
    measured = False
    for level, attr in (("fp8_fast", "fp8_linear_factor"), ("int8_fast", "int8_linear_factor")):
        value = getattr(calibration, attr, 0.0)
        if value > 0:
            fast[level] = value
            measured = True
    if measured:
        out["fast_linear"] = tuple(fast.items())
        out["fast_source"] = f"calibrated on {calibration.created}"
    return out


def _gpu_link(probe: HardwareProbe) -> float:
    nvlink = any(_squash(m) in _squash(probe.gpu_name) for m in C.NVLINK_GPU_MARKERS)
    return C.GPU_LINK_BPS_NVLINK if nvlink else C.GPU_LINK_BPS_PCIE


def throughput_for(probe: HardwareProbe, calibration=None, warm_precisions: tuple[str, ...] = ()) -> Throughput:
    """Throughputs for this probe: a calibration of the same GPU wins over the defaults by GPU class.
    `warm_precisions`: precisions this job's blocks were compiled at before (inductor's cache has them).
    GPUs of different cards each get their own (`Throughput.cards`, by each card's name and compute capability)."""
    first = _one_card(probe, calibration, warm_precisions)
    if len({(g.name, g.compute_capability) for g in probe.gpus}) < 2:
        return first
    return replace(first, cards=tuple(_one_card(probe.only_gpu(i), calibration, warm_precisions)
                                      for i in range(probe.gpu_count)))


def describe_cards(probe: HardwareProbe, tp: Throughput) -> list[str]:
    """The pace the time model gives each GPU, when the GPUs are not all one card ([] when they are)."""
    if not tp.cards:
        return []
    lines = ["time model per GPU (a layer split or context-parallel step waits for the slower card):"]
    for g, card in zip(probe.gpus, tp.cards):
        lines.append(f"  {g.device} {g.name}: timed at {card.gpu_flops / 1e12:.1f} TFLOP/s bf16, {card.source}")
    return lines


def _one_card(probe: HardwareProbe, calibration, warm_precisions: tuple[str, ...]) -> Throughput:
    """The throughput of the probe's first GPU (or of its CPU, without one)."""
    cc = tuple(probe.compute_capability) if probe.compute_capability else None
    if not probe.has_gpu:
        cpu = calibration.cpu_flops if calibration is not None and calibration.cpu_flops else C.CPU_FLOPS
        how = "calibrated" if calibration is not None and calibration.cpu_flops else "estimate"
        return Throughput(0.0, 0.0, 0.0, C.DISK_READ_BPS, cpu, False, f"CPU only, {cpu / 1e9:.0f} GFLOP/s ({how})")
    if calibration is not None and calibration.matches(probe):
        return Throughput(
            gpu_flops=calibration.gpu_flops,
            h2d_pinned=calibration.h2d_pinned,
            h2d_pageable=calibration.h2d_pageable,
            disk_read=C.DISK_READ_BPS,
            cpu_flops=calibration.cpu_flops or C.CPU_FLOPS,
            fp8_fast=_fp8_fast(probe),
            source=f"calibrated on {calibration.created}",
            fp32_factor=C.FP32_TIME_FACTOR_DATACENTER if _datacenter(probe) else C.FP32_TIME_FACTOR_CONSUMER,
            compute_capability=cc,
            warm_precisions=tuple(warm_precisions),
            **_calibrated_gains(calibration),
            gpu_bandwidth=gpu_datasheet_bandwidth(probe.gpu_name) * C.MEMORY_EFFICIENCY,
            gpu_link=_gpu_link(probe),
        )
    tflops, klass = gpu_datasheet_tflops(probe.gpu_name)
    datacenter = _datacenter(probe)
    pinned = C.H2D_PINNED_DATACENTER if datacenter else C.H2D_PINNED_CONSUMER
    return Throughput(
        gpu_flops=tflops * 1e12 * C.MATMUL_EFFICIENCY,
        h2d_pinned=pinned,
        h2d_pageable=pinned * C.PAGEABLE_OVER_PINNED,
        disk_read=C.DISK_READ_BPS,
        cpu_flops=C.CPU_FLOPS,
        fp8_fast=_fp8_fast(probe),
        source=f"defaults for {klass} (run `lowvram calibrate` to measure this GPU)",
        fp32_factor=C.FP32_TIME_FACTOR_DATACENTER if datacenter else C.FP32_TIME_FACTOR_CONSUMER,
        compute_capability=cc,
        warm_precisions=tuple(warm_precisions),
        gpu_bandwidth=gpu_datasheet_bandwidth(probe.gpu_name) * C.MEMORY_EFFICIENCY,
        gpu_link=_gpu_link(probe),
    )


# --- FLOPs ---------------------------------------------------------------------------------------------


def transformer_block_flops(spec: ModelSpec, tokens: int) -> float:
    """FLOPs of one transformer block forward: Linear layers + attention (self, text, image)."""
    d = spec.dims.dim
    image = spec.dims.has_image_branch
    kv_on_context = 2 * d * d * (2 if image else 1)  # cross-attention K/V run on text (and image) tokens
    video_linear = spec.transformer.block.linear_params - kv_on_context
    flops = 2.0 * video_linear * tokens
    flops += 2.0 * 2 * d * d * TEXT_SEQ_LEN + (2.0 * 2 * d * d * IMAGE_TOKENS if image else 0.0)
    context = TEXT_SEQ_LEN + (IMAGE_TOKENS if image else 0)
    flops += 4.0 * tokens * tokens * d + 4.0 * tokens * context * d
    return flops


def linear_flops(spec: ModelSpec, tokens: int) -> float:
    """The Linear layers' share of transformer_block_flops (what fp8 / int8 matmuls speed up)."""
    d = spec.dims.dim
    context = TEXT_SEQ_LEN + (IMAGE_TOKENS if spec.dims.has_image_branch else 0)
    attention = 4.0 * tokens * tokens * d + 4.0 * tokens * context * d
    return transformer_block_flops(spec, tokens) - attention


def transformer_flops(spec: ModelSpec, tokens: int) -> float:
    """One forward; the non-block part (embeddings, head) is under 0.1% of it and left out."""
    return spec.dims.num_layers * transformer_block_flops(spec, tokens)


def text_encoder_flops(component: ComponentSpec, seq_len: int = TEXT_SEQ_LEN) -> float:
    """One prompt: Linear layers only (the embedding lookup costs nothing)."""
    return 2.0 * component.whole.linear_params * seq_len


def image_encoder_flops(component: ComponentSpec) -> float:
    return 2.0 * component.whole.linear_params * IMAGE_TOKENS


def vae_flops(spec: ModelSpec, height: int, width: int, frames: int, encode: bool = False) -> float:
    per_pixel = C.VAE_ENCODE_FLOPS_PER_PIXEL if encode else C.VAE_DECODE_FLOPS_PER_PIXEL
    v = spec.vae_dims
    width_ = v.base_dim if encode else v.decoder_base_dim
    # conv FLOPs grow with channels squared; a patchifying VAE (Wan2.2: 16x) runs at a quarter of the pixels
    scale = (width_ / C.VAE_REFERENCE_BASE_DIM) ** 2 / (v.scale_spatial // 8) ** 2
    return per_pixel * height * width * frames * scale


def vae_gpu_seconds(spec: ModelSpec, height: int, width: int, frames: int, tp: "Throughput", precision: str,
                    tiled: bool, encode: bool = False) -> float:
    """A VAE pass on the GPU. Measured on the H200, both Wan VAEs decode at the same time per output pixel-frame
    (fp32, untiled: 8.8e-8 s for Wan2.1's at 832x480x81, 8.7e-8 s for Wan2.2's at 1280x704x121; runs 5 and 13),
    about 20% of the matmul rate over Wan2.1's decoder FLOPs; so the per-pixel FLOPs are Wan2.1's for both (the
    Wan2.2 VAE's wider convolutions run more efficiently in the same proportion) and VAE_GPU_EFFICIENCY applies.
    Tiled: (tile / stride)^2 more work (measured x1.88 and x1.97); bf16: VAE_BF16_TIME of fp32 (run 19, tiled)."""
    per_pixel = C.VAE_ENCODE_FLOPS_PER_PIXEL if encode else C.VAE_DECODE_FLOPS_PER_PIXEL
    flops = per_pixel * height * width * frames * (tiling_overhead() if tiled else 1.0)
    seconds = flops / (tp.gpu_flops * C.VAE_GPU_EFFICIENCY)
    return seconds * (C.VAE_BF16_TIME if precision == "bf16" else 1.0)


def tiling_overhead() -> float:
    """Tiles overlap: each pixel is computed (tile / stride)^2 times on average."""
    return (C.VAE_TILE / C.VAE_TILE_STRIDE) ** 2


def context_parallel_comm_seconds(spec: ModelSpec, tokens: int, gpus: int, kind: str, link_bps: float) -> float:
    """What context parallelism adds to one forward split over `gpus` ranks: the collectives' bytes over the
    link plus a fixed cost per block (constants: fitted on two H200s)."""
    per_rank = tokens / gpus
    d = spec.dims.dim
    if kind == "ring":
        moved = C.CP_RING_TENSORS * per_rank * d * 2 * (gpus - 1)
    else:
        moved = C.CP_ULYSSES_TENSORS * per_rank * d * 2 * (gpus - 1) / gpus
    return spec.dims.num_layers * (moved / link_bps + C.CP_BLOCK_OVERHEAD_SECONDS)


def layer_split_crossing_bytes(spec: ModelSpec, tokens: int) -> int:
    """Bytes that cross to the next GPU at a layer split, per forward: the hidden states (bf16) there and back,
    and the rotary tables (float32 cos and sin) and the text states once."""
    d = spec.dims.dim
    head = d // max(1, spec.dims.heads)
    return int(2 * tokens * d * 2 + tokens * head * 4 * 2 + TEXT_SEQ_LEN * d * 2)


# --- Streaming -------------------------------------------------------------------------------------------


def streamed_seconds(compute: float, copy: float, precision: str = "bf16") -> float:
    """One block computed while the next is copied: the slower of the two, plus the fixed cost of streaming a
    block of `precision`'s weights (planner.constants.STREAMED_BLOCK_SECONDS)."""
    fixed = C.STREAMED_FAST_BLOCK_SECONDS if precision in C.FAST_LINEAR_FACTOR else C.STREAMED_BLOCK_SECONDS
    return max(compute, copy) + fixed


def leaf_streamed_seconds(compute: float, copy: float) -> float:
    """A block under leaf offload (its hooks counted apart): the slower of compute and copy, plus their
    interference (planner.constants.LEAF_INTERFERENCE)."""
    return max(compute, copy) + C.LEAF_INTERFERENCE * min(compute, copy)
