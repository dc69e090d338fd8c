"""Regressions found by the GPU benchmark (code paths that only streams reach), checked on the CPU."""

from __future__ import annotations

import torch


def test_quanto_group_to_cpu_while_diffusers_is_patched():
    # With use_stream=True, diffusers' ModuleGroup.__init__ calls self._to_cpu(param, low_cpu_mem_usage) while
    # _quanto_groups() has replaced diffusers' ModuleGroup by QuantoModuleGroup (bench run 2 on the H200 failed so).
    from lowvram.quanto_offload import QuantoModuleGroup, _quanto_groups

    group = object.__new__(QuantoModuleGroup)
    t = torch.randn(4, 4)
    with _quanto_groups():
        out = group._to_cpu(t, True)
    assert torch.equal(out, t) and out.device.type == "cpu"
