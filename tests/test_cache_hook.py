"""The step-cache hooks (TeaCache and MagCache follow them alike) on a small WanTransformer3DModel: skips,
residuals, branches, offload, cleanup, per-component step ranges, residuals handed to calibration."""

from __future__ import annotations

import pytest
import torch

from lowvram.caching.hook import (
    CACHE_BLOCK_HOOK,
    CACHE_HOOK,
    CacheConfig,
    apply_cache,
    get_cache,
    remove_cache,
    reset_cache,
)
from lowvram.caching.schedule import CallDecision, SkipSchedule
from lowvram.placement.transfer_meter import TransferMeter, group_bytes, offload_groups

LAYERS = 3


def make_transformer():
    from diffusers import WanTransformer3DModel

    from lowvram.models.demo import _TRANSFORMER

    torch.manual_seed(0)
    config = dict(_TRANSFORMER, num_layers=LAYERS)
    return WanTransformer3DModel(in_channels=16, **config).eval()


def pattern_schedule(pattern: str, branches=("cond", "uncond"), first_step: int = 0, component: str = "transformer") -> SkipSchedule:
    """'CC.C' -> compute, compute, skip, compute for every branch, from `first_step` on."""
    calls = tuple(
        CallDecision(first_step + step, b, 1000.0 - step, ch == "C")
        for step, ch in enumerate(pattern)
        for b in branches
    )
    ts = tuple(1000.0 - s for s in range(len(pattern)))
    return SkipSchedule("fixed", component, tuple(branches), first_step, ts, calls, 0.1, first_step + len(pattern))


class Probe:
    """Native torch hooks: the block stack's input and output, and real block forwards (ffn runs)."""

    def __init__(self, tr):
        self.stack_in = self.stack_out = None
        self.block_forwards = 0
        # The stack's input is the patch embedding, flattened as WanTransformer3DModel.forward does.
        tr.patch_embedding.register_forward_hook(lambda m, a, out: setattr(self, "stack_in", out.flatten(2).transpose(1, 2).clone()))
        tr.norm_out.register_forward_pre_hook(lambda m, a: setattr(self, "stack_out", a[0].clone()))
        for b in tr.blocks:
            b.ffn.register_forward_pre_hook(lambda m, a: setattr(self, "block_forwards", self.block_forwards + 1))


def inputs(step: int, branch: str):
    g = torch.Generator().manual_seed(100 * step + (branch == "uncond"))
    hidden = torch.randn(1, 16, 2, 8, 8, generator=g)
    text = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(7 if branch == "cond" else 8))
    return dict(hidden_states=hidden, timestep=torch.tensor([1000.0 - 30 * step]), encoder_hidden_states=text, return_dict=False)


def run(tr, pattern, branches=("cond", "uncond"), step_index=True):
    """Calls the transformer as the runner does; returns per call (branch, computed, output, stack in/out, forwards)."""
    probe = Probe(tr)
    out = []
    with torch.no_grad():
        for step in range(len(pattern)):
            for b in branches:
                before = probe.block_forwards
                ctx = dict(step_index=step) if step_index else {}
                with tr.cache_context(b, **ctx):
                    y = tr(**inputs(step, b))[0]
                out.append(dict(branch=b, computed=pattern[step] == "C", y=y, stack_in=probe.stack_in, stack_out=probe.stack_out, forwards=probe.block_forwards - before))
    return out


def test_skipped_call_is_input_plus_cached_residual_of_its_own_branch():
    tr = make_transformer()
    pattern = "CC..C."
    apply_cache(tr, CacheConfig(pattern_schedule(pattern)))
    residual = {}
    for call in run(tr, pattern):
        if call["computed"]:
            assert call["forwards"] == LAYERS
            residual[call["branch"]] = call["stack_out"] - call["stack_in"]
        else:
            assert call["forwards"] == 0
            assert torch.equal(call["stack_out"], call["stack_in"] + residual[call["branch"]])
    assert not torch.equal(residual["cond"], residual["uncond"])  # each branch keeps its own


def test_computed_calls_are_unchanged_and_remove_restores_the_model():
    tr = make_transformer()
    plain = run(tr, "CCC")
    apply_cache(tr, CacheConfig(pattern_schedule("C.C")))
    cached = run(tr, "C.C")
    for a, b in zip(plain, cached):
        assert torch.equal(a["y"], b["y"]) == b["computed"]
    remove_cache(tr)
    assert get_cache(tr) is None
    assert all(CACHE_BLOCK_HOOK not in b._diffusers_hook.hooks for b in (tr.blocks[0], tr.blocks[-1]))
    again = run(tr, "CCC")
    assert all(torch.equal(a["y"], b["y"]) for a, b in zip(plain, again))


def test_guidance_off_one_branch():
    tr = make_transformer()
    apply_cache(tr, CacheConfig(pattern_schedule("C.C.", branches=("cond",))))
    calls = run(tr, "C.C.", branches=("cond",))
    assert [c["forwards"] for c in calls] == [LAYERS, 0, LAYERS, 0]
    with pytest.raises(RuntimeError, match="branch 'uncond'"):
        with torch.no_grad(), tr.cache_context("uncond"):
            tr(**inputs(0, "uncond"))


def test_no_cache_context_raises_instead_of_sharing_state():
    tr = make_transformer()
    apply_cache(tr, CacheConfig(pattern_schedule("CC")))
    with pytest.raises(RuntimeError, match="cache_context"):
        with torch.no_grad():
            tr(**inputs(0, "cond"))


def test_reset_starts_over_and_counts_steps_without_step_index():
    tr = make_transformer()
    apply_cache(tr, CacheConfig(pattern_schedule("C.")))
    first = run(tr, "C.", step_index=False)
    assert [c["forwards"] for c in first] == [LAYERS, LAYERS, 0, 0]
    with pytest.raises(RuntimeError, match="covers steps 0..1"):
        run(tr, "C", step_index=False)  # a third step without a reset
    reset_cache(tr)
    second = run(tr, "C.", step_index=False)
    assert [c["forwards"] for c in second] == [LAYERS, LAYERS, 0, 0]
    assert all(torch.equal(a["y"], b["y"]) for a, b in zip(first, second))


def test_first_call_after_a_resume_computes_when_no_residual_is_cached():
    tr = make_transformer()
    apply_cache(tr, CacheConfig(pattern_schedule("CC..")))
    probe = Probe(tr)
    with torch.no_grad(), tr.cache_context("cond", step_index=2):  # resumed at a skipped step
        tr(**inputs(2, "cond"))
    assert probe.block_forwards == LAYERS


def _block_offloaded():
    from diffusers.hooks import apply_group_offloading

    tr = make_transformer()
    apply_group_offloading(tr, onload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
    return tr


def test_skipped_calls_move_no_block_weights_under_group_offload():
    tr = _block_offloaded()
    groups = offload_groups(tr)
    block_bytes = sum(group_bytes(g) for g, is_block in groups if is_block)
    other_bytes = sum(group_bytes(g) for g, is_block in groups if not is_block)
    assert block_bytes > 0 and other_bytes > 0
    pattern = "C.C."
    apply_cache(tr, CacheConfig(pattern_schedule(pattern)))
    hook = get_cache(tr)
    with TransferMeter(tr) as meter:
        hook.meter = meter
        calls = run(tr, pattern)
    records = hook.drain()
    assert [r.computed for r in records] == [c["computed"] for c in calls]
    for rec, call in zip(records, calls):
        if rec.computed:
            assert rec.moved.blocks == block_bytes and call["forwards"] == LAYERS
        else:
            assert rec.moved.blocks == 0 and call["forwards"] == 0
        assert rec.moved.total - rec.moved.blocks == other_bytes  # embedders and head run on every call


def test_skipped_call_does_not_prefetch_a_block_and_keeps_the_prefetch_link():
    tr = _block_offloaded()
    # What diffusers' lazy prefetching sets up after the first streamed forward: the top-level group
    # onloads blocks.0 ahead of time. Streams need a GPU, so the link is made by hand here.
    top = tr._diffusers_hook.get_hook("group_offloading")
    first_block = tr.blocks[0]._diffusers_hook.get_hook("group_offloading").group
    top.next_group = first_block
    first_block.onload_self = False
    apply_cache(tr, CacheConfig(pattern_schedule("C.")))
    hook = get_cache(tr)
    with TransferMeter(tr) as meter:
        hook.meter = meter
        run(tr, "C.", branches=("cond",))
    computed, skipped = hook.drain()
    assert computed.moved.blocks > 0
    assert skipped.moved.blocks == 0
    assert top.next_group is first_block


def test_cache_under_group_offloading_is_refused_on_skip():
    from diffusers.hooks import apply_group_offloading

    tr = make_transformer()
    apply_cache(tr, CacheConfig(pattern_schedule("C.")))
    apply_group_offloading(tr, onload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
    with pytest.raises(RuntimeError, match="before group offloading"):
        run(tr, "C.", branches=("cond",))


def test_apply_twice_is_refused_and_hooks_have_names():
    tr = make_transformer()
    apply_cache(tr, CacheConfig(pattern_schedule("C")))
    assert CACHE_HOOK in tr._diffusers_hook.hooks
    with pytest.raises(RuntimeError, match="already applied"):
        apply_cache(tr, CacheConfig(pattern_schedule("C")))
    with pytest.raises(TypeError, match="SkipSchedule"):
        CacheConfig(schedule="C.C")


def test_transfer_meter_counts_quantized_weights_at_their_storage_size():
    from optimum.quanto import freeze, qint8, quantize

    from lowvram.placement.transfer_meter import tensor_bytes

    m = torch.nn.Sequential(torch.nn.Linear(64, 32))
    quantize(m, weights=qint8)
    freeze(m)
    assert tensor_bytes(m[0].weight) == 32 * 64 * 1 + 32 * 4  # int8 data + one fp32 scale per row
    assert tensor_bytes(torch.zeros(3, 5, dtype=torch.bfloat16)) == 30


def test_still_skips_after_an_inner_hook_is_removed():
    """Streamed group offloading removes its tracing hooks from every block after the first forward;
    diffusers then re-links the hooks above them. The cache must keep working through that."""
    from diffusers.hooks.hooks import HookRegistry, ModelHook

    tr = make_transformer()
    for module in [tr, *tr.blocks]:
        HookRegistry.check_if_exists_or_initialize(module).register_hook(ModelHook(), "tracker")
    apply_cache(tr, CacheConfig(pattern_schedule("C.C.")))
    for module in [tr, *tr.blocks]:
        module._diffusers_hook.remove_hook("tracker", recurse=False)
    assert [c["forwards"] for c in run(tr, "C.C.")] == [LAYERS, LAYERS, 0, 0, LAYERS, LAYERS, 0, 0]


def test_a_call_that_raises_leaves_the_blocks_in_place():
    tr = make_transformer()
    blocks = tr.blocks
    apply_cache(tr, CacheConfig(pattern_schedule("C.")))
    run(tr, "C", branches=("cond",))
    bad = inputs(1, "cond")
    bad["encoder_hidden_states"] = torch.zeros(1, 5, 7)  # wrong text width: the embedder raises
    with pytest.raises(RuntimeError):
        with torch.no_grad(), tr.cache_context("cond", step_index=1):
            tr(**bad)
    reset_cache(tr)
    assert tr.blocks is blocks


def test_a_component_schedule_covers_its_own_steps_only():
    """The low-noise expert of a two-expert model runs steps 3.. of the run: its schedule starts there."""
    tr = make_transformer()
    apply_cache(tr, CacheConfig(pattern_schedule("C.C", first_step=3, component="transformer_2")))
    probe = Probe(tr)
    forwards = []
    with torch.no_grad():
        for step in (3, 4, 5):
            before = probe.block_forwards
            with tr.cache_context("cond", step_index=step):
                tr(**inputs(step, "cond"))
            forwards.append(probe.block_forwards - before)
        assert forwards == [LAYERS, 0, LAYERS]
        with pytest.raises(RuntimeError, match="transformer_2 called for step 2 but its schedule covers steps 3..5"):
            with tr.cache_context("cond", step_index=2):
                tr(**inputs(2, "cond"))


def test_computed_calls_hand_their_residual_to_on_residual():
    tr = make_transformer()
    seen = []
    apply_cache(tr, CacheConfig(pattern_schedule("C.C"), on_residual=lambda branch, step, r: seen.append((branch, step, r.clone()))))
    calls = run(tr, "C.C")
    computed = [c for c in calls if c["computed"]]
    assert [(b, s) for b, s, _ in seen] == [("cond", 0), ("uncond", 0), ("cond", 2), ("uncond", 2)]
    for (_, _, residual), call in zip(seen, computed):
        assert torch.equal(residual, call["stack_out"] - call["stack_in"])
