"""The planner's options for a machine with more than one GPU, and how they are explained. Pure.

Three ways to use a second card (the Plan's `devices` / `parallel` fields, planner.plan):
- layer split: the denoiser resident across two cards, blocks [0, k) and its other modules on cuda:0, the rest
  on cuda:1; the activations cross to the other card and back once per forward (planner.timing). It holds a
  model that no single card holds, without streaming; it is not faster than one card that holds it.
- experts apart (two-expert Wan2.2 A14B): the high-noise expert on cuda:0, the low-noise one on cuda:1, both
  there for the whole denoise stage: no switch, each card holds one expert.
- context parallel (diffusers' ContextParallelConfig): one process per GPU, each holding the model as a one-GPU
  plan would and computing 1/N of the tokens; ulysses when the heads divide by N, else ring. Its blocks may be
  compiled and its matmuls run at a fast level (fp8_fast / int8_fast, compiled), as on one GPU: each process
  compiles its own blocks (lowvram.placement.compile, beneath diffusers' context-parallel hooks). Run 20 measured
  the 14B at 720p on two H200s, ulysses + fp8_fast + regional compile (diffusers' compile_repeated_blocks), at
  x0.43 of one GPU's eager bf16 forward (docs/bench/run20/cp720.json).
Each is a candidate beside the one-GPU plans (planner.choose) and wins only when predicted faster.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterable, Iterator

from lowvram.job import Job
from planner import memory as M
from planner.estimate import context_parallel_vram
from planner.plan import FAST_LEVELS, ComponentPlan, Plan, config_key
from planner.probe import HardwareProbe
from planner.spec import ModelSpec
from planner.words import fmt_seconds, gib

SPLIT_DEVICES = ("cuda:0", "cuda:1")
APART = {"transformer": "cuda:0", "transformer_2": "cuda:1"}


def split_point(spec: ModelSpec, name: str, precision: str, tokens: int, vrams: tuple[int, ...], lora: str = "",
                loras: tuple = ()) -> int:
    """Where a two-card layer split starts its second card: the block that leaves both cards the same headroom
    (each card holds the activations, and unfused LoRA adapters; the first also the non-block modules), within 1..n-1."""
    t = spec.component(name)
    n = t.num_blocks
    block = max(1, M.block_bytes(t, precision))
    rest = M.rest_bytes(t, precision)
    on_every = M.denoiser_vram_bytes(spec, ComponentPlan(name, precision, "resident", lora=lora), tokens, loras) - rest - n * block
    cap0 = (vrams[0] - on_every - rest) / block
    cap1 = (vrams[1] - on_every) / block
    return int(min(n - 1, max(1, round((n + cap0 - cap1) / 2))))


def layer_split_options(spec: ModelSpec, tokens: int, vrams: tuple[int, ...], precisions: Iterable[str], lora: str = "",
                        loras: tuple = ()) -> list[tuple[ComponentPlan, ...]]:
    """One resident layer-split denoiser setting per precision (one-denoiser models; a two-expert model puts an
    expert on each card instead)."""
    if len(vrams) < 2 or spec.two_experts or spec.transformer.num_blocks < 2:
        return []
    out = []
    for precision in precisions:
        k = split_point(spec, "transformer", precision, tokens, vrams, lora, loras)
        out.append((ComponentPlan("transformer", precision, "resident", devices=SPLIT_DEVICES, split=(k,)),))
    return out


def _fitted(spec: ModelSpec, name: str, precision: str, tokens: int, vram: int, lora: str = "",
            loras: tuple = ()) -> ComponentPlan:
    """The expert resident on its card when it fits, else its first blocks resident and the rest streamed (unfused
    LoRA adapters `loras` take some of the card)."""
    resident = ComponentPlan(name, precision, "resident")
    if M.denoiser_vram_bytes(spec, replace(resident, lora=lora), tokens, loras) <= vram:
        return resident
    k = M.partial_blocks(spec, name, precision, tokens, vram, lora, loras)
    if 0 < k < spec.component(name).num_blocks:
        return ComponentPlan(name, precision, "partial", resident_blocks=k)
    return ComponentPlan(name, precision, "block_offload")


def experts_apart_options(spec: ModelSpec, tokens: int, vrams: tuple[int, ...], precisions: Iterable[str], lora: str = "",
                          loras: tuple = ()) -> list[tuple[ComponentPlan, ...]]:
    """For a two-expert model: each expert on its own card for the whole denoise stage (resident when its card
    holds it, else with its first blocks resident), per precision."""
    if len(vrams) < 2 or not spec.two_experts:
        return []
    out = []
    for precision in precisions:
        pair = []
        for i, name in enumerate(("transformer", "transformer_2")):
            cp = _fitted(spec, name, precision, tokens, vrams[i], lora, loras)
            pair.append(replace(cp, devices=(APART[name],), idle=""))
        out.append(tuple(pair))
    return out


def eager_only(precision: str, placement: str) -> tuple[bool, ...]:
    """The compile choices when the caller allows no compile: eager, and no fast level (slower than bf16 eager)."""
    return () if precision in FAST_LEVELS else (False,)


def _compiled(denoisers: tuple[ComponentPlan, ...], compile_options) -> list[tuple[ComponentPlan, ...]]:
    """The setting with each compile choice the planner allows for its precision and placement (none for a fast
    level that may not be compiled: it is slower than bf16 eager)."""
    first = denoisers[0]
    return [tuple(replace(cp, compile=c) for cp in denoisers) for c in compile_options(first.precision, first.placement)]


def parallel_kind(spec: ModelSpec, gpus: int, precision: str) -> str:
    """ulysses when the attention heads divide by the GPU count; else ring, which needs a bf16 attention kernel
    that returns its log-sum-exp (none for float32): '' when neither runs."""
    if spec.dims.heads % gpus == 0:
        return "ulysses"
    return "ring" if precision != "fp32" else ""


def context_parallel_options(spec: ModelSpec, tokens: int, vrams: tuple[int, ...], precisions: Iterable[str],
                             lora: str = "", loras: tuple = (),
                             compile_options: Callable[[str, str], tuple[bool, ...]] = eager_only,
                             ) -> Iterator[tuple[tuple[ComponentPlan, ...], dict]]:
    """(denoisers, plan settings) for context parallelism over all the GPUs: each process holds the denoiser as a
    one-GPU plan would, sized to the smallest card's budget with its share of the activations, with each compile
    choice a one-GPU plan of that precision and placement gets (`compile_options`: a fast level only compiled)."""
    gpus = len(vrams)
    if gpus < 2:
        return
    budget = min(vrams)
    local = -(-tokens // gpus)
    for precision in precisions:
        kind = parallel_kind(spec, gpus, precision)
        if not kind:
            continue
        settings = {"parallel": kind, "parallel_gpus": gpus}
        probe_plan = Plan(device="cuda", parallel=kind, parallel_gpus=gpus)
        buffers = context_parallel_vram(spec, ComponentPlan("transformer", precision, "block_offload"), tokens, probe_plan) - \
            M.denoiser_vram_bytes(spec, ComponentPlan("transformer", precision, "block_offload"), local)
        placements = [ComponentPlan("transformer", precision, "resident")]
        k = M.partial_blocks(spec, "transformer", precision, local, budget - buffers, lora, loras)
        if 0 < k < spec.transformer.num_blocks:
            placements.append(ComponentPlan("transformer", precision, "partial", resident_blocks=k))
        placements.append(ComponentPlan("transformer", precision, "block_offload"))
        for cp in placements:
            if not spec.two_experts:
                for denoisers in _compiled((cp,), compile_options):
                    yield denoisers, settings
                continue
            for idle in ("pinned", "mmap") if cp.placement != "resident" else ("mmap",):
                pair = (replace(cp, idle=idle), replace(cp, name="transformer_2", idle=idle))
                for denoisers in _compiled(pair, compile_options):
                    yield denoisers, settings


def options(spec: ModelSpec, job: Job, probe: HardwareProbe, vrams: tuple[int, ...], precisions: tuple[str, ...],
            context_parallel: bool = True,
            compile_options: Callable[[str, str], tuple[bool, ...]] = eager_only,
            lora: str = "", loras: tuple = ()) -> list[tuple[tuple[ComponentPlan, ...], dict]]:
    """Every multi-GPU denoiser setting to try, with the Plan fields it needs ({} or the parallel settings).
    `compile_options(precision, placement)`: the compile choices the planner allows there, for every kind (under
    context parallel each process compiles its blocks as a one-GPU plan does). `lora`, `loras`: how the
    denoisers will carry the job's LoRAs and their footprints (unfused adapters take VRAM: the sizes allow for
    them); the caller sets each denoiser's `lora`."""
    if probe.gpu_count < 2:
        return []
    tokens = spec.tokens(job.width, job.height, job.frames)
    stored = spec.denoisers[0].stored
    if stored is not None and stored.dequant_bytes_per_param > 0:
        precisions = ("stored",)
    one_process = layer_split_options(spec, tokens, vrams, precisions, lora, loras) + \
        experts_apart_options(spec, tokens, vrams, precisions, lora, loras)
    out = [(c, {}) for d in one_process for c in _compiled(d, compile_options)]
    if context_parallel:
        out += list(context_parallel_options(spec, tokens, vrams, precisions, lora, loras, compile_options))
    return out


# --- Explanation ------------------------------------------------------------------------------------------


def kind_of(plan: Plan) -> str:
    """'' for a one-GPU plan; else which multi-GPU way it takes, in words."""
    if plan.parallel:
        return f"context parallel ({plan.parallel}) on {plan.parallel_gpus} GPUs"
    if any(c.layer_split for c in plan.denoisers):
        return "layers split across 2 GPUs"
    if plan.experts_apart:
        return "one expert per GPU"
    return ""


def per_gpu_words(plan: Plan) -> str:
    """'cuda:0 20.10 GiB, cuda:1 19.80 GiB'."""
    return ", ".join(f"cuda:{i} {gib(v)}" for i, v in enumerate(plan.peak_vram_per_gpu))


def _denoiser_words(plan: Plan) -> str:
    parts = []
    for c in plan.denoisers:
        label = {"transformer": "high-noise" if plan.two_experts else "", "transformer_2": "low-noise"}[c.name]
        parts.append(f"{label + ' ' if label else ''}{c.precision} {c.describe_placement()}"
                     + (", compiled" if c.compile else "") + (f" ({c.describe_devices()})" if c.devices else ""))
        if plan.two_experts and not plan.experts_apart:
            break  # both alike
    return "; ".join(parts)


def explanation_lines(chosen: Plan, candidates: list, one_gpu_best) -> list[str]:
    """The multi-GPU options, best of each kind: per-GPU peaks, time, and the verdict against the chosen plan
    (`candidates`: planner.choose Candidates; `one_gpu_best`: the fastest fitting one-GPU candidate or None)."""
    kinds: dict[str, list] = {}
    for c in candidates:
        kind = kind_of(c.plan)
        if kind:
            kinds.setdefault(kind, []).append(c)
    if not kinds:
        return []
    lines = ["multi-GPU options (each with its best text encoder / VAE setting):"]
    for kind, cands in kinds.items():
        fitting = [c for c in cands if c.fits]
        mine = [c for c in fitting if config_key(c.plan) == config_key(chosen)]
        # the chosen plan's kind shows the chosen plan (the planner may prefer it to a near tie of the same kind)
        best = mine[0] if mine else min(fitting, key=lambda c: c.plan.predicted_seconds) if fitting else \
            min(cands, key=lambda c: c.short_bytes)
        plan = best.plan
        head = f"  {kind}, {_denoiser_words(plan)}: "
        if not best.fits:
            lines.append(head + best.rejected_reason)
            continue
        verdict = "chosen" if config_key(plan) == config_key(chosen) else _against(plan, chosen)
        lines.append(head + f"{fmt_seconds(plan.predicted_seconds)}, peak VRAM {per_gpu_words(plan)}, RAM "
                     f"{gib(plan.peak_ram_bytes)} ({verdict})")
    if kind_of(chosen) and one_gpu_best is not None:
        o = one_gpu_best.plan
        pct = 100 * (1 - chosen.predicted_seconds / o.predicted_seconds) if o.predicted_seconds else 0.0
        lines.append(f"  best one-GPU plan: {fmt_seconds(o.predicted_seconds)} ({pct:.0f}% slower than the chosen)"
                     if pct >= 0 else f"  best one-GPU plan: {fmt_seconds(o.predicted_seconds)}")
    elif kind_of(chosen) and one_gpu_best is None:
        lines.append("  no one-GPU plan fits this job")
    return lines


def _against(plan: Plan, chosen: Plan) -> str:
    if not chosen.predicted_seconds:
        return "fits"
    pct = 100 * (plan.predicted_seconds / chosen.predicted_seconds - 1)
    if pct >= 0.5:
        return f"slower by {pct:.0f}% than the chosen plan"
    if pct <= -0.5:
        if [c.precision for c in plan.denoisers] != [c.precision for c in chosen.denoisers]:
            return f"faster by {-pct:.0f}%, at lower precision"
        return f"faster by {-pct:.0f}%, a near tie (the chosen plan wins on precision or memory)"
    return "as fast as the chosen plan"


__all__ = ["context_parallel_options", "experts_apart_options", "explanation_lines", "kind_of", "layer_split_options",
           "options", "parallel_kind", "per_gpu_words", "split_point"]
