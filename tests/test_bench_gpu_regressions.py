"""Regressions found by the GPU benchmark (code paths that only streams reach), checked on the CPU."""

from __future__ import annotations

import torch


def test_quanto_group_to_cpu_while_diffusers_is_patched():
    # With use_stream=True, diffusers' ModuleGroup.__init__ calls self._to_cpu(param, low_cpu_mem_usage) while
    # _quanto_groups() has replaced diffusers' ModuleGroup by QuantoModuleGroup (bench run 2 on the H200 failed so).
    from lowvram.placement.quanto_offload import QuantoModuleGroup, _quanto_groups

    group = object.__new__(QuantoModuleGroup)
    t = torch.randn(4, 4)
    with _quanto_groups():
        out = group._to_cpu(t, True)
    assert torch.equal(out, t) and out.device.type == "cpu"


def test_leaving_the_gpu_restores_the_host_tensors_without_a_copy():
    # Bench run 3 (H200): 1.3B end to end at 8 GiB spent ~4 s copying the int8 text encoder and the transformer
    # back to pageable RAM at stage changes (~2 GB/s). Components moved whole now keep their CPU tensors.
    # "meta" stands in for the GPU here: a device that is not the CPU and holds no data.
    from optimum.quanto import freeze, qint8, quantize

    from lowvram.placement.apply import PlacementState, _move_whole
    from planner.plan import Plan

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 8))
    quantize(model, weights=qint8, include=["2"])
    freeze(model)
    model.register_buffer("scale", torch.ones(8))
    x = torch.randn(3, 16)
    with torch.no_grad():
        ref = model(x) * model.scale
    ptrs = [p.data_ptr() for p in model[:2].parameters()]
    qdata = model[2].weight._data.data_ptr()
    st = PlacementState(plan=Plan())

    assert _move_whole(model, "text_encoder", "meta", st) is False
    assert model[0].weight.device.type == "meta" and model[2].weight._data.device.type == "meta"
    assert model.scale.device.type == "meta" and "text_encoder" in st.host

    assert _move_whole(model, "text_encoder", "cpu", st) is True
    assert "text_encoder" not in st.host
    assert [p.data_ptr() for p in model[:2].parameters()] == ptrs  # the same CPU storage, not a copy
    assert model[2].weight._data.data_ptr() == qdata
    with torch.no_grad():
        assert torch.equal(model(x) * model.scale, ref)
    assert _move_whole(model, "text_encoder", "cpu", st) is False  # already there: nothing to do


def test_block_offload_keeps_the_non_block_group_on_the_compute_device():
    # Bench run 2 profile (H200, 14B): diffusers' block-level offload copied the non-block modules in from
    # pageable memory and back out every forward (~300 ms of a 3.3 s step). They now stay put while denoising.
    # "meta" stands in for the GPU: offload_groups must send the group home (CPU) when the stage ends.
    from diffusers import WanTransformer3DModel

    from lowvram.bench.shapes import WAN_COMMON
    from lowvram.placement.offload import (
        ROOT_HOME_ATTR,
        apply_transformer,
        offload_groups,
    )
    from lowvram.placement.quanto_offload import group_hooks
    from planner.plan import ComponentPlan

    cfg = dict(WAN_COMMON, num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=3, text_dim=16, freq_dim=8)
    t = WanTransformer3DModel(**cfg).eval()
    apply_transformer(t, ComponentPlan("transformer", "bf16", "block_offload", use_stream=False), torch.device("cpu"))
    root = t._diffusers_hook.get_hook("group_offloading").group
    assert getattr(root, ROOT_HOME_ATTR) == torch.device("cpu") and root.offload_device == root.onload_device
    assert all(not hasattr(h.group, ROOT_HOME_ATTR) for h in group_hooks(t.blocks))  # blocks still stream

    # offload_groups sends the group to its home, then leaves it resident-on-offload again. Pretend the home
    # is elsewhere ("meta") so that the CPU-resident group counts as not at home.
    seen = []
    root.offload_ = lambda: seen.append(root.offload_device)
    setattr(root, ROOT_HOME_ATTR, torch.device("meta"))
    offload_groups(t)
    assert seen == [torch.device("meta")] and root.offload_device == torch.device("cpu")
    with torch.no_grad():  # and the model still runs
        out = t(hidden_states=torch.randn(1, 16, 2, 8, 8), timestep=torch.tensor([3.0]), encoder_hidden_states=torch.randn(1, 4, 16), return_dict=False)[0]
    assert out.shape == (1, 16, 2, 8, 8)


def test_cli_asks_for_expandable_segments_except_for_the_benchmark(monkeypatch):
    # Bench run 9 (H200): 14B 720p at 24 GiB with 19 blocks resident ran out of memory with the default
    # allocator (fragmentation) and ran with expandable segments.
    import os

    from lowvram.cli import main

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    assert main(["bench"]) == 2 and "PYTORCH_CUDA_ALLOC_CONF" not in os.environ  # the bench keeps the default
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "garbage_collection_threshold:0.8")
    from lowvram.cli import use_expandable_segments

    use_expandable_segments()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "garbage_collection_threshold:0.8"  # the user's choice wins
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    use_expandable_segments()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"].startswith("expandable_segments:True,")
    # bench wan22 run 12: page-locking through cudaHostAlloc ran at ~1 GB/s at an expert's phase start
    assert "pinned_use_cuda_host_register:True" in os.environ["PYTORCH_CUDA_ALLOC_CONF"]
