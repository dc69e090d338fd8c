"""LoRAs on the demo models: lowvram's output equals diffusers' own LoRA loading, in every key layout, fused
or as adapters, under quantized and offloaded plans, on one expert or both; the quantized cache is keyed by
the LoRA set; bad input is refused before any model loads."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lora_files import LAYOUTS, make_lora
from lowvram.job import Job
from lowvram.loras.spec import LoraSpec
from lowvram.sampling.runner import generate
from plans import TP, plan_with

PROMPT, NEGATIVE = "a red fox runs through a snowy forest", "blurry, static"


def lora_plan(plan, mode: str):
    """`plan` with every denoiser carrying the job's LoRAs `mode` ("fused" / "unfused")."""
    return replace(plan, components=tuple(replace(c, lora=mode) if c.role == "denoiser" else c for c in plan.components))


def diffusers_latents(model: str, job: Job, loras: list[tuple[str, float, str]]) -> torch.Tensor:
    """diffusers' pipeline with its own load_lora_weights: (path, scale, "high" | "low" | "both")."""
    from diffusers import DiffusionPipeline

    from lowvram.models.demo import ensure_demo

    pipe = DiffusionPipeline.from_pretrained(str(ensure_demo(model)), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    names = {"transformer": ([], []), "transformer_2": ([], [])}
    for i, (path, scale, expert) in enumerate(loras):
        targets = {"both": ("transformer", "transformer_2"), "high": ("transformer",), "low": ("transformer_2",)}[expert]
        for target in targets:
            if getattr(pipe, target, None) is None:
                continue
            name = f"l{i}-{target}"
            pipe.load_lora_weights(path, adapter_name=name, load_into_transformer_2=target == "transformer_2")
            names[target][0].append(name)
            names[target][1].append(scale)
    for target, (adapters, weights) in names.items():
        if adapters:
            getattr(pipe, target).set_adapters(adapters, weights)
    kwargs = dict(prompt=job.prompt, negative_prompt=job.negative_prompt, height=job.height, width=job.width,
                  num_frames=job.frames, num_inference_steps=job.steps, guidance_scale=job.guidance,
                  generator=torch.Generator("cpu").manual_seed(job.seed), output_type="latent")
    if pipe.config.boundary_ratio is not None:
        kwargs["guidance_scale_2"] = job.guidance_2
    with torch.no_grad():
        return pipe(**kwargs).frames


def resolved(job: Job) -> Job:
    from lowvram.loras.resolve import resolve_job_loras

    return resolve_job_loras(job, given=("steps", "guidance", "shift", "guidance_2"), cache_given=True)


@pytest.fixture
def job(small_job):
    return small_job(prompt=PROMPT, negative_prompt=NEGATIVE, frames=5, steps=2, guidance=4.0, seed=11)


# --- equal to diffusers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_gives_diffusers_output(layout, job, cpu_plan, tmp_path):
    # alpha != rank in the layouts that store an alpha: diffusers' converters fold it in, the same way for both
    path = make_lora(tmp_path / f"{layout}.safetensors", layout=layout, alpha_over_rank=1.0 if layout == "diffusers" else 2.0)
    with_lora = job.with_(loras=(LoraSpec(str(path), 0.7),))
    ours = generate(with_lora, plan=cpu_plan).latents
    theirs = diffusers_latents("tiny-random", job, [(str(path), 0.7, "both")])
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    plain = generate(job.with_(out=str(tmp_path / "plain.mp4")), plan=cpu_plan).latents
    assert (ours - plain).abs().max() > 1e-2  # the LoRA changes the output


def test_fused_equals_unfused_and_two_loras_compose(job, cpu_plan, tmp_path):
    a = make_lora(tmp_path / "a.safetensors", layout="wan", seed=1)
    b = make_lora(tmp_path / "b.safetensors", layout="musubi", seed=2)
    two = job.with_(loras=(LoraSpec(str(a), 0.8), LoraSpec(str(b), -0.5)))
    fused = generate(two.with_(out=str(tmp_path / "f.mp4")), plan=lora_plan(cpu_plan, "fused"))
    unfused = generate(two.with_(out=str(tmp_path / "u.mp4")), plan=lora_plan(cpu_plan, "unfused"))
    torch.testing.assert_close(fused.latents, unfused.latents, rtol=1e-5, atol=1e-5)
    assert [c.lora for c in fused.plan.denoisers] == ["fused"] and [r.fused for r in fused.plan.loras] == [True, True]
    assert [r.fused for r in unfused.plan.loras] == [False, False]
    theirs = diffusers_latents("tiny-random", job, [(str(a), 0.8, "both"), (str(b), -0.5, "both")])
    torch.testing.assert_close(unfused.latents, theirs, rtol=1e-5, atol=1e-5)


def test_scale_zero_equals_no_lora(job, cpu_plan, tmp_path):
    path = make_lora(tmp_path / "l.safetensors")
    plain = generate(job.with_(out=str(tmp_path / "p.mp4")), plan=cpu_plan).latents
    for mode in ("fused", "unfused"):
        off = generate(job.with_(loras=(LoraSpec(str(path), 0.0),), out=str(tmp_path / f"{mode}.mp4")), plan=lora_plan(cpu_plan, mode))
        assert torch.equal(off.latents, plain), mode


@pytest.mark.parametrize("expert", ["high", "low", "both"])
def test_a14b_lora_on_one_expert_or_both(expert, small_job, cpu_plan, tmp_path):
    path = make_lora(tmp_path / "l.safetensors", model="tiny-random-a14b", layout="wan")
    job = small_job(model="tiny-random-a14b", prompt=PROMPT, negative_prompt=NEGATIVE, frames=5, steps=6, guidance=4.0,
                    guidance_2=2.5, seed=11)
    with_lora = job.with_(loras=(LoraSpec(str(path), 0.9, expert),))
    result = generate(with_lora, plan=cpu_plan)
    theirs = diffusers_latents("tiny-random-a14b", job, [(str(path), 0.9, expert)])
    torch.testing.assert_close(result.latents, theirs, rtol=1e-5, atol=1e-5)
    want = {"high": ["transformer"], "low": ["transformer_2"], "both": ["transformer", "transformer_2"]}[expert]
    assert [c.name for c in result.plan.denoisers if c.lora] == want
    assert result.plan.loras[0].expert == expert


# --- quantized, offloaded, cached ---------------------------------------------------------------------------


def test_lora_under_an_int8_plan(job, tmp_path):
    path = make_lora(tmp_path / "l.safetensors")
    fp32 = plan_with("cpu")
    int8 = plan_with("cpu", precision="int8")
    lora = (LoraSpec(str(path), 1.0),)

    def run(plan, loras, name):
        return generate(job.with_(loras=loras, out=str(tmp_path / f"{name}.mp4")), plan=plan).latents

    ref, ref_plain = run(lora_plan(fp32, "unfused"), lora, "ref"), run(fp32, (), "ref-plain")
    plain = run(int8, (), "int8-plain")
    for mode in ("fused", "unfused"):
        out = run(lora_plan(int8, mode), lora, mode)
        assert (out - plain).abs().max() > 1e-2, mode  # the LoRA acts
        # its error against float32 is int8's own, not more
        assert (out - ref).abs().max() <= 3 * (plain - ref_plain).abs().max() + 1e-3, mode


@pytest.mark.parametrize("placement", [TP("block_offload", use_stream=False), TP("leaf_offload", use_stream=False),
                                       TP("partial", resident_blocks=1, use_stream=False)], ids=["block", "leaf", "partial"])
def test_adapters_under_an_offloaded_plan(placement, job, cpu_plan, tmp_path):
    path = make_lora(tmp_path / "l.safetensors")
    lora = (LoraSpec(str(path), 0.8),)
    resident = generate(job.with_(loras=lora, out=str(tmp_path / "r.mp4")), plan=lora_plan(cpu_plan, "unfused")).latents
    offloaded = lora_plan(plan_with("cpu", transformer=placement), "unfused")
    out = generate(job.with_(loras=lora, out=str(tmp_path / "o.mp4")), plan=offloaded).latents
    torch.testing.assert_close(out, resident, rtol=1e-5, atol=1e-5)


def test_offload_groups_leave_the_adapters_alone(tmp_path):
    """The streamed blocks' groups neither pin nor move the adapters: placement moves them with the phase."""
    from lowvram import placement
    from lowvram.loras.apply import adapter_modules
    from lowvram.models.names import resolve_model
    from lowvram.placement.quanto_offload import group_hooks, group_tensors
    from lowvram.sampling.runner import load_model

    path = make_lora(tmp_path / "l.safetensors")
    job = resolved(Job(prompt="x", loras=(LoraSpec(str(path)),)))
    plan = lora_plan(plan_with("cpu", transformer=TP("block_offload", use_stream=False)), "unfused")
    loaded = load_model(resolve_model("tiny-random"), plan, job.loras)
    try:
        t = loaded.pipe.transformer
        adapters = {id(p) for a in adapter_modules(t) for p in a.parameters()}
        assert adapters
        grouped = {id(x) for hook in group_hooks(t) for x in group_tensors(hook.group)}
        assert grouped and not grouped & adapters
        assert placement.state(loaded.pipe).lora_modes == {"transformer": "unfused"}
    finally:
        placement.leave_all(loaded.pipe)


def test_switching_lora_sets_requantizes(job, tmp_path, monkeypatch):
    """A fused int8 denoiser is cached per LoRA set: another set quantizes again, the same set reuses its entry,
    and the plain model's entry is never taken for a fused one."""
    from lowvram.paths import cache_dir

    # a cache of its own: an earlier test's run of the same LoRA bytes would already have made set a's entry
    monkeypatch.setenv("LOWVRAM_CACHE_DIR", str(tmp_path / "cache"))

    a, b = make_lora(tmp_path / "a.safetensors", seed=1), make_lora(tmp_path / "b.safetensors", seed=2)
    plan = lora_plan(plan_with("cpu", precision="int8"), "fused")
    root = cache_dir() / "quantized"

    def entries() -> set:
        return {p.name for p in root.glob("*-transformer-*") if p.is_dir()} if root.is_dir() else set()  # not the fill locks

    before = entries()
    out_a = generate(job.with_(loras=(LoraSpec(str(a)),), out=str(tmp_path / "a.mp4")), plan=plan).latents
    made_a = entries() - before
    assert len(made_a) == 1 and "-lora" in next(iter(made_a))
    out_b = generate(job.with_(loras=(LoraSpec(str(b)),), out=str(tmp_path / "b.mp4")), plan=plan).latents
    made_b = entries() - before - made_a
    assert len(made_b) == 1 and not torch.allclose(out_a, out_b)
    half = generate(job.with_(loras=(LoraSpec(str(a), 0.5),), out=str(tmp_path / "h.mp4")), plan=plan).latents
    assert len(entries() - before) == 3 and not torch.allclose(half, out_a)  # the scale is part of the key
    again = generate(job.with_(loras=(LoraSpec(str(a)),), out=str(tmp_path / "a2.mp4")), plan=plan).latents
    assert len(entries() - before) == 3  # reused, not quantized again
    torch.testing.assert_close(again, out_a)


# --- checks before loading --------------------------------------------------------------------------------


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if anything tries to load the model: bad LoRA input must stop before."""
    import lowvram.sampling.runner as runner

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(runner, "load_model", refuse)
    monkeypatch.setattr(runner, "load_pipeline", refuse)


def _cli(args, capsys) -> tuple[int, str]:
    from lowvram.cli import main

    rc = main(args)
    return rc, capsys.readouterr().err


def test_pickle_lora_is_refused(tmp_path, capsys, no_load):
    path = tmp_path / "lora.safetensors"  # a pickle whatever its name says
    torch.save({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 24)}, path)
    rc, err = _cli(["generate", "a cat", "--lora", str(path), "--out", str(tmp_path / "o.mp4")], capsys)
    assert rc == 2 and "pickle" in err and ".safetensors only" in err


def test_lora_for_another_model_names_the_first_mismatching_key(tmp_path, capsys, no_load):
    from lora_files import lora_tensors, write_lora

    tensors = lora_tensors()
    first = sorted(tensors)[0]
    tensors[first] = torch.zeros(tensors[first].shape[0], 40)  # another width than the model's layer
    path = write_lora(tmp_path / "other.safetensors", tensors, "wan")
    rc, err = _cli(["plan", "--lora", str(path), "--vram", "8", "--ram", "32"], capsys)
    module = first.rsplit(".lora_", 1)[0]
    assert rc == 2 and f"transformer.{first}" in err and f"the model's {module} needs" in err and "another model" in err
    flux = tmp_path / "flux.safetensors"
    from safetensors.torch import save_file

    save_file({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 24),
               "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(24, 4)}, str(flux))
    rc, err = _cli(["generate", "a cat", "--lora", str(flux), "--out", str(tmp_path / "o.mp4")], capsys)
    assert rc == 2 and "single_transformer_blocks.0.attn.to_q" in err and "does not have" in err


@pytest.mark.parametrize("text, message", [("x.safetensors:abc", "scale 'abc' is not a number"),
                                           ("x.safetensors:nan", "is not a number"), ("x.safetensors:", "empty")])
def test_a_scale_that_is_not_a_number_is_refused(text, message, tmp_path, capsys, no_load):
    make_lora(tmp_path / "x.safetensors")
    rc, err = _cli(["generate", "a cat", "--lora", str(tmp_path / text), "--out", str(tmp_path / "o.mp4")], capsys)
    assert rc == 2 and message in err


def test_low_expert_on_a_one_expert_model_is_refused(tmp_path, capsys, no_load):
    path = make_lora(tmp_path / "x.safetensors")
    rc, err = _cli(["generate", "a cat", "--lora", f"{path}@low", "--out", str(tmp_path / "o.mp4")], capsys)
    assert rc == 2 and "one transformer" in err and "@high/@low" in err


def test_missing_lora_and_the_runner_checks_too(tmp_path, capsys, no_load):
    rc, err = _cli(["generate", "a cat", "--lora", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "o.mp4")], capsys)
    assert rc == 2 and "no such file" in err
    from lowvram.errors import UserError

    path = make_lora(tmp_path / "x.safetensors")
    with pytest.raises(UserError, match="one transformer"):  # the API checks before loading as well
        generate(Job(prompt="a cat", loras=(LoraSpec(str(path), 1.0, "low"),), out=str(tmp_path / "o.mp4")), plan=plan_with("cpu"))


def test_a_cancelled_lora_run_resumes_with_its_loras(job, cpu_plan, tmp_path):
    """The resume file keeps the job's LoRAs (file, hash, scale, expert) and its plan's LoRA modes."""
    import threading

    from lowvram.errors import CancelledError
    from lowvram.sampling.resume import load_resume_file
    from lowvram.telemetry import RunCancelled, StepFinished

    path = make_lora(tmp_path / "l.safetensors")
    lora_job = resolved(job.with_(steps=3, loras=(LoraSpec(str(path), 0.6),)))
    cancel, events = threading.Event(), []

    def sink(event):
        events.append(event)
        if isinstance(event, StepFinished) and event.step == 0:
            cancel.set()

    with pytest.raises(CancelledError):
        generate(lora_job, lora_plan(cpu_plan, "fused"), on_event=sink, cancel=cancel)
    (cancelled,) = [e for e in events if isinstance(e, RunCancelled)]
    state = load_resume_file(cancelled.latents_path)
    assert state.job.loras == lora_job.loras and state.plan.denoisers[0].lora == "fused"
    resumed = generate(state.job.with_(out=str(tmp_path / "resumed.mp4")), state.plan, resume=state)
    clean = generate(lora_job.with_(out=str(tmp_path / "clean.mp4")), lora_plan(cpu_plan, "fused"))
    torch.testing.assert_close(resumed.latents, clean.latents, rtol=0, atol=0)
