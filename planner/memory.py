"""The memory model: bytes of weights, activations and buffers, as pure functions of a spec, a component
plan and a job.

Every fitted number comes from planner/constants.py. VRAM numbers are what torch allocates (the
caching allocator's slack and the CUDA context are in the reserve, see Preferences).

RAM is counted as process memory that cannot be dropped (heap and page-locked memory). Weights at the
plan's precision are memory-mapped from the checkpoint or from lowvram's weights cache: their pages are
page cache, which the kernel can drop and read again, so they cost time (planner.estimate), not RAM.
"""

from __future__ import annotations

from planner import constants as C
from planner.plan import FAST_LEVELS, PRECISIONS, QUANT_LEVELS, ComponentPlan, compute_dtype
from planner.spec import IMAGE_TOKENS, TEXT_SEQ_LEN, ComponentSpec, ModelSpec, Part, TextEncoderDims, TransformerDims

QUANT_ORDER: tuple[str, ...] = ("bf16", "fp8", "int8", "int4")  # the levels a denoiser may drop to, highest first
PRECISION_ORDER: tuple[str, ...] = PRECISIONS


def base_bytes(dtype: str) -> int:
    """Bytes per parameter of a dtype name (float32, bfloat16)."""
    try:
        return C.DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(C.DTYPE_BYTES)}") from None


def _param_bytes(component: ComponentSpec, precision: str) -> int:
    if component.name == "vae" and precision == "bf16":  # the VAE's leanest GPU rung: cast to bf16 (fp32 otherwise)
        return 2
    return component.fixed_dtype_bytes or base_bytes(compute_dtype(precision))


def part_bytes(part: Part, precision: str, param_bytes: int) -> int:
    """Weights of `part`: Linear weights at a quantized level, everything else at `param_bytes`."""
    if precision in ("fp32", "bf16"):
        return part.params * param_bytes
    per_linear = C.FAST_BYTES_PER_LINEAR_PARAM if precision in FAST_LEVELS else C.QUANT_BYTES_PER_LINEAR_PARAM[precision]
    linear = part.linear_params * per_linear
    return int(round((part.params - part.linear_params) * param_bytes + linear))


def _stored(component: ComponentSpec, precision: str):
    """The file's real sizes for precision "stored" (a single-file fp8 / GGUF checkpoint)."""
    if precision != "stored":
        return None
    if component.stored is None:
        raise ValueError(f"{component.name} has no stored weights file: precision 'stored' needs one")
    return component.stored


def component_bytes(component: ComponentSpec, precision: str = "bf16") -> int:
    stored = _stored(component, precision)
    if stored is not None:
        return stored.rest_bytes + component.num_blocks * stored.block_bytes
    if precision in FAST_LEVELS:  # only the blocks are quantized
        return rest_bytes(component, precision) + component.num_blocks * block_bytes(component, precision)
    return part_bytes(component.whole, precision, _param_bytes(component, precision))


def block_bytes(component: ComponentSpec, precision: str = "bf16") -> int:
    stored = _stored(component, precision)
    if stored is not None:
        return stored.block_bytes
    return part_bytes(component.block, precision, _param_bytes(component, precision))


def rest_bytes(component: ComponentSpec, precision: str = "bf16") -> int:
    stored = _stored(component, precision)
    if stored is not None:
        return stored.rest_bytes
    if precision in FAST_LEVELS:  # the non-block part stays in bf16 (lowvram.placement.fast_quant)
        precision = "bf16"
    return part_bytes(component.rest, precision, _param_bytes(component, precision))


def largest_leaf_bytes(component: ComponentSpec, precision: str = "bf16") -> int:
    """The largest Linear weight of a block: leaf-level offload moves one leaf at a time, and the peak
    activations are reached inside the blocks (the larger leaves outside them run while activations are small)."""
    if precision == "stored":
        per_param = block_bytes(component, precision) / max(1, component.block.params)
    elif precision in ("fp32", "bf16"):
        per_param = _param_bytes(component, precision)
    elif precision in FAST_LEVELS:
        per_param = C.FAST_BYTES_PER_LINEAR_PARAM
    else:
        per_param = C.QUANT_BYTES_PER_LINEAR_PARAM[precision]
    return int(round(component.block.largest_linear * per_param))


def staging_bytes(spec: ModelSpec, precisions: dict[str, str]) -> int:
    """RAM for loading one unit at a time (shard by shard): the largest block or tensor, unquantized."""
    largest = 0
    for c in spec.components:
        precision = precisions.get(c.name, "bf16")
        per = _param_bytes(c, "fp32" if precision == "fp32" else "bf16")
        largest = max(largest, c.block.params * per, c.whole.largest_tensor * per)
    return largest


# --- Activations ------------------------------------------------------------------------------------


def transformer_activation_bytes(dims: TransformerDims, tokens: int, dtype: str = "bfloat16",
                                 per_token_timesteps: bool = False) -> int:
    """Peak activations of one transformer forward (see constants: fitted at bf16, scaled by dtype).

    `per_token_timesteps` (Wan2.2 TI2V, expand_timesteps): diffusers' WanTransformer3DModel then holds a timestep
    modulation per token instead of one per video: the forward keeps timestep_proj (tokens x 6 x dim) and temb
    (tokens x dim) in the compute dtype, and each block adds its scale_shift_table to it in float32 (tokens x 6 x
    dim x 4 bytes, alive for the whole block): 1.88 GiB at 1280x704x121, the allocation that ran a TI2V plan out
    of memory on the H200 (run 17)."""
    per_token = C.ACT_BYTES_PER_TOKEN_DIM * dims.dim + C.ACT_BYTES_PER_TOKEN_FFN * dims.ffn_dim
    acts = int(tokens * per_token * base_bytes(dtype) / 2)
    if per_token_timesteps:
        acts += tokens * dims.dim * (7 * base_bytes(dtype) + 6 * 4)
    return acts


def text_encoder_activation_bytes(dims: TextEncoderDims, seq_len: int = TEXT_SEQ_LEN, dtype: str = "bfloat16") -> int:
    scores = dims.heads * seq_len * seq_len * 4 * C.TE_SCORE_COPIES  # fp32 bias + scores
    ffn = seq_len * dims.d_ff * base_bytes(dtype) * C.TE_FFN_COPIES
    return scores + ffn


def image_encoder_activation_bytes(component: ComponentSpec) -> int:
    """CLIP vision tower on one image; width from the block's size (a ViT block has ~12 x width^2 params)."""
    width = int((component.block.params / 12) ** 0.5) if component.num_blocks else 0
    hidden = C.IMAGE_ENCODER_KEEPS_HIDDEN_STATES * IMAGE_TOKENS * width * 4
    heads = max(1, width // 80)
    return hidden + heads * IMAGE_TOKENS * IMAGE_TOKENS * 4 * 3


def _vae_scale(spec: ModelSpec, encode: bool) -> float:
    """Activation bytes per output pixel scale with the channel width at full resolution. A VAE that
    patchifies (Wan2.2's: 16x compression = 2x2 patch x 8) runs its top level at a quarter of the pixels."""
    v = spec.vae_dims
    width = v.base_dim if encode else v.decoder_base_dim
    patch_area = (v.scale_spatial // 8) ** 2
    return width / C.VAE_REFERENCE_BASE_DIM / patch_area


def _per_pixel(coeffs: tuple[float, float], frames: int) -> float:
    alpha, beta = coeffs
    return alpha + beta * frames


def vae_peak_bytes(spec: ModelSpec, height: int, width: int, frames: int, tiled: bool, encode: bool = False,
                   precision: str = "fp32") -> int:
    """Peak activation bytes of a VAE decode (or, for image conditioning, encode) of the whole video.

    Untiled memory grows with H x W (the causal decoder runs latent frame by latent frame, so frames
    add little). Tiled decoding works one 256 px tile at a time, so below one tile it changes nothing
    and it is never worse than untiled. A bf16 VAE holds every activation in half the bytes.
    """
    full = C.VAE_ENCODE_BYTES_PER_PIXEL if encode else C.VAE_DECODE_BYTES_PER_PIXEL
    tile = C.VAE_ENCODE_TILED_BYTES_PER_PIXEL if encode else C.VAE_DECODE_TILED_BYTES_PER_PIXEL
    patchified = spec.vae_dims.scale_spatial > 8
    untiled = _per_pixel(full, frames) * height * width
    peak = untiled * (C.VAE_PATCHIFIED_FACTOR_UNTILED if patchified else 1.0)
    if tiled:
        one_tile = _per_pixel(full, frames) * min(height, C.VAE_TILE) * min(width, C.VAE_TILE)
        tiled_peak = max(one_tile, _per_pixel(tile, frames) * height * width)
        if tiled_peak < untiled:
            # Wan2.2's patchified VAE needs more than the Wan2.1 fit says (constants: VAE_PATCHIFIED_FACTOR_*)
            peak = tiled_peak * (C.VAE_PATCHIFIED_FACTOR_TILED if patchified and not encode else 1.0)
            peak = min(peak, untiled * (C.VAE_PATCHIFIED_FACTOR_UNTILED if patchified else 1.0))
    runtime = 1.0 if encode else C.VAE_DECODE_RUNTIME_FACTOR
    return int(peak * _vae_scale(spec, encode) * runtime * base_bytes(compute_dtype(precision)) / 4)


def video_bytes(height: int, width: int, frames: int) -> int:
    """The decoded video in float32 (the VAE's output and the frames handed to the writer)."""
    return 3 * frames * height * width * 4


# --- Denoiser placements ------------------------------------------------------------------------------


def adapter_bytes(loras: tuple = (), dtype: str = "bfloat16") -> int:
    """Unfused LoRA adapters (LoraFootprint per LoRA) in the compute dtype: on the GPU for the whole phase, and
    their host copies in RAM for the whole run."""
    return sum(f.params for f in loras) * base_bytes(dtype)


def adapter_activation_bytes(loras: tuple, tokens: int, dtype: str = "bfloat16") -> int:
    """The activation peak unfused adapters add: copies of the widest adapted layer's output (constants)."""
    widest = max((f.max_out for f in loras), default=0)
    return C.LORA_EXTRA_OUTPUT_COPIES * tokens * widest * base_bytes(dtype)


def fused_heap_bytes(spec: ModelSpec, cp: ComponentPlan, loras: tuple = ()) -> int:
    """Process RAM that fusing LoRAs into unquantized weights costs: the rewritten weights no longer map their
    file. Streamed weights are copied to page-locked memory (already counted) and the rewritten ones dropped;
    those moved whole to the GPU (resident blocks), or kept to come back to (an idle expert waiting in its
    file), stay in RAM for the run. Quantized weights are rewritten by quantization anyway."""
    if cp.lora != "fused" or not loras or cp.precision not in ("fp32", "bf16"):
        return 0
    t = spec.component(cp.name)
    rewritten = min(sum(f.target_params for f in loras), t.whole.linear_params) * _param_bytes(t, cp.precision)
    if cp.idle == "mmap" or cp.placement == "resident":
        return rewritten
    if cp.placement == "partial":
        return rewritten * cp.resident_blocks // max(1, t.num_blocks)
    return 0


def denoiser_vram_bytes(spec: ModelSpec, cp: ComponentPlan, tokens: int, loras: tuple = ()) -> int:
    """Peak VRAM of a denoiser's phase (weights on the GPU + activations) for its placement; `loras`: the
    footprints of the LoRAs it carries (unfused adapters stay on the GPU; fused ones cost nothing here)."""
    t = spec.component(cp.name)
    q = cp.precision
    act = transformer_activation_bytes(spec.dims, tokens, cp.dtype, spec.expand_timesteps)
    block = block_bytes(t, q)
    rest = rest_bytes(t, q)
    buffers = C.STREAM_BUFFER_GROUPS if cp.use_stream else 1
    # quanto (and an fp8 / GGUF file) dequantizes one weight at a time for its matmul: a copy of the largest Linear
    dequant = t.whole.largest_linear * base_bytes(cp.dtype) if cp.precision in QUANT_LEVELS else 0
    if cp.precision == "stored":
        dequant = int(t.whole.largest_linear * _stored(t, "stored").dequant_bytes_per_param)
    if cp.fast:  # torchao quantizes each Linear's input: the FFN's hidden activation is the largest
        dequant = int(tokens * spec.dims.ffn_dim * C.FAST_ACT_BYTES_PER_TOKEN_FFN)
    kind = cp.placement
    if kind == "resident":
        weights = rest + t.num_blocks * block
    elif kind == "partial":
        weights = rest + cp.resident_blocks * block + buffers * cp.blocks_per_group * block
    elif kind in ("block_offload", "disk_offload"):
        weights = rest + buffers * cp.blocks_per_group * block
    elif kind == "leaf_offload":
        weights = buffers * largest_leaf_bytes(t, q)
    else:
        raise ValueError(f"unknown denoiser placement {kind!r}")
    if cp.lora == "unfused" and loras:
        weights += adapter_bytes(loras, cp.dtype)
        act += adapter_activation_bytes(loras, tokens, cp.dtype)
    return weights + act + dequant


def denoiser_split(spec: ModelSpec, cp: ComponentPlan) -> tuple[int, int, int]:
    """(bytes on the GPU for its whole phase, bytes streamed from pinned RAM, bytes streamed from disk)."""
    t = spec.component(cp.name)
    q = cp.precision
    block = block_bytes(t, q)
    rest = rest_bytes(t, q)
    total = rest + t.num_blocks * block
    kind = cp.placement
    if kind == "resident":
        return total, 0, 0
    if kind == "partial":
        # the runtime streams the non-block modules too (diffusers groups them with the streamed blocks)
        resident = cp.resident_blocks * block
        return resident, total - resident, 0
    if kind in ("block_offload", "leaf_offload"):
        return 0, total, 0
    if kind == "disk_offload":
        return 0, 0, total
    raise ValueError(f"unknown denoiser placement {kind!r}")


def pinned_bytes(spec: ModelSpec, cp: ComponentPlan) -> int:
    """Page-locked RAM a denoiser holds while its streaming hooks are on (torch rounds pinned blocks up)."""
    _, streamed, on_disk = denoiser_split(spec, cp)
    if on_disk:  # disk offload pins only the groups in flight
        block = block_bytes(spec.component(cp.name), cp.precision)
        streamed = C.STREAM_BUFFER_GROUPS * cp.blocks_per_group * block
    return int(streamed * C.PINNED_RAM_PER_WEIGHT_BYTE)


def partial_blocks(spec: ModelSpec, name: str, precision: str, tokens: int, vram_budget: int, lora: str = "",
                   loras: tuple = ()) -> int:
    """How many blocks can stay resident while the rest stream: the spare VRAM of block offload, in blocks."""
    t = spec.component(name)
    streaming = denoiser_vram_bytes(spec, ComponentPlan(name, precision, "block_offload", lora=lora), tokens, loras)
    block = block_bytes(t, precision)
    if block <= 0:
        return 0
    k = (vram_budget - streaming) // block
    return int(max(0, min(k, t.num_blocks)))
