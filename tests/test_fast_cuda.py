"""fp8_fast / int8_fast + regional compile under each placement on a real GPU (skipped without CUDA; run on the
GPU machine): each placement, streams included, gives the compiled resident forward's output, and that output is
within the level's per-forward error of eager bf16. A tiny Wan transformer with 32-wide layers (fp8 needs sides
that are multiples of 16), placed by lowvram.placement as the runner does; no recompile across placements.
"""

from __future__ import annotations

import pytest
import torch

from planner import constants as C
from plans import TP
from test_fast_quant import TINY as CPU_TINY
from test_fast_quant import rel

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

TINY = dict(CPU_TINY, num_layers=3)
KINDS = {
    "resident": TP("resident"),
    "partial": TP("partial", resident_blocks=1),
    "block_stream": TP("block_offload", use_stream=True),
    "block_no_stream": TP("block_offload", use_stream=False),
    "disk_stream": TP("disk_offload", use_stream=True),
}


def levels() -> list[str]:
    cc = torch.cuda.get_device_capability() if torch.cuda.is_available() else (0, 0)
    return (["fp8_fast"] if cc >= C.FAST_MIN_COMPUTE_CAPABILITY["fp8_fast"] else []) + ["int8_fast"]


def fresh():
    torch.manual_seed(0)
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**TINY).to(torch.bfloat16).eval().requires_grad_(False)


def inputs() -> dict:
    gen = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 16, 3, 32, 32, generator=gen).to("cuda", torch.bfloat16),
                timestep=torch.tensor([700.0], device="cuda"),
                # 24 text tokens: CUDA's int8 matmul (torch._int_mm) needs more than 16 rows; Wan's pipelines always
                # pad the prompt to 512 tokens
                encoder_hidden_states=torch.randn(1, 24, 32, generator=gen).to("cuda", torch.bfloat16), return_dict=False)


def forward(precision: str, kind: dict, compile: bool) -> torch.Tensor:
    """Two forwards (the second after the prefetch chain is set up), equal; the GPU empty after leaving."""
    from test_fast_quant import placed_forward

    out, _ = placed_forward(precision, kind, compile, inputs(), device="cuda", model=fresh, forwards=2)
    return out


@pytest.fixture(scope="module")
def bf16():
    return forward("bf16", TP("resident"), False)


@pytest.mark.parametrize("level", levels())
def test_fast_level_compiled_under_each_placement_matches_resident(bf16, level):
    torch._dynamo.reset()
    old = torch._dynamo.config.error_on_recompile
    torch._dynamo.config.error_on_recompile = True
    try:
        resident = forward(level, KINDS["resident"], True)
        assert rel(resident, bf16) <= C.FAST_LEVEL_ERROR[level] * 2  # tiny shapes: the CPU measured figure, x2 slack
        for name, kind in KINDS.items():
            out = forward(level, kind, True)
            assert rel(out, resident) < 1e-3, name
    finally:
        torch._dynamo.config.error_on_recompile = old


def test_quanto_and_bf16_compiled_under_streams(bf16):
    """bf16 compiled and quanto int8 compiled under block offload with streams equal their resident forwards."""
    for precision in ("bf16", "int8"):
        resident = forward(precision, KINDS["resident"], True)
        streamed = forward(precision, KINDS["block_stream"], True)
        assert rel(streamed, resident) < 1e-3
    assert rel(forward("bf16", KINDS["resident"], True), bf16) < 1e-2


@pytest.mark.parametrize("level", levels())
def test_blocks_on_the_cpu_are_quantized_on_the_gpu_one_at_a_time(level):
    """A first run's transformer is on the CPU when quantized: quantize_fast moves one block at a time to the
    GPU and back. The weights come back to the CPU, quantized exactly as quantizing on the GPU in place does,
    and the GPU holds nothing afterwards."""
    from lowvram.placement.fast_quant import fast_level, quantize_fast

    on_gpu = fresh().to("cuda")
    quantize_fast(on_gpu, level, "cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    on_cpu = fresh()
    quantize_fast(on_cpu, level, "cuda")
    assert torch.cuda.memory_allocated() <= before  # nothing left behind (the allocator may free a cached scale)
    assert fast_level(on_cpu) == level
    assert {p.device.type for p in on_cpu.parameters()} == {"cpu"}
    with torch.no_grad():
        a = on_cpu.to("cuda")(**inputs())[0]
        b = on_gpu(**inputs())[0]
    assert torch.equal(a, b)
