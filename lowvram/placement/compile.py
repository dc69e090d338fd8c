"""Regional compile of a denoiser's repeated blocks, composed with every placement lowvram applies.

As diffusers' `compile_repeated_blocks` does, the blocks are found by the model's `_repeated_blocks` class
names and each one is compiled with `torch.compile`. The difference: diffusers compiles the module's
`__call__`, so offload hooks registered on a block (they replace its `forward`) end up inside the compiled
region, where their copies and stream syncs break the graph. Here the block's own `forward` is compiled
*before* any hook is attached; the hooks (group offload, step caching) wrap the compiled function and run
eagerly around it. All blocks of one shape share one code object, so torch compiles one graph and reuses
it for every block, both CFG branches, both experts of a Wan2.2 A14B model and a resumed run in the same
process (tests/test_compile.py checks that with torch's recompile check), and in each process of a
context-parallel run, beneath diffusers' hooks that split the sequence (tests/test_parallel_compile.py).

Leaf-level offload puts a hook on every layer inside the block: the graph breaks at each one and torch hits
its recompile limit (REFERENCE.md); ComponentPlan refuses compile there.

The compile cache: inductor's FX graph cache (and the Triton kernels under it) is kept in lowvram's cache
folder, `<cache>/compile/inductor` (TORCHINDUCTOR_CACHE_DIR, unless the user set it), so a later run of the
same shapes loads the compiled kernels instead of compiling them again. The first compiled call of a shape
is recorded (lowvram.placement.compile_records) so that the planner can predict a warm compile.

A compile that fails (no C compiler, an inductor bug) is not the user's problem: the blocks fall back to
eager with one warning and the run goes on. Out-of-memory errors are never swallowed.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

log = logging.getLogger(__name__)

COMPILED_ATTR = "_lowvram_compiled"  # on a block: its CompiledForward
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def inductor_cache_dir() -> Path:
    """Where inductor keeps its compiled graphs: lowvram's cache folder unless the user chose another one."""
    from lowvram.paths import cache_dir

    chosen = os.environ.get(CACHE_ENV)
    if chosen:
        return Path(chosen)
    path = cache_dir() / "compile" / "inductor"
    os.environ[CACHE_ENV] = str(path)  # read by inductor at each compile
    return path


def repeated_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks regional compile compiles: modules whose class is in the model's `_repeated_blocks`."""
    names = tuple(getattr(module, "_repeated_blocks", None) or ())
    if not names:
        raise ValueError(f"{type(module).__name__} has no `_repeated_blocks`: regional compile needs them "
                         "(diffusers' WanTransformer3DModel has them)")
    return [m for m in module.modules() if type(m).__name__ in names]


@dataclass
class CompileState:
    """Shared by the blocks of one denoiser: has compiling failed, and the record of the first call."""

    precision: str
    failed: Optional[str] = None
    seen: set = field(default_factory=set)  # (shape, device) of the inputs already called with
    lock: threading.Lock = field(default_factory=threading.Lock)


class CompiledForward:
    """A block's forward, compiled; eager after a compile failure. Stored as the block's `forward`."""

    def __init__(self, block: torch.nn.Module, eager: Callable, state: CompileState) -> None:
        self.block_type = type(block)
        self.eager = eager
        self.compiled = torch.compile(eager, fullgraph=True, dynamic=False)  # one static graph per shape
        self.state = state
        functools.update_wrapper(self, eager)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.state.failed is not None:
            return self.eager(*args, **kwargs)
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor) and not _dense(hidden):
            # the graph is specialized on its input's strides: context parallel hands the first block a slice of
            # the whole sequence (diffusers' shard is a chunk view) and the others dense tensors, which would
            # compile a second graph; one copy of the first block's input keeps one graph for all
            hidden = hidden.clone(memory_format=torch.contiguous_format)
            args, kwargs = ((hidden,) + args[1:], kwargs) if args else (args, {**kwargs, "hidden_states": hidden})
        shape = (tuple(hidden.shape), str(hidden.device)) if isinstance(hidden, torch.Tensor) else None
        first = shape not in self.state.seen  # the call that compiles (or loads from the cache) this shape
        started = time.perf_counter() if first else 0.0
        try:
            out = self.compiled(*args, **kwargs)
        except torch.OutOfMemoryError:
            raise
        except _compile_errors() as exc:
            self._fail(exc)
            return self.eager(*args, **kwargs)
        if first:
            if hidden is not None and hidden.device.type == "cuda":
                torch.cuda.synchronize(hidden.device)
            self._record(shape, args, kwargs, time.perf_counter() - started)
        return out

    def _record(self, shape, args: tuple, kwargs: dict, seconds: float) -> None:
        from lowvram.placement.compile_records import record_compile

        with self.state.lock:
            if shape in self.state.seen:
                return
            self.state.seen.add(shape)
        key = _shape_key(self.eager, args, kwargs, self.state.precision)
        if key is not None:
            record_compile(key, seconds)
            log.info("compiled %s blocks at %s in %.1fs", self.block_type.__name__, shape[0], seconds)

    def _fail(self, exc: BaseException) -> None:
        with self.state.lock:
            if self.state.failed is None:
                self.state.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                log.warning("compiling the transformer blocks failed (%s); they run eagerly (slower, same result)",
                            self.state.failed)


def _dense(t: torch.Tensor) -> bool:
    """`t` has the strides of a new tensor of its shape (unlike is_contiguous, size-1 dims count: the graph's
    guards check their strides too)."""
    expected = 1
    for size, stride in zip(reversed(t.shape), reversed(t.stride())):
        if stride != expected:
            return False
        expected *= max(size, 1)
    return True


def _compile_errors() -> tuple:
    from torch._dynamo import exc as dynamo_exc

    return (dynamo_exc.BackendCompilerFailed, dynamo_exc.Unsupported, dynamo_exc.InternalTorchDynamoError,
            dynamo_exc.TorchRuntimeError)


def _shape_key(eager: Callable, args: tuple, kwargs: dict, precision: str) -> Optional[str]:
    """The compile record key of this call (the block's shape, the tokens, the device), or None."""
    from lowvram.placement.compile_records import compile_key

    block = getattr(eager, "__self__", None)
    hidden = args[0] if args else kwargs.get("hidden_states")
    if block is None or not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        return None
    try:
        heads = block.attn1.heads
        ffn = block.ffn.net[0].proj.out_features
        image = getattr(block.attn2, "add_k_proj", None) is not None
    except AttributeError:  # not a Wan block: nothing the planner could look up
        return None
    device = torch.cuda.get_device_name(hidden.device) if hidden.device.type == "cuda" else None
    return compile_key(hidden.shape[-1], ffn, heads, image, precision, hidden.shape[1], device)


def _innermost(block: torch.nn.Module) -> Callable:
    """The block's own forward under any diffusers hooks (HookRegistry keeps it in its first hook's reference)."""
    registry = getattr(block, "_diffusers_hook", None)
    refs = getattr(registry, "_fn_refs", None)
    if not refs:
        return block.forward
    ref = refs[0]
    return ref.original_forward if ref.original_forward is not None else ref.forward


def _set_innermost(block: torch.nn.Module, forward: Optional[Callable]) -> None:
    """Replace the block's own forward under its hooks (None: the class's forward again)."""
    registry = getattr(block, "_diffusers_hook", None)
    refs = getattr(registry, "_fn_refs", None)
    if not refs:
        if forward is None:
            block.__dict__.pop("forward", None)
        else:
            block.forward = forward
        return
    forward = forward if forward is not None else type(block).forward.__get__(block)
    ref = refs[0]
    if ref.original_forward is not None:
        ref.original_forward = forward
    else:
        ref.forward = forward


def is_compiled(module: torch.nn.Module) -> bool:
    return any(isinstance(_innermost(b), CompiledForward) for b in repeated_blocks(module))


def compile_failed(module: torch.nn.Module) -> Optional[str]:
    """Why compiling `module`'s blocks failed (they run eagerly), or None."""
    for b in repeated_blocks(module):
        forward = _innermost(b)
        if isinstance(forward, CompiledForward):
            return forward.state.failed
    return None


def apply_compile(module: torch.nn.Module, enabled: bool, precision: str = "") -> int:
    """Compile (or, `enabled=False`, un-compile) `module`'s repeated blocks, under any hooks they have (the
    hooks keep running eagerly around the compiled forward). Idempotent. Returns the number compiled."""
    blocks = repeated_blocks(module)
    if not enabled:
        for b in blocks:
            if isinstance(_innermost(b), CompiledForward):
                _set_innermost(b, None)
        return 0
    inductor_cache_dir()
    state = CompileState(precision)
    for b in blocks:
        current = _innermost(b)
        if isinstance(current, CompiledForward):
            current.state.precision = precision
            continue
        _set_innermost(b, CompiledForward(b, current, state))
    return len(blocks)
