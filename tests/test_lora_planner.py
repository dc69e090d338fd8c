"""The planner's model of LoRAs: fused costs nothing per step (fusing time and, unquantized, RAM), adapters
cost VRAM and time each step; it picks and explains; a stored file is never fused into. And the benchmark's
path on tiny shapes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lowvram.job import Job
from lowvram.loras.spec import LoraFootprint, LoraSpec
from planner import constants as C
from planner import memory as M
from planner.choose import Preferences, make_plan
from planner.estimate import predict
from planner.plan import ComponentPlan, Plan, with_loras
from planner.probe import GIB, synthetic_probe
from planner.timing import throughput_for

# A rank-64 LoRA on every block Linear of the 14B (lowvram.bench.lora.write_random_lora's), from its shapes.
DIM, FFN, LAYERS, RANK = 5120, 13824, 40, 64
LINEARS = [(DIM, DIM)] * 8 + [(DIM, FFN), (FFN, DIM)]  # attn1 q/k/v/o, attn2 q/k/v/o, FFN up, down (in, out)
VIDEO = [(DIM, DIM)] * 6 + [(DIM, FFN), (FFN, DIM)]  # attn2's k/v run on the 512 text tokens
R64 = LoraFootprint(
    params=LAYERS * sum(RANK * (i + o) for i, o in LINEARS), target_params=LAYERS * sum(i * o for i, o in LINEARS),
    rank=RANK, layers=LAYERS * len(LINEARS), flops_per_token=LAYERS * sum(2 * RANK * (i + o) for i, o in VIDEO),
    out_per_token=LAYERS * sum(o for _, o in VIDEO), max_out=FFN,
)
LORA = LoraSpec("/loras/r64.safetensors", 1.0, "both", "a" * 64, R64)


@pytest.fixture(scope="module")
def spec():
    from lowvram.models.specs import spec_for_model

    return spec_for_model("wan2.1-t2v-14b")


def job(**kw) -> Job:
    return Job(prompt="p", model="wan2.1-t2v-14b", width=832, height=480, frames=81, steps=4, guidance=1.0, loras=(LORA,), **kw)


def h200(vram: float = 24.0, ram: float = 64.0):
    return synthetic_probe(vram_gib=vram, ram_gib=ram, gpu_name="NVIDIA H200", compute_capability=(9, 0))


def one(precision="bf16", placement="resident", lora="", **kw) -> Plan:
    plan = Plan(device="cuda", components=(ComponentPlan("text_encoder", "bf16", "gpu"),
                                           ComponentPlan("transformer", precision, placement, lora=lora, **kw),
                                           ComponentPlan("vae", "fp32", "gpu")))
    return with_loras(plan, (LORA,)) if lora else plan


def stage(plan, spec, j, name):
    stages, _ = predict(plan, spec, j, throughput_for(h200()))
    return next(s for s in stages if s.stage == name)


def test_adapters_cost_vram_and_time_per_step_fused_costs_neither(spec):
    j, plain = job(), job().with_(loras=())
    tokens = spec.tokens(832, 480, 81)
    base = stage(one(), spec, plain, "denoise")
    fused = stage(one(lora="fused"), spec, j, "denoise")
    unfused = stage(one(lora="unfused"), spec, j, "denoise")
    assert (fused.vram_bytes, fused.seconds) == (base.vram_bytes, base.seconds)
    extra = R64.params * 2 + C.LORA_EXTRA_OUTPUT_COPIES * tokens * FFN * 2
    assert unfused.vram_bytes - base.vram_bytes == extra
    assert 0.5 * GIB < R64.params * 2 < 0.7 * GIB  # 307 M params in bf16: what a 600 MB rank-64 file holds
    per_step = (unfused.seconds - base.seconds) / j.steps
    tp = throughput_for(h200())
    want = tokens * R64.flops_per_token / (tp.gpu_flops * C.LORA_MATMUL_EFFICIENCY) + \
        tokens * R64.out_per_token * C.LORA_OUTPUT_PASSES * 2 / tp.gpu_bandwidth
    assert per_step == pytest.approx(want)
    forward = (base.seconds - 0) / j.steps
    assert 0.02 < per_step / forward < 0.2  # a few percent of a 14B forward at 480p on an H200


def test_context_parallel_adapters_cost_each_process_its_share_of_the_tokens(spec):
    """Each process of a context-parallel plan runs the adapters on its own tokens only, as it does the base
    weights: on two GPUs the adapters add half the one-GPU time per step (not all of it)."""
    j, plain = job(), job().with_(loras=())

    def on_two(plan: Plan) -> Plan:
        return replace(plan, parallel="ulysses", parallel_gpus=2)

    def denoise_seconds(plan, j):
        return stage(plan, spec, j, "denoise").seconds

    one_gpu = denoise_seconds(one(lora="unfused"), j) - denoise_seconds(one(), plain)
    two_gpus = denoise_seconds(on_two(one(lora="unfused")), j) - denoise_seconds(on_two(one()), plain)
    assert one_gpu > 0 and two_gpus == pytest.approx(one_gpu / 2)


def test_fused_unquantized_weights_cost_ram_and_fusing_time(spec):
    j = job()
    load_f = stage(one(lora="fused"), spec, j, "load")
    load_u = stage(one(lora="unfused"), spec, j, "load")
    fuse = R64.target_params / C.LORA_FUSE_PARAMS_PER_SECOND  # memory-bound: per adapted parameter (run 19: 70 s, 14B)
    assert load_f.seconds - load_u.seconds == pytest.approx(fuse)
    denoise_f = stage(one(lora="fused"), spec, j, "denoise")
    denoise_u = stage(one(lora="unfused"), spec, j, "denoise")
    rewritten = R64.target_params * 2  # resident: every rewritten weight stays in RAM for the run
    assert denoise_f.ram_bytes - denoise_u.ram_bytes == rewritten - R64.params * 2
    # quantized: fused before quantizing, cached per LoRA set: no RAM beyond the quantized weights, no fusing each run
    int8 = stage(one("int8", lora="fused"), spec, j, "load")
    int8_plain = stage(one("int8"), spec, j.with_(loras=()), "load")
    assert int8.seconds - int8_plain.seconds == pytest.approx(R64.params * 2 / throughput_for(h200()).disk_read)
    # streamed weights are page-locked copies already: fusing them adds no RAM
    streamed = one(lora="fused", placement="block_offload")
    assert M.fused_heap_bytes(spec, streamed.component("transformer"), (R64,)) == 0


def test_the_planner_chooses_explains_and_records(spec):
    result = make_plan(h200(24), spec, job(), Preferences(min_quant="bf16"), suggest_smaller=False)
    modes = {c.plan.denoisers[0].lora for c in result.candidates}
    assert modes == {"fused", "unfused"}
    # adapters run eager and beside quanto / unquantized weights only (peft over torchao or compiled: not measured)
    unfused = [c.plan.denoisers[0] for c in make_plan(h200(24), spec, job(), suggest_smaller=False).candidates
               if c.plan.denoisers[0].lora == "unfused"]
    assert unfused and not any(d.compile or d.fast for d in unfused)
    chosen = result.plan
    mode = chosen.denoisers[0].lora
    assert chosen.loras[0].fused == (mode == "fused") and chosen.loras[0].sha256 == "a" * 64
    text = "\n".join(result.explanation)
    assert f"LoRAs: r64.safetensors x1: {'fused' if mode == 'fused' else 'adapters'}" in text
    other = "unfused" if mode == "fused" else "fused"
    assert f"LoRA {other} instead (bf16 " in text and "peak VRAM " in text and "per step" in text
    # unfused adapters shrink the resident part of a partial plan: they take its VRAM
    k = M.partial_blocks(spec, "transformer", "bf16", spec.tokens(832, 480, 81), int(20 * GIB))
    k_lora = M.partial_blocks(spec, "transformer", "bf16", spec.tokens(832, 480, 81), int(20 * GIB), "unfused", (R64,))
    assert k_lora < k


def test_a_short_job_keeps_adapters_a_long_one_fuses(spec):
    """Fusing unquantized weights costs time at every start; adapters cost time at every step."""
    prefs = Preferences(min_quant="bf16")
    short = make_plan(h200(24), spec, job().with_(steps=1), prefs, suggest_smaller=False).plan
    long = make_plan(h200(24), spec, job().with_(steps=100, guidance=5.0), prefs, suggest_smaller=False).plan
    assert short.denoisers[0].lora == "unfused" and long.denoisers[0].lora == "fused"


def test_two_gpu_plans_weigh_fused_loras_and_keep_adapters_eager(spec):
    """The multi-GPU candidates carry LoRAs as the one-GPU ones may: fused too, and adapters never compiled or beside
    a fast level. (After the two-GPU merge they all carried adapters, compiled and on fp8_fast included, so a
    fused context-parallel plan faster than the chosen one was never weighed.)"""
    from planner.multi_gpu import kind_of
    from planner.probe import with_gpus

    card = dict(gpu_name="NVIDIA GeForce RTX 4090", compute_capability=(8, 9))
    probe = with_gpus(synthetic_probe(vram_gib=16, ram_gib=64, **card), (16, 16))
    result = make_plan(probe, spec, job().with_(steps=50, guidance=5.0), suggest_smaller=False)
    multi = [c.plan for c in result.candidates if kind_of(c.plan)]
    kinds = {kind_of(p) for p in multi}
    assert {"layers split across 2 GPUs", "context parallel (ulysses) on 2 GPUs"} <= kinds
    for kind in kinds:
        assert {p.denoisers[0].lora for p in multi if kind_of(p) == kind} == {"fused", "unfused"}, kind
    adapters = [d for p in multi for d in p.denoisers if d.lora == "unfused"]
    assert adapters and not any(d.compile or d.fast for d in adapters)
    chosen = result.plan  # two GPUs beat one here, whichever way they carry the LoRA
    assert kind_of(chosen) and chosen.loras[0].fused == (chosen.denoisers[0].lora == "fused")


def test_two_gpu_plans_size_their_resident_blocks_for_the_adapters(spec):
    """A multi-GPU plan carrying adapters keeps fewer blocks resident, as a one-GPU one does (the adapters take
    some of each card): sized without them, every partial context-parallel plan was over VRAM, and a short
    distillation job on 2 x 16 GiB ran on one GPU instead of the faster two."""
    from planner.multi_gpu import kind_of
    from planner.probe import with_gpus

    card = dict(gpu_name="NVIDIA GeForce RTX 4090", compute_capability=(8, 9))
    probe = with_gpus(synthetic_probe(vram_gib=16, ram_gib=64, **card), (16, 16))
    result = make_plan(probe, spec, job(), suggest_smaller=False)  # 4 steps, no CFG: adapters pay
    partial = [c for c in result.candidates if kind_of(c.plan) and c.plan.denoisers[0].placement == "partial"
               and c.plan.denoisers[0].lora == "unfused"]
    assert partial and not [c.rejected_reason for c in partial if "over VRAM" in c.rejected_reason]
    chosen = result.plan
    assert chosen.parallel and chosen.denoisers[0].lora == "unfused" and chosen.denoisers[0].placement == "partial"


def test_a_stored_file_is_never_fused_into(spec):
    from planner.spec import StoredWeights

    stored = StoredWeights("Q5_K_M GGUF", block_bytes=220 * 2**20, rest_bytes=400 * 2**20, dequant_bytes_per_param=4.0)
    gguf = replace(spec, components=tuple(replace(c, stored=stored) if c.name == "transformer" else c for c in spec.components))
    result = make_plan(h200(24), gguf, job(), suggest_smaller=False)
    assert {c.plan.denoisers[0].lora for c in result.candidates} == {"unfused"}
    assert "fused: not possible: a stored fp8 / GGUF file" in "\n".join(result.explanation)


def test_a_lora_on_one_expert_leaves_the_other_without(spec):
    from lowvram.models.specs import spec_for_model

    a14b = spec_for_model("wan2.2-t2v-a14b")
    low = LoraSpec("/l.safetensors", 1.0, "low", "b" * 64, R64)
    j = Job(prompt="p", model="wan2.2-t2v-a14b", steps=4, guidance=1.0, guidance_2=1.0, loras=(low,))
    plan = make_plan(h200(24), a14b, j, suggest_smaller=False).plan
    assert plan.component("transformer").lora == "" and plan.component("transformer_2").lora in ("fused", "unfused")
    assert plan.loras[0].expert == "low"


def test_plans_with_loras_round_trip_and_say_so():
    plan = one(lora="unfused")
    assert Plan.from_dict(plan.to_dict()) == plan
    assert "LoRA adapters resident on the GPU" in plan.summary()
    with pytest.raises(ValueError, match="lora"):
        ComponentPlan("vae", "fp32", "gpu", lora="fused")


def test_the_lora_benchmark_runs_on_tiny_shapes(small_job):
    """`lowvram bench lora`'s path (LoRA written, checked, fused / adapters, step times, the table) on the CPU."""
    from lora_files import demo_transformer  # noqa: F401  (the demo is built)
    from lowvram.bench.e2e import Hosts
    from lowvram.bench.lora import lora_section, run_lora
    from planner.plan import simple_plan
    from test_bench_e2e import CONFIGS, TINY

    config = dict(TINY, freq_dim=256)
    hosts = Hosts("tiny", log=lambda s: None, device="cpu", configs=dict(CONFIGS, with_text_encoder=False, transformer=config))
    base = simple_plan("cpu", "fp32", "block_offload", use_stream=False)
    plans = {8.0: {"none": base, "fused": replace(base, components=tuple(replace(c, lora="fused") if c.role == "denoiser" else c for c in base.components)),
                   "unfused": replace(base, components=tuple(replace(c, lora="unfused") if c.role == "denoiser" else c for c in base.components))}}
    saved: list = []
    out = run_lora("14b", budgets=(8.0,), rank=4, steps=3, hosts=hosts, job=small_job(steps=3), plans=plans, config=config,
                   log=lambda s: None, save=lambda d: saved.append(len(d["runs"])))
    assert saved == [1, 2, 3]  # written after every case: a run cut short keeps its cases
    runs = {r["mode"]: r for r in out["runs"]}
    assert set(runs) == {"none", "fused", "unfused"} and not any(r["oom"] for r in runs.values())
    assert runs["fused"]["lora"] == "fused" and runs["unfused"]["lora"] == "unfused" and runs["none"]["lora"] == ""
    assert all(len(r["step_seconds"]) == 3 and r["step_vs_none"] > 0 for r in runs.values())
    assert runs["none"]["step_vs_none"] == 1.0 and set(runs["fused"]["composed_runs"]) == {"4", "50"}
    text = lora_section(out)
    assert text.count("| 8 |") == 3 and "composed" in text
