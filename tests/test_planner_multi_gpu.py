"""Two GPUs: the probe lists both, plans say which card holds what, and the planner picks a multi-GPU plan only
where it is predicted faster, with every card's peak inside that card's budget."""

from __future__ import annotations

import dataclasses

import pytest

from lowvram.job import Job
from planner import multi_gpu
from planner.choose import Budget, NoPlanFits, Preferences, make_plan
from planner.plan import ComponentPlan, Plan, StagePeak, config_key, one_gpu
from planner.probe import GIB, HardwareProbe, capped_gpus, describe_probe, synthetic_probe, with_gpus
from planner.spec import known_spec

RTX3090 = dict(gpu_name="NVIDIA GeForce RTX 3090", compute_capability=(8, 6))
RTX4090 = dict(gpu_name="NVIDIA GeForce RTX 4090", compute_capability=(8, 9))
H200 = dict(gpu_name="NVIDIA H200", compute_capability=(9, 0))


def machine(sizes: tuple[float, ...], ram: float = 64, card: dict = RTX3090) -> HardwareProbe:
    return with_gpus(synthetic_probe(sizes[0], ram, **card), sizes)


def job(model: str, width: int = 832, height: int = 480, **changes) -> Job:
    return Job(prompt="a fox", model=model, width=width, height=height, **changes)


def fits_every_card(plan: Plan, probe: HardwareProbe, prefs: Preferences = Preferences()) -> None:
    budget = Budget.of(probe, prefs)
    per_gpu = plan.peak_vram_per_gpu
    assert len(per_gpu) == max(1, len(plan.gpus))
    for i, peak in enumerate(per_gpu):
        assert peak <= budget.gpu(i), f"cuda:{i}: {peak / GIB:.2f} GiB over its budget {budget.gpu(i) / GIB:.2f}"
    assert plan.peak_ram_bytes <= budget.ram


# --- the probe -----------------------------------------------------------------------------------------


def test_probe_lists_every_gpu_and_keeps_the_first_gpus_fields():
    probe = machine((24, 16))
    assert probe.gpu_count == 2 and probe.vram_total == 24 * GIB  # the top-level fields are GPU 0's
    assert [g.vram_free for g in probe.gpus] == [24 * GIB, 16 * GIB]
    assert [g.device for g in probe.gpus] == ["cuda:0", "cuda:1"]
    assert HardwareProbe.from_dict(probe.to_dict()) == probe
    lines = describe_probe(probe)
    assert lines[0] == "GPUs: 2" and "cuda:1" in lines[2] and "16.0 GiB free" in lines[2]
    # a probe written before probes had `gpus` reads as one GPU
    old = {k: v for k, v in synthetic_probe(24, 32).to_dict().items() if k != "gpus"}
    assert HardwareProbe.from_dict(old).gpu_count == 1
    # replacing GPU 0's fields changes GPU 0
    less = dataclasses.replace(probe, vram_free=8 * GIB)
    assert less.gpus[0].vram_free == 8 * GIB and less.gpus[1].vram_free == 16 * GIB
    assert probe.first_gpus(1).gpu_count == 1 and not synthetic_probe(0, 8).gpus


def test_capped_gpus_only_lower_what_the_machine_has():
    probe = machine((24, 24))
    capped = capped_gpus(probe, (12, 30))
    assert [g.vram_free for g in capped.gpus] == [12 * GIB, 24 * GIB]
    with pytest.raises(ValueError, match="has 2 GPU"):
        capped_gpus(probe, (12, 12, 12))


# --- the plan --------------------------------------------------------------------------------------------


def test_component_devices_are_validated():
    ComponentPlan("transformer", "bf16", "resident", devices=("cuda:0", "cuda:1"), split=(20,))
    bad = [
        dict(devices=("gpu1",)),
        dict(devices=("cuda:0", "cuda:0"), split=(3,)),
        dict(devices=("cuda:0", "cuda:1")),  # a split needs its split point
        dict(devices=("cuda:0", "cuda:1"), split=(0,)),
        dict(devices=("cuda:0",), split=(4,)),
        dict(placement="partial", resident_blocks=2, devices=("cuda:0", "cuda:1"), split=(3,)),
    ]
    for changes in bad:
        fields = dict(name="transformer", precision="bf16", placement="resident") | changes
        with pytest.raises((ValueError, TypeError)):
            ComponentPlan(**fields)
    with pytest.raises(ValueError, match="only a resident denoiser"):
        ComponentPlan("vae", "fp32", "gpu", devices=("cuda:0", "cuda:1"), split=(1,))


def test_plan_parallel_is_validated():
    Plan("cuda", parallel="ulysses", parallel_gpus=2)
    Plan("cpu", parallel="ulysses", parallel_gpus=2)  # CPU processes with gloo (the tests)
    for fields in (dict(parallel="ulysses"), dict(parallel="tensor", parallel_gpus=2), dict(parallel_gpus=2),
                   dict(device="cpu", parallel="ring", parallel_gpus=2)):
        with pytest.raises(ValueError):
            Plan(**({"device": "cuda"} | fields))
    with pytest.raises(ValueError, match="leave the components' devices empty"):
        Plan("cuda", (ComponentPlan("transformer", devices=("cuda:1",), placement="resident"),), parallel="ulysses",
             parallel_gpus=2)


def test_multi_gpu_plan_round_trips_and_old_plans_read_as_one_gpu():
    split = ComponentPlan("transformer", "bf16", "resident", devices=("cuda:0", "cuda:1"), split=(18,))
    plan = Plan("cuda", (ComponentPlan("text_encoder", "bf16", "gpu"), split, ComponentPlan("vae", "fp32", "gpu")),
                predicted=(StagePeak("denoise", 20 * GIB, GIB, 10.0, vram_per_gpu=(20 * GIB, 18 * GIB)),))
    data = plan.to_dict()
    assert data["components"][1]["devices"] == ("cuda:0", "cuda:1") and data["parallel"] == ""
    assert Plan.from_dict(plan.to_dict()) == plan
    assert plan.gpus == (0, 1) and plan.peak_vram_per_gpu == (20 * GIB, 18 * GIB)
    assert split.block_devices(40)[17:19] == ("cuda:0", "cuda:1")
    old = plan.to_dict()
    del old["parallel"], old["parallel_gpus"]
    for c in old["components"]:
        del c["devices"], c["split"]
    assert Plan.from_dict(old).gpus == (0,)
    flat = one_gpu(plan)
    assert flat.gpus == (0,) and flat.component("transformer").placement == "resident" and not flat.predicted


def test_one_gpu_gives_two_experts_somewhere_to_wait():
    apart = Plan("cuda", (ComponentPlan("transformer", "int8", "resident", devices=("cuda:0",)),
                          ComponentPlan("transformer_2", "int8", "partial", resident_blocks=3, devices=("cuda:1",))))
    assert apart.experts_apart
    flat = one_gpu(apart)
    assert not flat.experts_apart
    assert [c.idle for c in flat.denoisers] == ["mmap", "pinned"]


# --- the candidates -------------------------------------------------------------------------------------


def test_two_12_gib_cards_beat_one_for_the_14b_at_480p():
    model = "wan2.1-t2v-14b"
    spec = known_spec(model)
    two = make_plan(machine((12, 12)), spec, job(model))
    one = make_plan(machine((12,)), spec, job(model))
    assert multi_gpu.kind_of(two.plan), two.plan.summary()
    assert two.plan.predicted_seconds < 0.8 * one.plan.predicted_seconds
    fits_every_card(two.plan, machine((12, 12)))
    text = "\n".join(two.explanation)
    assert "multi-GPU options" in text and "best one-GPU plan" in text and "cuda:1" in text


def test_a14b_one_expert_per_card_at_2x24():
    model = "wan2.2-t2v-a14b"
    probe = machine((24, 24))
    prefs = Preferences(context_parallel=False)  # what the TUI plans with: one process
    result = make_plan(probe, known_spec(model), job(model), prefs)
    plan = result.plan
    assert plan.experts_apart, plan.summary()
    assert [plan.device_of(c.name) for c in plan.denoisers] == ["cuda:0", "cuda:1"]
    assert all(c.idle == "" for c in plan.denoisers)  # neither waits anywhere: both stay on their cards
    fits_every_card(plan, probe, prefs)
    # both phases hold both experts, each on its own card; no switch cost in the low-noise phase
    phases = [s for s in plan.predicted if s.stage == "denoise"]
    assert all(s.vram_per_gpu[0] > 10 * GIB and s.vram_per_gpu[1] > 10 * GIB for s in phases)
    one = make_plan(machine((24,)), known_spec(model), job(model), prefs).plan
    assert plan.predicted_seconds < one.predicted_seconds
    assert "one expert per GPU" in "\n".join(result.explanation)


def test_context_parallel_wins_on_two_h200s_at_720p_and_uses_ulysses():
    model = "wan2.1-t2v-14b"
    probe = machine((141, 141), ram=256, card=H200)
    plan = make_plan(probe, known_spec(model), job(model, 1280, 720)).plan
    assert (plan.parallel, plan.parallel_gpus) == ("ulysses", 2)
    compiled_one = make_plan(machine((141,), ram=256, card=H200), known_spec(model), job(model, 1280, 720)).plan
    assert plan.predicted_seconds < compiled_one.predicted_seconds  # also faster than one GPU compiled / fp8
    eager = Preferences(compile=False, min_quant="bf16")
    one = make_plan(machine((141,), ram=256, card=H200), known_spec(model), job(model, 1280, 720), eager).plan
    two = make_plan(probe, known_spec(model), job(model, 1280, 720), eager).plan
    denoise = lambda p: sum(s.seconds for s in p.predicted if s.stage == "denoise")  # noqa: E731
    # the measurement on two H200s: 0.52 of the one-GPU step at 720p (both eager bf16)
    assert denoise(two) / denoise(one) == pytest.approx(0.52, abs=0.02)
    denoise_stage = next(s for s in plan.predicted if s.stage == "denoise")
    assert denoise_stage.vram_per_gpu[0] == denoise_stage.vram_per_gpu[1] > 0  # every process holds the same
    decode = next(s for s in plan.predicted if s.stage == "decode")  # only the first decodes
    assert decode.vram_per_gpu[1] == 0


def test_one_gpu_stays_the_default_where_it_is_faster():
    model = "wan2.1-t2v-1.3b"
    small = job(model, 416, 240, frames=17)
    probe = machine((24, 24), card=RTX4090)
    result = make_plan(probe, known_spec(model), small)
    assert not multi_gpu.kind_of(result.plan) and result.plan.gpus == (0,)
    lines = [line for line in result.explanation if "context parallel" in line]
    assert lines and "slower" in lines[0]


def test_layer_split_balances_two_unequal_cards():
    model = "wan2.1-t2v-14b"
    spec = known_spec(model)
    probe = machine((24, 16), card=RTX4090)
    budget = Budget.of(probe, Preferences())
    (cp,), = multi_gpu.layer_split_options(spec, spec.tokens(832, 480, 81), budget.vrams, ("bf16",))
    k = cp.split[0]
    assert 20 < k < 39  # more blocks on the larger card
    result = make_plan(probe, spec, job(model))
    split = next(c for c in result.candidates if multi_gpu.kind_of(c.plan) == "layers split across 2 GPUs"
                 and c.plan.denoisers[0].precision == "bf16")
    assert split.fits, split.rejected_reason
    fits_every_card(split.plan, probe)
    assert split.plan.predicted_seconds < result.candidates[0].plan.predicted_seconds * 10


@pytest.mark.parametrize("sizes", [(24, 24), (24, 16), (16, 16), (12, 12), (8, 8)])
@pytest.mark.parametrize("model", ["wan2.1-t2v-14b", "wan2.2-t2v-a14b", "wan2.1-t2v-1.3b", "wan2.2-ti2v-5b"])
def test_chosen_plan_fits_every_card(sizes, model):
    probe = machine(sizes, ram=64, card=RTX4090)
    width, height = (1280, 704) if model == "wan2.2-ti2v-5b" else (832, 480)
    try:
        result = make_plan(probe, known_spec(model), job(model, width, height))
    except NoPlanFits:
        return
    fits_every_card(result.plan, probe)
    for c in result.candidates:
        if c.fits:
            fits_every_card(c.plan, probe)


def test_over_budget_names_the_card():
    model = "wan2.1-t2v-14b"
    result = make_plan(machine((24, 6), card=RTX4090), known_spec(model), job(model))
    split = [c for c in result.candidates if multi_gpu.kind_of(c.plan) == "layers split across 2 GPUs" and not c.fits]
    assert split and "on cuda:1" in split[0].rejected_reason


def test_ring_where_the_heads_do_not_divide():
    spec = known_spec("wan2.1-t2v-1.3b")  # 12 heads
    assert multi_gpu.parallel_kind(spec, 2, "bf16") == "ulysses"
    assert multi_gpu.parallel_kind(spec, 5, "bf16") == "ring"
    assert multi_gpu.parallel_kind(spec, 5, "fp32") == ""
    probe = machine((24,) * 5, ram=128, card=RTX4090)
    plans = [c.plan for c in make_plan(probe, spec, job("wan2.1-t2v-1.3b")).candidates if c.plan.parallel]
    assert plans and {p.parallel for p in plans} == {"ring"} and {p.parallel_gpus for p in plans} == {5}


def test_the_tui_plans_without_processes():
    model = "wan2.1-t2v-14b"
    result = make_plan(machine((12, 12)), known_spec(model), job(model), Preferences(context_parallel=False))
    assert not any(c.plan.parallel for c in result.candidates)


def test_the_idle_expert_reason_still_finds_its_twin():
    """Plans compare by config_key, which now includes the parallel fields: the reason still names the other choice."""
    result = make_plan(machine((24,)), known_spec("wan2.2-t2v-a14b"), job("wan2.2-t2v-a14b"))
    (reason,) = [r for r in result.plan.reasons if r.startswith("idle expert")]
    assert "pinned would be" in reason or "saves" in reason


def test_the_chosen_kinds_line_shows_the_chosen_plan():
    """The multi-GPU options list the best of each kind; for the chosen plan's kind that is the chosen plan (a near
    tie of the same kind that holds more RAM is not 'faster, at lower precision' at the same precision)."""
    model = "wan2.2-t2v-a14b"
    result = make_plan(machine((24, 12)), known_spec(model), job(model))
    chosen = result.plan
    kind = multi_gpu.kind_of(chosen)
    assert kind
    line = next(l for l in result.explanation if l.startswith(f"  {kind},"))
    assert line.endswith("(chosen)"), line
    assert f"{multi_gpu.fmt_seconds(chosen.predicted_seconds)}, peak VRAM" in line
    for l in result.explanation:
        if "at lower precision" in l:
            assert chosen.denoisers[0].precision not in l.split(":")[0], l


# --- compile and the fast levels under context parallel ------------------------------------------------------


def _cp(result, precision: str, compile: bool = True) -> list:
    """The context-parallel candidates whose denoisers run at `precision`, compiled or not."""
    return [c for c in result.candidates if c.plan.parallel and c.plan.denoisers[0].precision == precision
            and c.plan.denoisers[0].compile == compile]


def _compute(plan: Plan, tp_compile: float) -> float:
    """The denoise stage's seconds without the one-off compile."""
    return sum(s.seconds for s in plan.predicted if s.stage == "denoise") - tp_compile


def _fastest(cands: list):
    return min((c for c in cands if c.fits), key=lambda c: c.plan.predicted_seconds)


def test_2x_h200_at_720p_runs_context_parallel_compiled():
    """Run 20 measured ulysses + fp8_fast + compile at x0.43 of one H200's eager bf16 forward: compile and the fast
    levels are candidates under context parallel, predicted with the compile factor, the fast factor and each
    process's one-off compile. fp8_fast's compile costs what bf16's does (run 22: 9-12 s cold), so a first run
    of 50 steps pays its quantizing back and goes fp8_fast, compiled, and says so; a later run (the fp8 weights
    in the quantized cache, the processes' graph in inductor's) pays a warm compile only."""
    from planner.choose import pick
    from planner.estimate import compile_seconds
    from planner.timing import throughput_for

    model = "wan2.1-t2v-14b"
    spec = known_spec(model)
    probe = machine((141, 141), ram=256, card=H200)
    result = make_plan(probe, spec, job(model, 1280, 720))
    plan = result.plan
    assert (plan.parallel, plan.parallel_gpus) == ("ulysses", 2) and plan.denoisers[0].compile
    assert plan.denoisers[0].precision == "fp8_fast"
    fits_every_card(plan, probe)
    tp = throughput_for(probe)
    fp8 = _fastest(_cp(result, "fp8_fast"))
    bf16 = _fastest(_cp(result, "bf16"))
    eager = _fastest(_cp(result, "bf16", compile=False))
    assert not _cp(result, "fp8_fast", compile=False)  # a fast level only compiled
    cold = {p: compile_seconds(c.plan, tp) for p, c in (("fp8_fast", fp8), ("bf16", bf16))}
    assert cold["fp8_fast"] == cold["bf16"] > 0
    # per forward: fp8 compiled < bf16 compiled < bf16 eager, as measured
    assert _compute(fp8.plan, cold["fp8_fast"]) < _compute(bf16.plan, cold["bf16"]) < _compute(eager.plan, 0.0)
    assert config_key(fp8.plan) == config_key(plan) and bf16.plan.predicted_seconds > plan.predicted_seconds
    text = "\n".join(result.explanation)
    assert "why: compile: the 40 blocks are compiled once in each of the 2 processes" in text
    assert "why: precision fp8_fast: the blocks' matmuls run in fp8" in text
    line = next(l for l in result.explanation if l.startswith("  context parallel (ulysses) on 2 GPUs"))
    assert ", compiled:" in line and line.endswith("(chosen)")
    assert "compile: no compiled plan fits" not in text

    later = dataclasses.replace(spec, quantized_cached=(("transformer", "fp8_fast"),))
    longer = job(model, 1280, 720, steps=100)
    warm = make_plan(probe, later, longer, warm_parallel=((2, ("bf16", "fp8_fast")),))
    chosen = warm.plan
    assert chosen.parallel == "ulysses" and chosen.denoisers[0].precision == "fp8_fast" and chosen.denoisers[0].compile
    assert config_key(chosen) == config_key(pick([c for c in warm.candidates if c.fits], "speed").plan)
    text = "\n".join(warm.explanation)
    assert "why: precision fp8_fast: the blocks' matmuls run in fp8" in text
    assert "compiled once in each of the 2 processes" in text and "from inductor's cache)" in text
    # one process's compile records (the whole sequence) do not make the processes' compile (their share) warm
    cold_later = make_plan(probe, later, longer)
    one_warm = make_plan(probe, later, longer, warm_precisions=("bf16", "fp8_fast"))
    seconds = [_fastest(_cp(r, "fp8_fast")).plan.predicted_seconds for r in (cold_later, one_warm, warm)]
    saved = cold["fp8_fast"] - compile_seconds(fp8.plan, dataclasses.replace(tp, warm_precisions=("fp8_fast",)))
    assert seconds[0] == seconds[1] == pytest.approx(seconds[2] + saved) and saved > 0


def test_2x_rtx_4090_at_720p_runs_context_parallel_compiled():
    """Two 24 GiB cards: the 14B in bf16 is streamed in part on each process's card, in fp8 it stays resident; both
    compiled. The fastest is fp8_fast under context parallel: on a first run it wins unless within the tie
    tolerance (then bf16's precision does); with the processes' graphs in inductor's cache, it wins."""
    from planner import constants as C

    model = "wan2.1-t2v-14b"
    probe = machine((24, 24), ram=128, card=RTX4090)
    result = make_plan(probe, known_spec(model), job(model, 1280, 720))
    plan = result.plan
    assert plan.parallel == "ulysses" and plan.denoisers[0].compile
    fits_every_card(plan, probe)
    fp8 = _fastest(_cp(result, "fp8_fast"))
    assert fp8.plan.denoisers[0].placement == "resident"
    fitting = [c for c in result.candidates if c.fits]
    assert fp8 is min(fitting, key=lambda c: c.plan.predicted_seconds)  # predicted fastest of all
    if plan.denoisers[0].precision != "fp8_fast":
        varying = lambda c: c.predicted_seconds - C.LOAD_FIXED_SECONDS  # noqa: E731 (what the tie compares)
        assert varying(plan) <= varying(fp8.plan) * (1 + C.TIE_TOLERANCE["speed"])
        assert "fp8_fast was lower precision, faster by only" in "\n".join(result.explanation)
    line = next(l for l in result.explanation if l.startswith("  context parallel (ulysses) on 2 GPUs"))
    assert ", compiled:" in line and line.endswith("(chosen)")
    warm = make_plan(probe, known_spec(model), job(model, 1280, 720), warm_parallel=((2, ("bf16", "fp8_fast")),))
    assert warm.plan.parallel == "ulysses"
    assert (warm.plan.denoisers[0].precision, warm.plan.denoisers[0].compile) == ("fp8_fast", True)
    fits_every_card(warm.plan, probe)


def test_2x_rtx_3090_never_gets_fp8_fast():
    """Compute capability 8.6: no fp8 matmuls on either card, under context parallel as on one GPU."""
    model = "wan2.1-t2v-14b"
    probe = machine((24, 24), ram=128, card=RTX3090)
    result = make_plan(probe, known_spec(model), job(model, 1280, 720), warm_parallel=((2, ("bf16", "fp8_fast")),))
    assert result.plan.parallel == "ulysses" and result.plan.denoisers[0].compile
    assert result.plan.denoisers[0].precision != "fp8_fast"
    fast = [c for c in result.candidates if c.plan.denoisers[0].precision == "fp8_fast"]
    assert fast and not any(c.fits for c in fast)
    assert all("compute capability" in c.rejected_reason for c in fast if c.plan.parallel)
    assert "fp8_fast needs compute capability >= 8.9" in "\n".join(result.explanation)


def test_context_parallel_without_compile_has_no_fast_level():
    model = "wan2.1-t2v-14b"
    result = make_plan(machine((141, 141), ram=256, card=H200), known_spec(model), job(model, 1280, 720),
                       Preferences(compile=False))
    cp = [c.plan.denoisers[0] for c in result.candidates if c.plan.parallel]
    assert cp and not any(d.compile or d.fast for d in cp)
    assert "why: compile: off (--no-compile)" in "\n".join(result.explanation)
