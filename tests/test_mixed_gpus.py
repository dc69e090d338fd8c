"""Mixed cards: each GPU of a what-if machine (or a profile's saved one) is its own card, and the time model runs
each at its own pace: a layer split's blocks at their card's, a context-parallel step at the slower card's, each
expert at its card's. (A mixed pair used to be predicted at the first card's pace.)"""

from __future__ import annotations

import json

import pytest

from lowvram.cli import main
from lowvram.cli.whatif_gpus import each_gpu
from lowvram.errors import UserError
from lowvram.job import Job
from lowvram.profiles import load
from lowvram.profiles.apply import probe_like
from lowvram.profiles.schema import MachineFingerprint
from planner import multi_gpu
from planner.choose import make_plan
from planner.estimate import predict
from planner.plan import Plan
from planner.probe import GIB, HardwareProbe, synthetic_probe, with_gpus
from planner.spec import known_spec
from planner.timing import describe_cards, throughput_for

RTX4090 = ("NVIDIA GeForce RTX 4090", (8, 9))
RTX3090 = ("NVIDIA GeForce RTX 3090", (8, 6))
RTX3060 = ("NVIDIA GeForce RTX 3060", (8, 6))


def pair(first: tuple, second: tuple, sizes: tuple = (24, 24)) -> HardwareProbe:
    return with_gpus(synthetic_probe(sizes[0], 64, gpu_name=first[0], compute_capability=first[1]), sizes, (first, second))


def denoise(plan: Plan, probe: HardwareProbe, model: str, job: Job, phase: str = "") -> float:
    """The plan's denoise seconds (or one phase's) predicted on `probe`'s cards."""
    stages, _ = predict(plan, known_spec(model), job, throughput_for(probe))
    return sum(s.seconds for s in stages if s.stage == "denoise" and phase in (s.phase, ""))


def of_kind(candidates, kind: str, precision: str = "") -> Plan:
    return next(c.plan for c in candidates if multi_gpu.kind_of(c.plan) == kind
                and c.plan.denoisers[0].precision.startswith(precision))


# --- the probe and the throughputs -----------------------------------------------------------------------


def test_each_what_if_gpu_carries_its_own_card():
    probe = pair(RTX4090, RTX3060, (24, 12))
    assert [(g.name, g.compute_capability, g.vram_total) for g in probe.gpus] == [
        (RTX4090[0], (8, 9), 24 * GIB), (RTX3060[0], (8, 6), 12 * GIB)]
    assert HardwareProbe.from_dict(probe.to_dict()) == probe
    assert probe.only_gpu(1).gpu_name == RTX3060[0] and probe.only_gpu(1).vram_total == 12 * GIB
    # without cards, every GPU is the first's card (two of one card, the planner tests' machines)
    same = with_gpus(synthetic_probe(24, 64, gpu_name=RTX4090[0], compute_capability=(8, 9)), (24, 12))
    assert {g.name for g in same.gpus} == {RTX4090[0]}
    with pytest.raises(ValueError, match="one card per size"):
        with_gpus(synthetic_probe(24, 64), (24, 12), (RTX4090,))


def test_the_time_model_has_each_cards_pace():
    mixed = throughput_for(pair(RTX4090, RTX3060))
    assert mixed.on(0).gpu_flops == throughput_for(pair(RTX4090, RTX4090)).gpu_flops
    assert mixed.on(1).gpu_flops == throughput_for(pair(RTX3060, RTX3060)).gpu_flops
    assert mixed.on(1).gpu_flops < mixed.on(0).gpu_flops / 3
    assert mixed.on(1).compute_capability == (8, 6)
    assert throughput_for(pair(RTX4090, RTX4090)).cards == ()  # one card: one pace
    lines = describe_cards(pair(RTX4090, RTX3060), mixed)
    assert lines[1].startswith(f"  cuda:0 {RTX4090[0]}: timed at") and "defaults for RTX 4090" in lines[1]
    assert lines[2].startswith(f"  cuda:1 {RTX3060[0]}: timed at 13.0 TFLOP/s") and "defaults for RTX 3060" in lines[2]


# --- multi-GPU plans at their cards' pace ------------------------------------------------------------------


def test_a_split_or_context_parallel_step_waits_for_the_slower_card():
    model = "wan2.1-t2v-14b"
    job = Job(prompt="a fox", model=model)
    fast, mixed, slow = pair(RTX4090, RTX4090), pair(RTX4090, RTX3060), pair(RTX3060, RTX3060)
    candidates = make_plan(mixed, known_spec(model), job).candidates
    one = next(c.plan for c in candidates if not multi_gpu.kind_of(c.plan))
    cp = of_kind(candidates, "context parallel (ulysses) on 2 GPUs")
    split = of_kind(candidates, "layers split across 2 GPUs", "int8")

    # a one-GPU plan runs on cuda:0 alone: the second card's pace does not matter
    assert denoise(one, mixed, model, job) == pytest.approx(denoise(one, fast, model, job))
    # context parallel: every step waits for the slower process
    assert denoise(cp, mixed, model, job) == pytest.approx(denoise(cp, slow, model, job))
    assert denoise(cp, mixed, model, job) > 2 * denoise(cp, fast, model, job)
    # layer split: each card's blocks at its pace (the crossing and the switch alike on both)
    k, n = split.denoisers[0].split[0], known_spec(model).transformer.num_blocks
    expected = k / n * denoise(split, fast, model, job) + (n - k) / n * denoise(split, slow, model, job)
    assert denoise(split, mixed, model, job) == pytest.approx(expected)
    assert denoise(split, fast, model, job) < denoise(split, mixed, model, job) < denoise(split, slow, model, job)


def test_one_expert_per_gpu_runs_at_its_cards_pace():
    model = "wan2.2-t2v-a14b"
    job = Job(prompt="a fox", model=model)
    fast, mixed, slow = pair(RTX4090, RTX4090), pair(RTX4090, RTX3060), pair(RTX3060, RTX3060)
    apart = of_kind(make_plan(mixed, known_spec(model), job).candidates, "one expert per GPU")
    assert denoise(apart, mixed, model, job, "high") == pytest.approx(denoise(apart, fast, model, job, "high"))
    assert denoise(apart, mixed, model, job, "low") == pytest.approx(denoise(apart, slow, model, job, "low"))
    assert denoise(apart, mixed, model, job, "low") > 2 * denoise(apart, fast, model, job, "low")


def test_fast_matmuls_need_every_card_the_plan_uses():
    model = "wan2.1-t2v-14b"
    result = make_plan(pair(RTX4090, RTX3090), known_spec(model), Job(prompt="a fox", model=model))
    split_fp8 = [c for c in result.candidates if multi_gpu.kind_of(c.plan) == "layers split across 2 GPUs"
                 and c.plan.denoisers[0].precision == "fp8"]
    assert split_fp8 and all("fast matmul (cuda:1: 8.6)" in c.rejected_reason for c in split_fp8)
    one_fp8 = [c for c in result.candidates if not multi_gpu.kind_of(c.plan) and c.plan.denoisers[0].precision == "fp8"]
    assert one_fp8 and not any("compute capability" in c.rejected_reason for c in one_fp8)  # cuda:0 is a 4090


# --- the command line: --gpus 24,12 against 24,24 ----------------------------------------------------------


def plan_json(capsys, *options: str) -> tuple[dict, str]:
    code = main(["plan", "--model", "wan2.1-t2v-1.3b", "--ram", "64", "--json", *options])
    said = capsys.readouterr()
    assert code == 0, said.err
    return json.loads(said.out), said.err


def test_a_24_12_pair_is_not_timed_as_24_24(capsys):
    mixed, err = plan_json(capsys, "--gpus", "24,12")
    alike, _ = plan_json(capsys, "--gpus", "24,24")
    names = [g["name"] for g in mixed["probe"]["gpus"]]
    assert names == ["RTX 3090 (assumed)", "RTX 3060 (assumed)"]
    assert "what-if GPU cuda:1: assuming an RTX 3060 (12 GB, compute capability 8.6, 25.6 TFLOP/s bf16) from --gpus " \
           "(cuda:1, a 12 GB GPU)" in err
    text = "\n".join(mixed["explanation"])
    assert "cuda:0: RTX 3090 (assumed)" in text and "cuda:1: RTX 3060 (assumed)" in text
    assert "cuda:1 RTX 3060 (assumed): timed at 13.0 TFLOP/s bf16, defaults for RTX 3060" in text
    assert [g["name"] for g in alike["probe"]["gpus"]] == ["RTX 3090 (assumed)"] * 2
    assert "time model per GPU" not in "\n".join(alike["explanation"])

    probes = [HardwareProbe.from_dict(out["probe"]) for out in (mixed, alike)]
    job = Job(prompt="a fox", model="wan2.1-t2v-1.3b")
    candidates = make_plan(probes[0], known_spec("wan2.1-t2v-1.3b"), job).candidates
    cp = of_kind(candidates, "context parallel (ulysses) on 2 GPUs")
    one = next(c.plan for c in candidates if not multi_gpu.kind_of(c.plan))
    model = "wan2.1-t2v-1.3b"
    assert denoise(cp, probes[0], model, job) > 1.5 * denoise(cp, probes[1], model, job)  # the second card works
    assert denoise(one, probes[0], model, job) == pytest.approx(denoise(one, probes[1], model, job))  # it does not


def test_gpu_names_per_gpu_on_the_command_line(capsys):
    out, err = plan_json(capsys, "--gpus", "24,12", "--gpu-name", "RTX 4090,RTX 3060")
    assert [(g["name"], tuple(g["compute_capability"])) for g in out["probe"]["gpus"]] == [
        ("RTX 4090", (8, 9)), ("RTX 3060", (8, 6))]
    assert "assuming" not in err
    out, _ = plan_json(capsys, "--gpus", "24,12", "--gpu-name", "RTX 4090")  # one name: every GPU is that card
    assert [g["name"] for g in out["probe"]["gpus"]] == ["RTX 4090", "RTX 4090"]
    assert main(["plan", "--model", "wan2.1-t2v-1.3b", "--ram", "64", "--gpus", "24,12", "--gpu-name", "A,B,C"]) == 2
    assert "give one value for every GPU of --gpus (2)" in capsys.readouterr().err


def test_each_gpu_values():
    assert each_gpu(None, 2, "--gpu-name") == (None, None)
    assert each_gpu("RTX 4090", 3, "--gpu-name") == ("RTX 4090",) * 3
    assert each_gpu("RTX 4090, RTX 3060", 2, "--gpu-name") == ("RTX 4090", "RTX 3060")
    for bad in ("a,b,c", "a,"):
        with pytest.raises(UserError, match="one value for all"):
            each_gpu(bad, 2, "--compute-capability")


# --- profiles saved on mixed cards --------------------------------------------------------------------------


def test_a_profile_saved_on_mixed_cards_keeps_each_card(tmp_path, capsys):
    path = tmp_path / "mixed.toml"
    assert main(["profile", "save", str(path), "--model", "wan2.1-t2v-14b", "--gpus", "24,12", "--ram", "64"]) == 0
    capsys.readouterr()
    saved = load(path).saved_on
    assert saved.gpu_names == ("RTX 3090 (assumed)", "RTX 3060 (assumed)")
    assert saved.gpu_compute_capabilities == ("8.6", "8.6")
    assert "2 GPUs (RTX 3090 (assumed) 24 GiB + RTX 3060 (assumed) 12 GiB)" in saved.describe()
    rebuilt = probe_like(saved)
    assert [(g.name, round(g.vram_total / GIB)) for g in rebuilt.gpus] == [("RTX 3090 (assumed)", 24),
                                                                          ("RTX 3060 (assumed)", 12)]
    tp = throughput_for(rebuilt)
    assert tp.on(1).gpu_flops < tp.on(0).gpu_flops / 2
    # one card twice: no per-GPU keys, and a profile without them rebuilds every GPU as the first
    old = MachineFingerprint("RTX 3090", 24.0, 64.0, "8.6", gpus=2, gpu_vram_gib=(24.0, 12.0))
    assert old.cards == (("RTX 3090", "8.6"),) * 2
    with pytest.raises(ValueError, match="gpu_names lists 3 GPUs"):
        MachineFingerprint("RTX 3090", 24.0, 64.0, gpus=2, gpu_names=("a", "b", "c"))
