"""torchao's fast levels (fp8_fast, int8_fast) on the CPU: their error against bf16, their composition with every
placement and with regional compile, the quantized-weights cache, the calibration's FFN measurement.

torchao refuses fp8 off a GPU of compute capability >= 8.9 (a hardware check before quantizing); torch's CPU
`_scaled_mm` computes the same fp8 arithmetic, so the fp8 tests lift that check (and lowvram's own) and run it
here. fp8 needs Linear sides that are multiples of 16: the demo transformer's (24) are not, so fp8 runs on a
tiny transformer of the demo's kind with 32-wide layers.
"""

from __future__ import annotations

import pytest
import torch

from planner import constants as C
from plans import TP, plan_with

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            rope_max_seq_len=1024)


@pytest.fixture
def fp8_on_cpu(monkeypatch):
    import torchao.quantization.quant_api as quant_api

    from lowvram.placement import fast_quant

    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularities: None)
    monkeypatch.setattr(fast_quant, "check_device", lambda level, device: None)


def tiny_transformer(seed: int = 0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**TINY).to(torch.bfloat16).eval().requires_grad_(False)


def tiny_inputs(seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 16, 3, 16, 16, generator=gen).to(torch.bfloat16),
                timestep=torch.tensor([700.0]),
                encoder_hidden_states=torch.randn(1, 8, 32, generator=gen).to(torch.bfloat16), return_dict=False)


def placed_forward(plan_precision: str, kind: dict, compile: bool, inputs: dict, device: str = "cpu",
                   model=tiny_transformer, forwards: int = 1):
    """The tiny transformer placed by lowvram.placement at a precision; its last of `forwards` forwards (the
    same each time) and where its bytes were."""
    from dataclasses import replace

    from lowvram import placement
    from lowvram.bench.recipes import BenchPipe

    plan = plan_with(device, precision=plan_precision, transformer=kind, components=("transformer",))
    plan = replace(plan, components=tuple(replace(c, compile=compile) for c in plan.components))
    pipe = BenchPipe(transformer=model())
    placement.prepare(pipe, plan)
    try:
        placement.enter_stage(pipe, plan, "denoise")
        with torch.no_grad():
            outs = [pipe.transformer(**inputs)[0].float().cpu() for _ in range(forwards)]
        state = placement.describe_device_state(pipe)
    finally:
        placement.leave_all(pipe)
    assert all(torch.equal(o, outs[0]) for o in outs)
    assert placement.describe_device_state(pipe)["gpu_bytes"] == 0  # nothing left on a GPU after leaving
    return outs[-1], state


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("level", ["fp8_fast", "int8_fast"])
def test_per_forward_error_within_the_planners_figure(fp8_on_cpu, level, seed):
    """The measurement behind planner.constants.FAST_LEVEL_ERROR (CPU, tiny shapes, 3 seeds): one forward vs bf16."""
    from lowvram.placement.fast_quant import fast_level, quantize_fast

    inputs = tiny_inputs(seed + 1)
    model = tiny_transformer(seed)
    with torch.no_grad():
        ref = model(**inputs)[0].float()
        assert quantize_fast(model, level, "cpu") == 2 * 10  # every Linear of both blocks (attn1 4, attn2 4, ffn 2)
        out = model(**inputs)[0].float()
    assert fast_level(model) == level
    assert type(model.condition_embedder.time_proj.weight) is torch.nn.Parameter  # the non-block part stays bf16
    error = rel(out, ref)
    assert 0 < error <= C.FAST_LEVEL_ERROR[level] < C.FAST_ERROR_BOUND


@pytest.mark.parametrize("level", ["fp8_fast", "int8_fast"])
def test_quantizing_leaves_inductors_settings_alone(fp8_on_cpu, level):
    """torchao's configs default to switching on inductor's coordinate-descent tuning for the whole process: it
    made the 14B's fp8 block graph compile in 174 s instead of 9.4 s on the H200 for the same step (run 22), and
    slowed every later compile in the process. lowvram's quantizing must leave inductor's config as it was."""
    import torch._inductor.config as inductor_config

    from lowvram.placement.fast_quant import quantize_fast

    before = inductor_config.get_config_copy()
    assert quantize_fast(tiny_transformer(), level, "cpu") > 0
    after = inductor_config.get_config_copy()
    changed = sorted(k for k in before if before[k] != after.get(k))
    assert changed == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_error_bound_is_about_twice_quanto_fp8s_error(seed):
    """planner.constants.FAST_ERROR_BOUND's reference: quanto's fp8 weight-only level (allowed by default)."""
    from lowvram.placement.quantize import quantize_weights

    inputs = tiny_inputs(seed + 1)
    model = tiny_transformer(seed)
    with torch.no_grad():
        ref = model(**inputs)[0].float()
        quantize_weights(model, "fp8")
        error = rel(model(**inputs)[0].float(), ref)
    assert 0.4 * C.FAST_ERROR_BOUND < error < 0.6 * C.FAST_ERROR_BOUND


@pytest.mark.parametrize("kind", [TP("partial", resident_blocks=1), TP("block_offload"), TP("disk_offload")],
                         ids=["partial", "block_offload", "disk_offload"])
def test_fp8_fast_compiled_under_each_placement_matches_resident(fp8_on_cpu, kind):
    """Streaming changes nothing: each placement, compiled, equals the compiled resident forward; compiled
    and eager fp8 differ by fp8 rounding (inductor computes the activation scales in its own order), well
    within the level's error against bf16."""
    inputs = tiny_inputs()
    bf16, _ = placed_forward("bf16", TP("resident"), False, inputs)
    eager, _ = placed_forward("fp8_fast", TP("resident"), False, inputs)
    resident, _ = placed_forward("fp8_fast", TP("resident"), True, inputs)
    out, state = placed_forward("fp8_fast", kind, True, inputs)
    t = state["components"]["transformer"]
    assert t["quantized"] == "fp8_fast" and t["compiled"] and t["offloaded"]
    assert rel(out, resident) < 1e-5
    assert rel(resident, eager) < C.FAST_LEVEL_ERROR["fp8_fast"]
    assert rel(resident, bf16) <= C.FAST_LEVEL_ERROR["fp8_fast"]


def test_int8_fast_on_the_demo_model_with_compile_and_offload(small_job):
    """The whole run (encode, denoise, decode) at int8_fast: compiled and streamed equals compiled resident, and
    both stay within two steps' worth of the level's error of the bf16 run."""
    from dataclasses import replace

    from test_placement_kinds import run_stages

    def compiled(plan):
        return replace(plan, components=tuple(replace(c, compile=True) if c.role == "denoiser" else c
                                              for c in plan.components))

    job = small_job()
    bf16, _, _ = run_stages(job, replace(plan_with("cpu"), components=tuple(
        replace(c, compute_dtype="") if c.role == "denoiser" else c for c in plan_with("cpu").components)))
    resident, _, _ = run_stages(job, compiled(plan_with("cpu", precision="int8_fast")))
    latents, _, state = run_stages(job, compiled(plan_with("cpu", precision="int8_fast", transformer=TP("block_offload"))))
    assert state["components"]["transformer"]["quantized"] == "int8_fast"
    assert rel(latents, resident) < 1e-5
    assert rel(resident, bf16) < 2 * C.FAST_ERROR_BOUND


def test_fast_levels_go_through_the_quantized_cache(demo_t2v_path):
    from lowvram.placement import quant_cache
    from lowvram.placement.fast_quant import fast_level
    from lowvram.placement.quantize import quantize_weights
    from lowvram.models.loading import load_pipeline
    from lowvram.models.names import resolve_model

    pipe, _ = load_pipeline(resolve_model("tiny-random"), dtypes={"transformer": "bfloat16"})
    module = pipe.transformer
    assert quantize_weights(module, "int8_fast", "cpu")
    entry = quant_cache.save(module, demo_t2v_path, "transformer", "int8_fast", "bfloat16")
    assert (entry / quant_cache.TORCHAO_FILE).is_file()
    loaded = quant_cache.load(demo_t2v_path, "transformer", "int8_fast", "bfloat16")
    assert loaded is not None and fast_level(loaded) == "int8_fast"
    inputs = dict(hidden_states=torch.randn(1, 16, 2, 8, 8, dtype=torch.bfloat16), timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, 8, module.config.text_dim, dtype=torch.bfloat16), return_dict=False)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs)[0], module(**inputs)[0])
    # another level has its own entry: nothing to load yet
    assert quant_cache.load(demo_t2v_path, "transformer", "fp8_fast", "bfloat16") is None


def test_fp8_fast_is_refused_on_a_cpu_plan_before_quantizing():
    from lowvram.errors import UserError
    from lowvram.placement.fast_quant import quantize_fast

    model = tiny_transformer()
    with pytest.raises(UserError, match="compute capability >= 8.9"):
        quantize_fast(model, "fp8_fast", "cpu")
    assert type(model.blocks[0].ffn.net[2].weight) is torch.nn.Parameter


def test_calibration_measures_the_fast_levels_ffn_factor_on_the_cpu():
    """`lowvram calibrate`'s FFN measurement (lowvram.calibrate.ffn_levels), tiny, int8 on the CPU."""
    from lowvram.calibrate import ffn_levels

    out = ffn_levels(tokens=64, dim=64, ffn_dim=128, levels=("int8_fast",), device="cpu", repeats=2)
    assert out["bf16"]["seconds"] > 0
    assert out["int8_fast"]["factor"] > 0 and 0 < out["int8_fast"]["error"] < C.FAST_ERROR_BOUND
