"""TeaCache as diffusers hooks on a `WanTransformer3DModel`, following a precomputed SkipSchedule.

Three kinds of hook, registered under named constants so they can be found and removed:
- TEACACHE_HOOK on the transformer: looks up the call's decision (branch from the pipeline's
  `cache_context("cond"/"uncond")`, step from `step_index` or a per-branch counter), times the call
  and counts the bytes group offloading moved during it;
- TEACACHE_BLOCK_HOOK on every block: on a computed call the first block remembers its input and the
  last stores `output - input` as the branch's residual; on a skipped call the first block returns
  `input + residual` and the others return their input, without calling the block (nor the group
  offloading hook under it: no weights move).

State is per cache context (one per branch), lives in `TeaCacheState`, and is reset by
`reset_teacache` (the runner does that at the start of every run and in a `finally`). A call with no
cache context raises instead of silently sharing one state between branches.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

from ..transfer_meter import GROUP_OFFLOADING_HOOK, Moved, TransferMeter
from .schedule import CallDecision, SkipSchedule

TEACACHE_HOOK = "lowvram_teacache"
TEACACHE_BLOCK_HOOK = "lowvram_teacache_block"


@dataclass
class TeaCacheConfig:
    """What apply_teacache needs: the schedule to follow."""

    schedule: SkipSchedule

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, SkipSchedule):
            raise TypeError(
                f"TeaCacheConfig.schedule must be a SkipSchedule (build one with lowvram.teacache.build_schedule), "
                f"got {type(self.schedule).__name__}"
            )


class TeaCacheState(BaseState):
    """One branch's cache: where it is in the run and the residual of its last computed call."""

    def __init__(self) -> None:
        self.next_step = 0
        self.compute = True  # the decision for the call in progress
        self.block_input: Optional[torch.Tensor] = None
        self.residual: Optional[torch.Tensor] = None

    def reset(self) -> None:
        self.next_step = 0
        self.compute = True
        self.block_input = None
        self.residual = None


@dataclass
class CallRecord:
    """One transformer call as it happened; `seconds` is read after the step's synchronize."""

    decision: CallDecision
    computed: bool
    moved: Moved
    _start: Any = None
    _end: Any = None
    _seconds: Optional[float] = None

    @property
    def seconds(self) -> float:
        if self._seconds is None:
            self._seconds = self._start.elapsed_time(self._end) / 1000.0  # CUDA events, milliseconds
        return self._seconds


def _timer_start(device: torch.device):
    if device.type == "cuda":
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


def _timer_stop(record: CallRecord, device: torch.device) -> None:
    if device.type == "cuda":
        # No synchronize here: the runner synchronizes once per step, then the events are read.
        record._end = torch.cuda.Event(enable_timing=True)
        record._end.record()
    else:
        record._seconds = time.perf_counter() - record._start


class TeaCacheHook(ModelHook):
    _is_stateful = True

    def __init__(self, state_manager: StateManager, schedule: SkipSchedule, blocks: list) -> None:
        super().__init__()
        self.state_manager = state_manager
        self.schedule = schedule
        self.blocks = blocks
        self.records: list[CallRecord] = []
        self.meter: Optional[TransferMeter] = None  # set by the runner's TeaCacheRun

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        context = self.state_manager._context
        if context is None:
            raise RuntimeError(
                "TeaCache: the transformer was called outside `transformer.cache_context(name)`; each guidance branch "
                "needs its own cache. Wrap the call in `with transformer.cache_context('cond'):` (or 'uncond')."
            )
        branch = context.name
        if branch not in self.schedule.branches:
            raise RuntimeError(
                f"TeaCache: called for branch {branch!r} but the schedule has {self.schedule.branches}; "
                "rebuild the schedule with the guidance the run uses."
            )
        state: TeaCacheState = self.state_manager.get_state()
        step = context.step_index if context.step_index is not None else state.next_step
        if step >= self.schedule.total_steps:
            raise RuntimeError(
                f"TeaCache: call for step {step} but the schedule covers {self.schedule.total_steps} steps; "
                "reset_teacache() between runs and build the schedule for the run's step count."
            )
        decision = self.schedule.decision(step, branch)
        # A skip needs a residual; a run resumed mid-way has none yet, so its first call computes.
        state.compute = decision.computed or state.residual is None
        if not state.compute:
            _check_outermost(module, self.blocks)
        hidden = args[0] if args else kwargs["hidden_states"]
        before = self.meter.read() if self.meter is not None else Moved()
        record = CallRecord(decision, state.compute, Moved(), _start=_timer_start(hidden.device))
        with _no_block_prefetch(module) if not state.compute else _nothing():
            output = self.fn_ref.original_forward(*args, **kwargs)
        _timer_stop(record, hidden.device)
        if self.meter is not None:
            record.moved = self.meter.read() - before
        state.next_step = step + 1
        self.records.append(record)
        return output

    def drain(self) -> list[CallRecord]:
        out, self.records = self.records, []
        return out

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        self.records = []
        return module


class TeaCacheBlockHook(ModelHook):
    """Skips a block on a skipped call; the first block adds the residual, the last one records it."""

    def __init__(self, state_manager: StateManager, is_head: bool, is_tail: bool) -> None:
        super().__init__()
        self.state_manager = state_manager
        self.is_head = is_head
        self.is_tail = is_tail

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        state: TeaCacheState = self.state_manager.get_state()
        hidden = args[0] if args else kwargs["hidden_states"]
        if not state.compute:
            return hidden + state.residual if self.is_head else hidden
        if self.is_head:
            state.block_input = hidden
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.is_tail:
            state.residual = output - state.block_input
            state.block_input = None
        return output


# ---------------------------------------------------------------------------------------------- apply / remove


def apply_teacache(transformer: torch.nn.Module, config: TeaCacheConfig) -> TeaCacheHook:
    """Register TeaCache on a WanTransformer3DModel. Apply it after group offloading (it must be the outer hook)."""
    if not isinstance(config, TeaCacheConfig):
        raise TypeError(f"apply_teacache takes a TeaCacheConfig, got {type(config).__name__}")
    blocks = list(getattr(transformer, "blocks", []))
    if not blocks:
        raise TypeError(f"{type(transformer).__name__} has no `blocks`: TeaCache here supports WanTransformer3DModel")
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(TEACACHE_HOOK) is not None:
        raise RuntimeError("TeaCache is already applied to this transformer; remove_teacache() first.")
    state_manager = StateManager(TeaCacheState)
    for i, block in enumerate(blocks):
        hook = TeaCacheBlockHook(state_manager, is_head=i == 0, is_tail=i == len(blocks) - 1)
        HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, TEACACHE_BLOCK_HOOK)
    hook = TeaCacheHook(state_manager, config.schedule, blocks)
    registry.register_hook(hook, TEACACHE_HOOK)
    registry.invalidate_child_registries_cache()  # so cache_context reaches the new hooks
    return hook


def get_teacache(transformer: torch.nn.Module) -> Optional[TeaCacheHook]:
    registry = getattr(transformer, "_diffusers_hook", None)
    return registry.get_hook(TEACACHE_HOOK) if registry is not None else None


def reset_teacache(transformer: torch.nn.Module) -> None:
    """Forget every branch's state and residual (start of a run, end of a run, cancel)."""
    hook = get_teacache(transformer)
    if hook is not None:
        hook.reset_state(transformer)


def remove_teacache(transformer: torch.nn.Module) -> None:
    """Remove every TeaCache hook; the transformer runs as before."""
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is None:
        return
    reset_teacache(transformer)
    registry.remove_hook(TEACACHE_HOOK, recurse=False)
    registry.remove_hook(TEACACHE_BLOCK_HOOK, recurse=True)
    registry.invalidate_child_registries_cache()


# ---------------------------------------------------------------------------------------------- offload interplay


@contextmanager
def _nothing():
    yield


def _check_outermost(transformer: torch.nn.Module, blocks: list) -> None:
    """A skip only avoids weight transfers if TeaCache wraps group offloading, not the other way round."""
    for module, name in [(transformer, TEACACHE_HOOK)] + [(b, TEACACHE_BLOCK_HOOK) for b in blocks]:
        order = module._diffusers_hook._hook_order
        if GROUP_OFFLOADING_HOOK in order and order.index(GROUP_OFFLOADING_HOOK) > order.index(name):
            raise RuntimeError(
                "TeaCache was applied before group offloading, so skipped calls would still move block weights. "
                "remove_teacache(transformer) and apply_teacache again after enabling group offloading."
            )


@contextmanager
def _no_block_prefetch(transformer: torch.nn.Module):
    """During a skipped call, stop non-block groups from prefetching a block group (streamed offload).

    With streams, diffusers chains groups in execution order: the group before blocks.0 onloads
    blocks.0 ahead of time. On a skipped call no block runs, so that prefetch would be a wasted
    transfer (and leave the block on the GPU). The link is restored afterwards.
    """
    names = {id(m): n for n, m in transformer.named_modules()}
    suspended = []
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook(GROUP_OFFLOADING_HOOK) if registry is not None else None
        nxt = getattr(hook, "next_group", None)
        if nxt is None or names.get(id(module), "").startswith("blocks."):
            continue
        members = list(nxt.modules) + [nxt.onload_leader, nxt.offload_leader]
        if any(names.get(id(m), "").startswith("blocks.") for m in members):
            suspended.append((hook, nxt))
            hook.next_group = None
    try:
        yield
    finally:
        for hook, nxt in suspended:
            hook.next_group = nxt
