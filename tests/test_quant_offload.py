"""optimum-quanto weights under diffusers group offloading (diffusers issue 12610).

The upstream hooks move `param.data`, which for a quanto tensor replaces the wrapper and leaves the
inner `_data`/`_scale` behind. Here: the moving logic itself (cpu -> meta shows where the inner
tensors go), disk offload on CPU (fails upstream, works with lowvram's groups), memory offload on
CPU, and on CUDA (skipped here) the real onload/offload with and without streams.
"""

from __future__ import annotations

import pytest
import torch

QTYPES = ["qint8", "qint4", "qfloat8"]


class Toy(torch.nn.Module):
    """Blocks in a ModuleList (what block-level offload streams) plus a head outside it."""

    def __init__(self, width: int = 64, blocks: int = 3):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU()) for _ in range(blocks))
        self.head = torch.nn.Linear(width, 8)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def quantized_toy(qtype: str, seed: int = 0) -> Toy:
    from optimum.quanto import freeze, quantize

    torch.manual_seed(seed)
    model = Toy()
    quantize(model, weights=qtype)
    freeze(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.mark.parametrize("qtype", QTYPES)
def test_move_takes_inner_tensors_along(qtype):
    from lowvram.placement.quanto_offload import leaf_tensors, move_

    weight = quantized_toy(qtype).blocks[0][0].weight
    inner = [name for name, _ in leaf_tensors(weight)]
    assert "_data" in inner[0] and any("_scale" in n for n in inner)
    move_(weight, "meta")
    assert {t.device.type for _, t in leaf_tensors(weight)} == {"meta"}
    assert weight.device.type == "meta"


@pytest.mark.parametrize("qtype", QTYPES)
def test_disk_offload_upstream_fails_ours_matches(tmp_path, qtype):
    from diffusers.hooks import apply_group_offloading as upstream_apply

    from lowvram.placement.quanto_offload import apply_group_offloading

    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = quantized_toy(qtype)(x)
        kwargs = dict(onload_device="cpu", offload_device="cpu", offload_type="block_level", num_blocks_per_group=1)

        upstream = quantized_toy(qtype)
        with pytest.raises(RuntimeError):
            upstream_apply(upstream, offload_to_disk_path=str(tmp_path / "upstream"), **kwargs)
            upstream(x)

        ours = quantized_toy(qtype)
        apply_group_offloading(ours, offload_to_disk_path=str(tmp_path / "ours"), **kwargs)
        # Between forwards the quantized weights live on disk: RAM holds empty skeletons only.
        assert list((tmp_path / "ours").glob("*.safetensors"))
        first = ours(x)
        second = ours(x)
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_disk_offload_reuses_files_of_an_earlier_run(tmp_path):
    from lowvram.placement.quanto_offload import apply_group_offloading

    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(4))
    kwargs = dict(onload_device="cpu", offload_type="block_level", num_blocks_per_group=1, offload_to_disk_path=str(tmp_path))
    with torch.no_grad():
        expected = quantized_toy("qint4")(x)
        first = quantized_toy("qint4")
        apply_group_offloading(first, **kwargs)
        files = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.safetensors")}
        second = quantized_toy("qint4")
        apply_group_offloading(second, **kwargs)  # the files exist: nothing is written again
        assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.safetensors")} == files
        assert torch.equal(second(x), expected) and torch.equal(first(x), expected)


def test_failed_disk_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import safetensors.torch

    from lowvram.placement.quanto_offload import apply_group_offloading

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    kwargs = dict(onload_device="cpu", offload_type="block_level", num_blocks_per_group=1, offload_to_disk_path=str(tmp_path))
    with pytest.raises(OSError, match="No space"):
        apply_group_offloading(quantized_toy("qint8"), **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
def test_memory_offload_of_quantized_model_on_cpu(offload_type):
    from lowvram.placement.quanto_offload import apply_group_offloading

    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = quantized_toy("qint8")(x)
        model = quantized_toy("qint8")
        apply_group_offloading(model, onload_device="cpu", offload_device="cpu", offload_type=offload_type, num_blocks_per_group=1)
        assert torch.equal(model(x), expected)


def test_upstream_module_group_is_restored_after_apply():
    from diffusers.hooks import group_offloading

    from lowvram.placement.quanto_offload import (
        QuantoModuleGroup,
        apply_group_offloading,
        group_hooks,
    )

    before = group_offloading.ModuleGroup
    model = quantized_toy("qint8")
    apply_group_offloading(model, onload_device="cpu", offload_type="block_level", num_blocks_per_group=1)
    assert group_offloading.ModuleGroup is before
    assert all(isinstance(h.group, QuantoModuleGroup) for h in group_hooks(model))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)")


@cuda
@pytest.mark.parametrize("use_stream", [False, True])
@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
@pytest.mark.parametrize("qtype", QTYPES)
def test_cuda_quantized_offload_matches_resident(qtype, offload_type, use_stream):
    from lowvram.placement.quanto_offload import apply_group_offloading, leaf_tensors

    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base = quantized_toy(qtype)
        expected = base.to("cuda")(x.cuda())
        model = quantized_toy(qtype)
        apply_group_offloading(
            model, onload_device="cuda", offload_device="cpu", offload_type=offload_type, num_blocks_per_group=1, use_stream=use_stream
        )
        for _ in range(2):  # the first call records the prefetch order
            out = model(x.cuda())
        torch.cuda.synchronize()
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-5)
    for p in model.parameters():  # all back on the CPU, inner tensors included
        assert {t.device.type for _, t in leaf_tensors(p)} == {"cpu"}


def test_cpu_copy_of_a_quanto_weight_is_a_new_wrapper_without_a_copy():
    """What a streamed group keeps as the CPU copy (pinning itself needs CUDA: tested on the GPU)."""
    from lowvram.placement.quanto_offload import (
        QuantoModuleGroup,
        _quanto_groups,
        leaf_tensors,
    )

    weight = quantized_toy("qint8").blocks[0][0].weight
    group = object.__new__(QuantoModuleGroup)
    with _quanto_groups():
        copy = group._to_cpu(weight, True)
    assert copy is not weight and type(copy) is type(weight)
    assert [t.data_ptr() for _, t in leaf_tensors(copy)] == [t.data_ptr() for _, t in leaf_tensors(weight)]
    assert torch.equal(copy.dequantize(), weight.dequantize())
