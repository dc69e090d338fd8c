"""Plans on several devices, run on the CPU: a layer-split denoiser and two experts on their own "devices" run the
same code paths as on two GPUs (hooks moving activations, block-by-block placement, the second expert copied in
the background) and give the latents of a one-device run.

CPU plans may name devices "cpu" twice (nothing moves: the latents are bit-equal) or cpu:0 / cpu:1: torch keeps
those tensors on the CPU but copies them on every move, and CPU matmuls round differently on differently aligned
copies (a few 1e-6), so those runs are compared within that."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from cache_support import smooth_copy

from lowvram.caching.setting import CacheSetting
from lowvram.placement.devices import DEVICE_HOOK, DeviceHook, to_device
from lowvram.sampling.faults import FaultPlan
from lowvram.sampling.runner import generate
from lowvram.telemetry import PhaseStarted, PlanSwitched
from plans import plan_with
from planner.fallback import leaner_plan
from planner.plan import ComponentPlan, Plan, plain


def with_devices(plan: Plan, **devices) -> Plan:
    """The plan with these components on these devices ({name: (devices, split)})."""
    for name, (where, split) in devices.items():
        plan = plan.with_component(dataclasses.replace(plan.component(name), devices=where, split=split))
    return plan


def hooks(module: torch.nn.Module) -> list[str]:
    return [name for name, m in module.named_modules()
            if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook(DEVICE_HOOK) is not None]


def test_device_hook_moves_inputs_there_and_outputs_back():
    hook = DeviceHook("meta", back=True)
    x, pair = torch.ones(2, 3), (torch.zeros(1), torch.zeros(2))
    args, kwargs = hook.pre_forward(None, x, 3, rope=pair, extra={"t": torch.ones(1)}, flag=True)
    assert args[0].device.type == "meta" and args[1] == 3
    assert [t.device.type for t in kwargs["rope"]] == ["meta", "meta"] and isinstance(kwargs["rope"], tuple)
    assert kwargs["extra"]["t"].device.type == "meta" and kwargs["flag"] is True
    back = DeviceHook(None, back=True)  # inputs stay; the output goes where the first input came from
    back.pre_forward(None, torch.empty(2, device="meta"))
    assert back.post_forward(None, (torch.ones(2),))[0].device.type == "meta"
    leave = DeviceHook(None, output_device="meta")
    assert leave.pre_forward(None, x)[0][0] is x and leave.post_forward(None, x).device.type == "meta"
    assert to_device([x, {"a": x}], torch.device("cpu"))[1]["a"] is x  # nothing to move: the same tensor


COPIES = dict(rtol=1e-5, atol=1e-5)  # runs whose moves copy tensors (see the module docstring)


def test_layer_split_gives_the_one_device_latents(small_job, tmp_path):
    one = plan_with("cpu")
    base = generate(small_job(out=str(tmp_path / "one.mp4")), plan=one)
    result = generate(small_job(), plan=with_devices(one, transformer=(("cpu", "cpu"), (1,))))
    assert torch.equal(result.latents, base.latents)
    transformer = result.loaded.pipe.transformer
    assert hooks(transformer) == ["blocks.0", "blocks.1"]  # the first block of each device; the last goes back
    moved = generate(small_job(out=str(tmp_path / "moved.mp4")), plan=with_devices(one, transformer=(("cpu:0", "cpu:1"), (1,))))
    assert torch.allclose(moved.latents, base.latents, **COPIES)
    assert moved.plan.component("transformer").describe_devices() == "blocks 0-0 on cpu:0, blocks 1+ on cpu:1"


def test_layer_split_with_a_step_cache(demo_t2v_path, tmp_path, small_job):
    """The cache's hooks wrap the split's: residuals are taken where the stack's input is (the first device)."""
    smooth = smooth_copy(demo_t2v_path, tmp_path / "tiny-smooth")
    job = small_job(model=str(smooth), steps=8, cache=CacheSetting("teacache", threshold=0.2, retention=False))
    one = plan_with("cpu")
    base = generate(job.with_(out=str(tmp_path / "one.mp4")), plan=one)
    result = generate(job, plan=with_devices(one, transformer=(("cpu", "cpu"), (1,))))
    sidecar = result.sidecar_path.read_text()
    assert '"computed": false' in sidecar  # some calls were skipped
    assert torch.equal(result.latents, base.latents)


def test_experts_on_their_own_devices_give_the_one_device_latents(small_job, tmp_path):
    job = small_job(model="tiny-random-a14b", steps=4)
    one = plan_with("cpu")
    first = dataclasses.replace(one.component("transformer"), idle="")
    apart = dataclasses.replace(one, components=plain([c for c in one.components if c.role != "denoiser"] + [
        dataclasses.replace(first, devices=("cpu:0",)), dataclasses.replace(first, name="transformer_2", devices=("cpu:1",))]))
    assert apart.experts_apart
    base = generate(job.with_(out=str(tmp_path / "one.mp4")), plan=one)
    result = generate(job, plan=apart)
    assert torch.allclose(result.latents, base.latents, **COPIES)
    assert [e.component for e in result.events if isinstance(e, PhaseStarted)] == ["transformer", "transformer_2"]
    pipe = result.loaded.pipe
    assert hooks(pipe.transformer_2) == [""] and hooks(pipe.transformer) == [""]  # each moves its inputs over, and back
    from lowvram.placement import state

    assert state(pipe).arriving == {}  # the background copy of the second expert was waited for


def test_an_oom_on_two_devices_falls_back_to_one(small_job, tmp_path):
    one = plan_with("cpu")
    split = with_devices(one, transformer=(("cpu", "cpu"), (1,)))
    base = generate(small_job(out=str(tmp_path / "one.mp4")), plan=one)
    result = generate(small_job(), plan=split, faults=FaultPlan.parse("denoise:1"))
    switched = [e for e in result.events if isinstance(e, PlanSwitched)]
    assert len(switched) == 1 and "on GPU 0" in switched[0].reason
    t = result.plan.component("transformer")
    assert t.devices == () and t.placement == "partial"
    assert hooks(result.loaded.pipe.transformer) == []  # the split's hooks went with it
    assert torch.equal(result.latents, base.latents)


def test_the_ladder_goes_from_two_gpus_to_one():
    split = Plan("cuda", (ComponentPlan("text_encoder", "bf16", "gpu"),
                          ComponentPlan("transformer", "bf16", "resident", devices=("cuda:0", "cuda:1"), split=(20,)),
                          ComponentPlan("vae", "fp32", "gpu")))
    lean = leaner_plan(split, "denoise", num_blocks=40)
    assert lean.gpus == (0,) and lean.component("transformer").placement == "partial"
    assert lean.component("transformer").resident_blocks == 20
    apart = Plan("cuda", (ComponentPlan("transformer", "int8", "resident", devices=("cuda:0",)),
                          ComponentPlan("transformer_2", "int8", "resident", devices=("cuda:1",))))
    lean = leaner_plan(apart, "denoise", num_blocks=40)
    assert not lean.experts_apart and {c.idle for c in lean.denoisers} == {"mmap"}
    cp = Plan("cuda", (ComponentPlan("transformer", "bf16", "resident"),), parallel="ulysses", parallel_gpus=2)
    assert leaner_plan(cp, "denoise", num_blocks=40).parallel == ""


@pytest.mark.parametrize("devices", [("cuda:0",), ("cpu:0", "cpu:1")])
def test_a_plan_on_devices_this_process_cannot_use_is_refused(devices):
    with pytest.raises(ValueError):
        Plan("cpu" if devices[0].startswith("cuda") else "cuda",
             (ComponentPlan("transformer", "bf16", "resident", devices=devices, split=(1,) if len(devices) > 1 else ()),))
