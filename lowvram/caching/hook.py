"""Step skipping as diffusers hooks on a `WanTransformer3DModel`, following a precomputed SkipSchedule.

The same hooks serve TeaCache and MagCache (and calibration runs): the decisions are in the schedule.

Hooks registered under named constants, so they can be found and removed:
- CACHE_HOOK on the transformer: looks up the call's decision (branch from the pipeline's
  `cache_context("cond"/"uncond")`, step from `step_index` or a per-branch counter), times the call
  and counts the bytes group offloading moved during it. On a skipped call it swaps the block list
  for one module that adds the branch's cached residual, so no block is called at all (nor the group
  offloading hooks on the blocks: no block weights move), and puts the blocks back afterwards.
- CACHE_BLOCK_HOOK on the first and last block: on a computed call they record the stack's input
  and store `output - input` as the branch's residual (and hand it to `on_residual`: calibration).

Only pre_forward/post_forward hooks, no `new_forward`: diffusers' HookRegistry.remove_hook re-links an
outer `new_forward` hook wrongly when an inner hook is removed (streamed group offloading removes its
tracing hooks after the first forward), which would silently bypass the cache.

State is per cache context (one per branch), lives in `SkipState`, and is reset by
`reset_cache` (remove_cache does it first; the runner applies fresh hooks per run and removes
them in a `finally`). A call with no cache context raises instead of silently sharing one state
between branches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

from lowvram.caching.schedule import CallDecision, SkipSchedule
from lowvram.placement.quanto_offload import hooked_modules
from lowvram.placement.transfer_meter import GROUP_OFFLOADING_HOOK, Moved, TransferMeter

CACHE_HOOK = "lowvram_step_cache"
CACHE_BLOCK_HOOK = "lowvram_step_cache_block"


ResidualSink = Callable[[str, int, torch.Tensor], None]  # (branch, step, residual) of a computed call


@dataclass
class CacheConfig:
    """What apply_cache needs: the schedule to follow, and who wants each computed call's residual."""

    schedule: SkipSchedule
    on_residual: Optional[ResidualSink] = None

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, SkipSchedule):
            raise TypeError(
                f"CacheConfig.schedule must be a SkipSchedule (lowvram.caching.plan builds them), got {type(self.schedule).__name__}"
            )


class SkipState(BaseState):
    """One branch's cache: where it is in the run and the residual of its last computed call."""

    def __init__(self) -> None:
        self.next_step: Optional[int] = None  # without a step_index in the context: the schedule's first step
        self.step = -1  # the call in progress
        self.compute = True  # the decision for the call in progress
        self.block_input: Optional[torch.Tensor] = None
        self.residual: Optional[torch.Tensor] = None

    def reset(self) -> None:
        self.next_step = None
        self.step = -1
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


class _AddResidual(torch.nn.Module):
    """Stands in for the whole block list on a skipped call: output of the stack = input + residual."""

    def __init__(self) -> None:
        super().__init__()
        self.residual: Optional[torch.Tensor] = None

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states + self.residual.to(hidden_states.device)  # a layer split keeps it on its first card


class SkipHook(ModelHook):
    _is_stateful = True

    def __init__(self, state_manager: StateManager, schedule: SkipSchedule) -> None:
        super().__init__()
        self.state_manager = state_manager
        self.schedule = schedule
        self.records: list[CallRecord] = []
        self.meter: Optional[TransferMeter] = None  # set by the run's CacheSession
        self._stand_in = torch.nn.ModuleList([_AddResidual()])
        self._blocks: Optional[torch.nn.ModuleList] = None  # the real blocks while swapped out
        self._suspended: list = []  # prefetch links cut for a skipped call
        self._call: Optional[tuple] = None  # (record, state, step, device, meter reading) of the call in progress

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        self.restore(module)  # a previous call that raised may have left the stand-in in place
        context = self.state_manager._context
        if context is None:
            raise RuntimeError(
                "step cache: the transformer was called outside `transformer.cache_context(name)`; each guidance branch "
                "needs its own cache. Wrap the call in `with transformer.cache_context('cond'):` (or 'uncond')."
            )
        branch = context.name
        if branch not in self.schedule.branches:
            raise RuntimeError(
                f"step cache: called for branch {branch!r} but the schedule has {self.schedule.branches}; "
                "rebuild the schedule with the guidance the run uses."
            )
        state: SkipState = self.state_manager.get_state()
        if state.next_step is None:
            state.next_step = self.schedule.first_step
        step = context.step_index if context.step_index is not None else state.next_step
        if not self.schedule.covers(step):
            s = self.schedule
            raise RuntimeError(
                f"step cache: {s.component} called for step {step} but its schedule covers steps {s.first_step}.."
                f"{s.first_step + s.total_steps - 1}; reset_cache() between runs and build the schedule for the run's steps."
            )
        state.step = step
        decision = self.schedule.decision(step, branch)
        # A skip needs a residual; a run resumed mid-way has none yet, so its first call computes.
        state.compute = decision.computed or state.residual is None
        if not state.compute:
            _check_outermost(module)
            self._suspended = _cut_block_prefetch(module)
            self._stand_in[0].residual = state.residual
            self._blocks = module._modules["blocks"]
            module._modules["blocks"] = self._stand_in
        hidden = args[0] if args else kwargs["hidden_states"]
        record = CallRecord(decision, state.compute, Moved(), _start=_timer_start(hidden.device))
        self._call = (record, state, step, hidden.device, self.meter.read() if self.meter is not None else Moved())
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output):
        self.restore(module)
        record, state, step, device, before = self._call
        self._call = None
        _timer_stop(record, device)
        if self.meter is not None:
            record.moved = self.meter.read() - before
        state.next_step = step + 1
        self.records.append(record)
        return output

    def restore(self, module: torch.nn.Module) -> None:
        """Put the real blocks and the prefetch links back (after a skipped call, or one that raised)."""
        if self._blocks is not None:
            module._modules["blocks"] = self._blocks
            self._blocks = None
        self._stand_in[0].residual = None
        for hook, group in self._suspended:
            hook.next_group = group
        self._suspended = []

    def drain(self) -> list[CallRecord]:
        out, self.records = self.records, []
        return out

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.restore(module)
        self.state_manager.reset()
        self.records = []
        self._call = None
        return module


class SkipBlockHook(ModelHook):
    """On the first block: remember the stack's input. On the last: store output - input as the residual.
    (Only computed calls reach the blocks: a skipped call replaces the whole list.)"""

    def __init__(self, state_manager: StateManager, is_head: bool, is_tail: bool, on_residual: Optional[ResidualSink] = None) -> None:
        super().__init__()
        self.state_manager = state_manager
        self.is_head = is_head
        self.is_tail = is_tail
        self.on_residual = on_residual

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        if self.is_head:
            self.state_manager.get_state().block_input = args[0] if args else kwargs["hidden_states"]
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output):
        if self.is_tail:
            state: SkipState = self.state_manager.get_state()
            # a layer split's last block may sit on another GPU than the first (lowvram.placement.devices)
            state.residual = output - state.block_input.to(output.device)
            state.block_input = None
            if self.on_residual is not None:
                self.on_residual(self.state_manager._context.name, state.step, state.residual)
        return output


# ---------------------------------------------------------------------------------------------- apply / remove


def apply_cache(transformer: torch.nn.Module, config: CacheConfig) -> SkipHook:
    """Register the step cache on a WanTransformer3DModel. Apply it after group offloading (it must be the outer hook)."""
    if not isinstance(config, CacheConfig):
        raise TypeError(f"apply_cache takes a CacheConfig, got {type(config).__name__}")
    blocks = list(getattr(transformer, "blocks", []))
    if not blocks:
        raise TypeError(f"{type(transformer).__name__} has no `blocks`: the step cache supports WanTransformer3DModel")
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(CACHE_HOOK) is not None:
        raise RuntimeError("a step cache is already applied to this transformer; remove_cache() first.")
    state_manager = StateManager(SkipState)
    ends = [(blocks[0], True, len(blocks) == 1)] + ([(blocks[-1], False, True)] if len(blocks) > 1 else [])
    for block, is_head, is_tail in ends:
        hook = SkipBlockHook(state_manager, is_head=is_head, is_tail=is_tail, on_residual=config.on_residual)
        HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, CACHE_BLOCK_HOOK)
    hook = SkipHook(state_manager, config.schedule)
    registry.register_hook(hook, CACHE_HOOK)
    registry.invalidate_child_registries_cache()  # so cache_context reaches the new hooks
    return hook


def get_cache(transformer: torch.nn.Module) -> Optional[SkipHook]:
    registry = getattr(transformer, "_diffusers_hook", None)
    return registry.get_hook(CACHE_HOOK) if registry is not None else None


def reset_cache(transformer: torch.nn.Module) -> None:
    """Forget every branch's state and residual (start of a run, end of a run, cancel)."""
    hook = get_cache(transformer)
    if hook is not None:
        hook.reset_state(transformer)


def remove_cache(transformer: torch.nn.Module) -> None:
    """Remove every step-cache hook; the transformer runs as before."""
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is None:
        return
    reset_cache(transformer)
    registry.remove_hook(CACHE_HOOK, recurse=False)
    registry.remove_hook(CACHE_BLOCK_HOOK, recurse=True)
    registry.invalidate_child_registries_cache()


# ---------------------------------------------------------------------------------------------- offload interplay


def _check_outermost(transformer: torch.nn.Module) -> None:
    """With the cache inside group offloading, the offload hook would prefetch a block before the skip is known."""
    order = transformer._diffusers_hook._hook_order
    if GROUP_OFFLOADING_HOOK in order and order.index(GROUP_OFFLOADING_HOOK) > order.index(CACHE_HOOK):
        raise RuntimeError(
            "the step cache was applied before group offloading, so skipped calls could still move block weights. "
            "remove_cache(transformer) and apply_cache again after enabling group offloading."
        )


def _cut_block_prefetch(transformer: torch.nn.Module) -> list:
    """For a skipped call, stop non-block groups from prefetching a block group (streamed offload).

    With streams, diffusers chains groups in execution order: the group before blocks.0 onloads
    blocks.0 ahead of time. On a skipped call no block runs, so that prefetch would be a wasted
    transfer (and leave the block on the GPU). Returns the cut links for `restore`.
    """
    names = {id(m): n for n, m in transformer.named_modules()}
    cut = []
    for module, hook in hooked_modules(transformer):
        nxt = getattr(hook, "next_group", None)
        if nxt is None or names.get(id(module), "").startswith("blocks."):
            continue
        members = list(nxt.modules) + [nxt.onload_leader, nxt.offload_leader]
        if any(names.get(id(m), "").startswith("blocks.") for m in members):
            cut.append((hook, nxt))
            hook.next_group = None
    return cut
