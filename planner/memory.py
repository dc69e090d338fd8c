"""The memory model: bytes of weights, activations and buffers, as pure functions of a spec and a job.

Every fitted number comes from planner/constants.py. VRAM numbers are what torch allocates (the
caching allocator's slack and the CUDA context are in the reserve, see Preferences).
"""

from __future__ import annotations

from planner import constants as C
from planner.spec import (
    IMAGE_TOKENS,
    TEXT_SEQ_LEN,
    ComponentSpec,
    ModelSpec,
    Part,
    TextEncoderDims,
    TransformerDims,
)

QUANT_ORDER: tuple[str, ...] = ("bf16", "fp8", "int8", "int4")  # highest precision first


def base_bytes(dtype: str) -> int:
    """Bytes per parameter of the plan's dtype (bf16 weights; the CPU demo runs in float32)."""
    try:
        return C.DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(C.DTYPE_BYTES)}") from None


def part_bytes(part: Part, quant: str, param_bytes: int) -> int:
    """Weights of `part`: Linear weights at the quantization level, everything else at `param_bytes`."""
    if quant == "bf16":
        return part.params * param_bytes
    linear = part.linear_params * C.QUANT_BYTES_PER_LINEAR_PARAM[quant]
    return int(round((part.params - part.linear_params) * param_bytes + linear))


def _param_bytes(component: ComponentSpec, dtype: str) -> int:
    return component.fixed_dtype_bytes or base_bytes(dtype)


def component_bytes(component: ComponentSpec, quant: str = "bf16", dtype: str = "bfloat16") -> int:
    return part_bytes(component.whole, quant, _param_bytes(component, dtype))


def block_bytes(component: ComponentSpec, quant: str = "bf16", dtype: str = "bfloat16") -> int:
    return part_bytes(component.block, quant, _param_bytes(component, dtype))


def rest_bytes(component: ComponentSpec, quant: str = "bf16", dtype: str = "bfloat16") -> int:
    return part_bytes(component.rest, quant, _param_bytes(component, dtype))


def largest_leaf_bytes(component: ComponentSpec, quant: str = "bf16", dtype: str = "bfloat16") -> int:
    """The largest Linear weight of a block: leaf-level offload moves one leaf at a time, and the peak
    activations are reached inside the blocks (the larger leaves outside them, e.g. the time projection,
    run while activations are small)."""
    per_param = C.QUANT_BYTES_PER_LINEAR_PARAM[quant] if quant != "bf16" else _param_bytes(component, dtype)
    return int(round(component.block.largest_linear * per_param))


def staging_bytes(spec: ModelSpec, dtype: str = "bfloat16") -> int:
    """RAM for loading one unit at a time (shard by shard): the largest block or tensor, unquantized."""
    largest = 0
    for c in spec.components:
        per = _param_bytes(c, dtype)
        largest = max(largest, c.block.params * per, c.whole.largest_tensor * per)
    return largest


# --- Activations ------------------------------------------------------------------------------------


def transformer_activation_bytes(dims: TransformerDims, tokens: int, dtype: str = "bfloat16") -> int:
    """Peak activations of one transformer forward (see constants: fitted at bf16, scaled by dtype)."""
    per_token = C.ACT_BYTES_PER_TOKEN_DIM * dims.dim + C.ACT_BYTES_PER_TOKEN_FFN * dims.ffn_dim
    return int(tokens * per_token * base_bytes(dtype) / 2)


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


def _vae_scale(spec: ModelSpec) -> float:
    return spec.vae_base_dim / C.VAE_REFERENCE_BASE_DIM


def _per_pixel(coeffs: tuple[float, float], frames: int) -> float:
    alpha, beta = coeffs
    return alpha + beta * frames


def vae_peak_bytes(spec: ModelSpec, height: int, width: int, frames: int, tiled: bool, encode: bool = False) -> int:
    """Peak activation bytes of a VAE decode (or, for I2V conditioning, encode) of the whole video.

    Untiled memory grows with H x W (the causal decoder runs latent frame by latent frame, so frames
    add little). Tiled decoding works one 256 px tile at a time, so below one tile it changes nothing
    and it is never worse than untiled.
    """
    full = C.VAE_ENCODE_BYTES_PER_PIXEL if encode else C.VAE_DECODE_BYTES_PER_PIXEL
    tile = C.VAE_ENCODE_TILED_BYTES_PER_PIXEL if encode else C.VAE_DECODE_TILED_BYTES_PER_PIXEL
    untiled = _per_pixel(full, frames) * height * width
    if tiled:
        one_tile = _per_pixel(full, frames) * min(height, C.VAE_TILE) * min(width, C.VAE_TILE)
        tiled_peak = max(one_tile, _per_pixel(tile, frames) * height * width)
        untiled = min(untiled, tiled_peak)
    return int(untiled * _vae_scale(spec))


def video_bytes(height: int, width: int, frames: int) -> int:
    """The decoded video in float32 (the VAE's output and the frames handed to the writer)."""
    return 3 * frames * height * width * 4


# --- Transformer placements ---------------------------------------------------------------------------


def transformer_vram_bytes(spec: ModelSpec, quant: str, kind: str, tokens: int, resident_blocks: int = 0,
                           blocks_per_group: int = 1, use_stream: bool = True, dtype: str = "bfloat16") -> int:
    """Peak VRAM of the denoise stage's transformer for a placement (weights on the GPU + activations)."""
    t = spec.transformer
    act = transformer_activation_bytes(spec.dims, tokens, dtype)
    block = block_bytes(t, quant, dtype)
    rest = rest_bytes(t, quant, dtype)
    buffers = C.STREAM_BUFFER_GROUPS if use_stream else 1
    # quanto dequantizes one weight at a time for its matmul: one bf16 copy of the largest Linear
    dequant = t.whole.largest_linear * base_bytes(dtype) if quant != "bf16" else 0
    if kind == "resident":
        weights = rest + t.num_blocks * block
    elif kind == "partial":
        weights = rest + resident_blocks * block + buffers * blocks_per_group * block
    elif kind in ("block_offload", "disk_offload"):
        weights = rest + buffers * blocks_per_group * block
    elif kind == "leaf_offload":
        weights = buffers * largest_leaf_bytes(t, quant, dtype)
    else:
        raise ValueError(f"unknown transformer placement {kind!r}")
    return weights + act + dequant


def transformer_ram_split(spec: ModelSpec, quant: str, kind: str, resident_blocks: int = 0,
                          blocks_per_group: int = 1, dtype: str = "bfloat16") -> tuple[int, int, int]:
    """(GPU-resident bytes, pinned host bytes, bytes kept on disk) of the transformer's weights.

    Streamed weights live in page-locked (pinned) RAM for the whole run: the H2D copies need it.
    Disk offload pins only the groups in flight.
    """
    t = spec.transformer
    block = block_bytes(t, quant, dtype)
    rest = rest_bytes(t, quant, dtype)
    total = rest + t.num_blocks * block
    if kind == "resident":
        return total, 0, 0
    if kind == "partial":
        # the runtime streams the non-block modules too (diffusers groups them with the streamed blocks)
        resident = resident_blocks * block
        return resident, total - resident, 0
    if kind in ("block_offload", "leaf_offload"):
        return 0, total, 0
    if kind == "disk_offload":
        return 0, C.STREAM_BUFFER_GROUPS * blocks_per_group * block, total
    raise ValueError(f"unknown transformer placement {kind!r}")
