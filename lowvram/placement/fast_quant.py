"""Fast quantized matmuls with torchao: fp8 / int8 activations and weights, per-row scales, in the blocks.

Levels (planner.plan.FAST_LEVELS):
- "fp8_fast": `Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`: the weight is stored in
  float8_e4m3 with one scale per output row; each input is quantized per row when the layer runs, and the
  matmul is `torch._scaled_mm` on fp8 tensor cores (compute capability >= 8.9).
- "int8_fast": `Int8DynamicActivationInt8WeightConfig()` (per row as well): `torch._int_mm` on int8 tensor cores.

Only the Linear layers of the repeated blocks are quantized: they hold ~99% of the matmul FLOPs; the non-block
part (patch embedding, time and text embedders, head) conditions every block and stays in bf16. Quantizing the
activations is an extra pass over them that only torch.compile fuses away: the planner plans these levels
compiled (lowvram.placement.compile). The quantized weights are torchao tensor subclasses, which diffusers'
group offload moves in memory and lowvram.placement.quanto_offload also streams and writes to disk.
"""

from __future__ import annotations

from typing import Optional

import torch

from lowvram.errors import UserError
from lowvram.models.library_logs import quiet_torchao_import
from planner.constants import FAST_MIN_COMPUTE_CAPABILITY
from planner.plan import FAST_LEVELS

LEVEL_OF_TENSOR = {"Float8Tensor": "fp8_fast", "Int8Tensor": "int8_fast"}


def torchao_config(level: str):
    """The torchao config of a fast level (names as in torchao 0.18's quant_api)."""
    quiet_torchao_import()
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int8DynamicActivationInt8WeightConfig,
        PerRow,
    )

    # set_inductor_config=False: torchao's default turns on inductor's coordinate-descent tuning for the whole
    # process, which compiles every Triton kernel in many block sizes, one after another in the main process:
    # the 14B's fp8 block graph compiled cold in 174 s with it, 9.4 s without, for the same step (H200, run 22,
    # docs/benchmarks.md). It would also slow every later compile in the process, bf16 ones included.
    if level == "fp8_fast":
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    if level == "int8_fast":
        return Int8DynamicActivationInt8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    raise ValueError(f"unknown fast level {level!r}; expected one of {', '.join(FAST_LEVELS)}")


def check_device(level: str, device: str) -> None:
    """Refuse a level this machine cannot run, before any weight is touched (exit 2 with the fix)."""
    if level != "fp8_fast":
        return  # int8 matmuls run on the CPU too (torch._int_mm), and on every CUDA GPU lowvram supports
    need = FAST_MIN_COMPUTE_CAPABILITY[level]
    if device != "cuda" or not torch.cuda.is_available():
        raise UserError(f"{level} runs fp8 matmuls on a GPU of compute capability >= {need[0]}.{need[1]}; this plan "
                        "runs on the CPU. Plan again without --force-plan, or use bf16 / int8 for the transformer.")
    cc = torch.cuda.get_device_capability()
    if cc < need:
        raise UserError(f"{level} needs a GPU of compute capability >= {need[0]}.{need[1]} (this one: {cc[0]}.{cc[1]}); "
                        "use bf16, int8 or int8_fast for the transformer.")


def _bf16_linear(module: torch.nn.Module, fqn: str) -> bool:
    # torchao asks for every module; bf16 weights only (the modules diffusers keeps in fp32 stay so)
    return isinstance(module, torch.nn.Linear) and module.weight.dtype == torch.bfloat16


def quantize_fast(module: torch.nn.Module, level: str, device: str = "cuda") -> int:
    """Quantize the Linear layers of `module`'s repeated blocks at `level` in place. Returns how many.

    Blocks held on the CPU are quantized on the GPU when `device` is "cuda": one block at a time goes there,
    is quantized and comes back (a transient of one block's weights): 0.47-0.55 B params/s with the copies,
    against 0.36 B params/s for torchao on the CPU of an H200's 32-core host (run 21, docs/benchmarks.md), and
    the same quantized weights (tests/test_fast_cuda.py)."""
    from torchao.quantization import quantize_

    from lowvram.placement.offload import _block_list_name

    check_device(level, device)
    config = torchao_config(level)
    blocks = getattr(module, _block_list_name(module))
    on_gpu = device == "cuda" and torch.cuda.is_available()
    for block in blocks:
        first = next(block.parameters(), None)
        moved = on_gpu and first is not None and first.device.type == "cpu"
        if moved:
            block.to("cuda")
        quantize_(block, config, filter_fn=_bf16_linear)
        if moved:
            block.to("cpu")
    count = sum(1 for m in module.modules() if isinstance(m, torch.nn.Linear) and type(m.weight).__name__ in LEVEL_OF_TENSOR)
    if count == 0:
        raise UserError(f"{level}: no Linear layer of this transformer could be quantized (fp8 needs bf16 weights whose "
                        "sides are multiples of 16); use bf16 or a quanto level (int8, fp8) instead.")
    for p in module.parameters():
        p.requires_grad_(False)
    return count


def fast_level(module: torch.nn.Module) -> Optional[str]:
    """The fast level of a module quantized by quantize_fast (its first torchao weight), or None."""
    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            level = LEVEL_OF_TENSOR.get(type(m.weight).__name__)
            if level is not None:
                return level
    return None

