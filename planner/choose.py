"""Pick the fastest plan that fits, and say why: `make_plan(probe, spec, job, prefs) -> PlanResult`.

Candidates combine, for each component the model has: the denoiser(s)' precision x placement (and for a
two-expert model where the idle expert waits), the text encoder's precision x placement, the VAE's
placement. Each is predicted stage by stage (planner.estimate); those whose peak VRAM and RAM fit the
budgets (free minus a reserve) compete on predicted time, and higher precision wins near-ties. Pure: the
probe and the calibration come in as data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal, Optional

from lowvram.errors import UserError
from lowvram.job import Job
from planner import constants as C
from planner import memory as M
from planner import multi_gpu
from planner.estimate import (
    cache_level,
    compile_seconds,
    context_parallel_vram,
    forward_seconds,
    guidance_for,
    lora_footprints,
    passes_for,
    phase_steps,
    predict,
    quantize_seconds,
    shift_for,
)
from planner.plan import (
    FAST_LEVELS,
    FAST_STORAGE,
    PHASE_LABEL,
    PHASE_OF,
    ComponentPlan,
    Plan,
    StagePeak,
    component_label,
    config_key,
    plain,
    with_loras,
)
from planner.probe import HardwareProbe, describe_probe
from planner.spec import ModelSpec
from planner.timing import Throughput, describe_cards, throughput_for
from planner.words import fmt_seconds, gib, gib_at_least

QUANT_ORDER = M.QUANT_ORDER
TEXT_QUANTS = ("bf16", "int8")
TEXT_PLACEMENTS = ("gpu", "offload", "cpu")  # "offload" is group offload WITHOUT streams, always
VAE_PLACEMENTS = ("gpu", "gpu_tiled", "cpu")
# The VAE decodes in fp32 (what Wan's and diffusers' pipelines do); a bf16 VAE on the GPU, tiled (half the weights
# and activations, what ComfyUI runs by default) is planned only when the fp32 tiled decode does not fit: the
# alternative is decoding on the CPU, hours for a 720p Wan2.2 video.
VAE_OPTIONS = (("fp32", "gpu"), ("fp32", "gpu_tiled"), ("bf16", "gpu_tiled"), ("fp32", "cpu"))
MAX_RUNNERS_UP = 3


@dataclass(frozen=True)
class Preferences:
    """What the user allows and wants. Sizes in bytes; caps limit what the planner may use.

    prefer="speed": the fastest plan, higher precision within a 3% tie; torchao's fp8 / int8 matmuls
    (fp8_fast, int8_fast) are candidates when their per-forward error is within `max_error` and their
    storage level is allowed by `min_quant`. prefer="quality": float32 denoisers become candidates, fast
    matmuls do not, and the most precise plan that fits wins, the fastest among equals. `compile`: regional
    compile of the denoisers' blocks may be planned (it is chosen only where the job amortizes it).
    """

    min_quant: str = "int4"  # the lowest precision allowed for the denoisers
    vram_reserve: int = C.DEFAULT_VRAM_RESERVE
    ram_reserve: int = C.DEFAULT_RAM_RESERVE
    vram_cap: Optional[int] = None
    ram_cap: Optional[int] = None
    prefer: Literal["speed", "quality"] = "speed"
    compile: bool = True
    max_error: float = C.FAST_ERROR_BOUND
    # multi-process context parallelism is a candidate (the TUI runs jobs in a thread, one process: it says False)
    context_parallel: bool = True

    def __post_init__(self) -> None:
        if self.min_quant not in QUANT_ORDER:
            raise UserError(f"lowest precision {self.min_quant!r} is not one of {', '.join(QUANT_ORDER)}; pick one of them.")
        if self.prefer not in C.TIE_TOLERANCE:
            raise UserError(f"prefer={self.prefer!r}: use 'speed' or 'quality'.")
        for name in ("vram_reserve", "ram_reserve"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0 bytes, got {getattr(self, name)}; use 0 for no reserve.")
        for name in ("vram_cap", "ram_cap"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"{name} must be a positive number of bytes, got {value}; leave it unset for no cap.")
        if not (0 <= self.max_error < 1):
            raise UserError(f"max_error {self.max_error!r} is a relative error per forward between 0 and 1 "
                            f"(default {C.FAST_ERROR_BOUND}); 0 keeps fp8/int8 matmuls out.")

    @property
    def allowed_quants(self) -> tuple[str, ...]:
        return QUANT_ORDER[: QUANT_ORDER.index(self.min_quant) + 1]

    @property
    def denoiser_precisions(self) -> tuple[str, ...]:
        if self.prefer == "quality":
            return ("fp32",) + QUANT_ORDER
        return QUANT_ORDER + FAST_LEVELS

    def allows(self, precision: str) -> bool:
        """Within --min-precision (a fast level by its 8-bit storage)."""
        return FAST_STORAGE.get(precision, precision) in self.allowed_quants


@dataclass(frozen=True)
class Candidate:
    plan: Plan
    fits: bool
    rejected_reason: str = ""
    short_bytes: int = 0  # how much VRAM + RAM it lacks (0 when it fits)
    ruled_out: bool = False  # rejected for a reason other than the budget (precision, fp8 support, disk)


@dataclass(frozen=True)
class PlanResult:
    plan: Plan
    candidates: tuple[Candidate, ...]
    explanation: tuple[str, ...]


class NoPlanFits(UserError):
    """No candidate fits. Carries what would: the smallest VRAM / RAM (bytes, reserve included) or job."""

    def __init__(self, message: str, vram_needed: Optional[int] = None, ram_needed: Optional[int] = None,
                 smaller_job: Optional[Job] = None):
        super().__init__(message)
        self.vram_needed = vram_needed
        self.ram_needed = ram_needed
        self.smaller_job = smaller_job


@dataclass(frozen=True)
class Budget:
    """What a plan may use: VRAM of GPU 0 (`vram`) and of every GPU (`vrams`, caps and reserves per card), RAM, disk."""

    vram: int
    ram: int
    disk: int
    vrams: tuple[int, ...] = ()

    @classmethod
    def of(cls, probe: HardwareProbe, prefs: Preferences) -> "Budget":
        def card(free: int) -> int:
            free = min(free, prefs.vram_cap) if prefs.vram_cap else free
            return max(0, free - prefs.vram_reserve)

        ram = min(probe.ram_available, prefs.ram_cap) if prefs.ram_cap else probe.ram_available
        vrams = tuple(card(g.vram_free) for g in probe.gpus) if probe.has_gpu else ()
        return cls(vram=vrams[0] if vrams else 0, ram=max(0, ram - prefs.ram_reserve), disk=probe.disk_free, vrams=vrams)

    def gpu(self, index: int) -> int:
        """The VRAM budget of cuda:index (0 for a GPU the machine does not have)."""
        if index < len(self.vrams):
            return self.vrams[index]
        return self.vram if index == 0 else 0

    def describe(self) -> str:
        if len(self.vrams) > 1:
            return "VRAM " + ", ".join(f"cuda:{i} {gib(v)}" for i, v in enumerate(self.vrams))
        return f"VRAM {gib(self.vram)}"


# --- Candidates ----------------------------------------------------------------------------------------


def _with_prediction(plan: Plan, spec: ModelSpec, job: Job, tp: Throughput, budget: Optional[Budget] = None,
                     cache=None) -> Plan:
    stages, seconds = predict(plan, spec, job, tp, budget.ram if budget else None, cache)
    return replace(plan, predicted=stages, predicted_seconds=seconds)


def for_processes(tp: Throughput, processes: int, warm_parallel: tuple = ()) -> Throughput:
    """The throughput a plan of `processes` context-parallel processes is predicted with: each process compiles its
    blocks at its share of the tokens, another graph than one process's of the whole sequence, so its compile is
    warm only at the precisions `warm_parallel` ((process count, precisions), from the compile records) names."""
    if processes < 2:
        return tp
    return replace(tp, warm_precisions=tuple(dict(warm_parallel).get(processes, ())))


# Precisions whose blocks may be compiled. quanto's weight-only levels stay eager (kept for saving memory;
# their speed compiled is not measured), so do single files kept as stored.
COMPILED_PRECISIONS = ("fp32", "bf16") + FAST_LEVELS


def _compile_options(precision: str, placement: str, prefs: Preferences, lora: str = "") -> tuple[bool, ...]:
    """Eager and/or compiled. Fast levels only compiled (eager they are slower than bf16); never under leaf
    offload (no gain: its hooks split every block); nothing compiled when the user turned compile off. Unfused
    LoRA adapters run eager (peft's layers inside compiled blocks are not measured yet)."""
    if precision in FAST_LEVELS:
        return (True,) if prefs.compile and placement != "leaf_offload" else ()
    if prefs.compile and precision in COMPILED_PRECISIONS and placement != "leaf_offload" and lora != "unfused":
        return (False, True)
    return (False,)


def _denoiser_placements(spec: ModelSpec, precision: str, tokens: int, budget: Budget,
                         prefs: Preferences = Preferences(), lora: str = "", loras: tuple = ()) -> list[ComponentPlan]:
    kinds = [ComponentPlan("transformer", precision, "resident", lora=lora)]
    # the most blocks that fit beside the streamed ones: resident blocks never cost time, so use the VRAM there is
    # (unfused LoRA adapters take some of it)
    k = M.partial_blocks(spec, "transformer", precision, tokens, budget.vram, lora, loras)
    if 0 < k < spec.transformer.num_blocks:
        kinds.append(ComponentPlan("transformer", precision, "partial", resident_blocks=k, lora=lora))
    kinds += [ComponentPlan("transformer", precision, kind, lora=lora) for kind in ("block_offload", "leaf_offload", "disk_offload")]
    return [replace(cp, compile=c) for cp in kinds for c in _compile_options(precision, cp.placement, prefs, lora)]


def lora_modes(job: Job, precision: str) -> tuple[str, ...]:
    """How the job's LoRAs may be carried at this precision: fused into the weights (not into a stored fp8 /
    GGUF file's: there are no full-precision weights to fuse into) or as unfused adapters (eager, beside
    quanto or unquantized weights: peft's layers over torchao's fast levels are not measured yet)."""
    if not job.loras:
        return ("",)
    if precision == "stored":
        return ("unfused",)
    return ("fused",) if precision in FAST_LEVELS else ("fused", "unfused")


def denoiser_options(spec: ModelSpec, job: Job, budget: Budget, prefs: Preferences) -> list[tuple[ComponentPlan, ...]]:
    """Every denoiser setting to try: one component per denoiser. Two experts share precision, placement and
    how they carry LoRAs (they have one shape) and differ in where each waits while the other runs."""
    tokens = spec.tokens(job.width, job.height, job.frames)
    out = []
    stored = spec.denoisers[0].stored
    # an fp8 / GGUF single file runs as stored (its bf16 weights are not there to quantize otherwise)
    precisions = ("stored",) if stored is not None and stored.dequant_bytes_per_param > 0 else prefs.denoiser_precisions
    two = spec.two_experts
    footprints = _lora_sizing(spec, job)  # the larger LoRA footprint of the two experts sizes the resident blocks of both
    for precision in precisions:
        for mode in lora_modes(job, precision):
            for cp in _denoiser_placements(spec, precision, tokens, budget, prefs, mode, footprints):
                if not two:
                    out.append((cp,))
                    continue
                # where the idle expert waits only matters for what is streamed (pinned copies); a resident expert
                # waits in its file
                for idle in ("pinned", "mmap") if cp.placement != "resident" else ("mmap",):
                    out.append((replace(cp, idle=idle), replace(cp, name="transformer_2", idle=idle)))
    return out


def _multi_gpu_settings(spec: ModelSpec, job: Job, probe: HardwareProbe, budget: Budget,
                       prefs: Preferences) -> list[tuple[tuple[ComponentPlan, ...], dict]]:
    """planner.multi_gpu's denoiser settings, each with every way the job's LoRAs may be carried at its precision,
    as the one-GPU settings have them (lora_modes: fused or adapters, never adapters on a fast level; adapters
    run eager)."""
    out = []
    footprints = _lora_sizing(spec, job)
    for mode in ("fused", "unfused") if job.loras else ("",):
        for denoisers, plan_fields in multi_gpu.options(
                spec, job, probe, budget.vrams, prefs.denoiser_precisions, prefs.context_parallel,
                lambda precision, placement: _compile_options(precision, placement, prefs), mode, footprints):
            if mode not in lora_modes(job, denoisers[0].precision) or mode == "unfused" and any(c.compile for c in denoisers):
                continue
            out.append((tuple(replace(c, lora=mode) for c in denoisers), plan_fields))
    return out


def _lora_sizing(spec: ModelSpec, job: Job) -> tuple:
    """The footprints that size the resident blocks of a denoiser with unfused adapters: the larger LoRA set of the
    two experts (both experts share placement)."""
    two = spec.two_experts
    return max((tuple(lora.footprint for lora in job.loras if lora.footprint is not None and d.name in lora.components(two))
                for d in spec.denoisers), key=lambda fs: sum(f.params for f in fs)) if job.loras else ()


def gpu_candidates(spec: ModelSpec, job: Job, probe: HardwareProbe, prefs: Preferences, tp: Throughput,
                   budget: Budget, cache=None, warm_parallel: tuple = ()) -> list[Candidate]:
    """Every one-GPU plan, then (several GPUs) every multi-GPU one (planner.multi_gpu), each predicted and judged
    (a context-parallel one with its processes' compile warmth: `warm_parallel`, see make_plan)."""
    settings = [(d, {}) for d in denoiser_options(spec, job, budget, prefs)]
    settings += _multi_gpu_settings(spec, job, probe, budget, prefs)
    out = []
    image = (ComponentPlan("image_encoder", "fp32", "gpu"),) if spec.image_encoder is not None else ()
    for denoisers, plan_fields in settings:
        for teq in TEXT_QUANTS:
            for te in TEXT_PLACEMENTS:
                fp32_tiled_fits = False
                for vae_precision, vae in VAE_OPTIONS:
                    if vae_precision == "bf16" and fp32_tiled_fits:
                        continue
                    components = (ComponentPlan("text_encoder", teq, te),) + image + denoisers + (
                        ComponentPlan("vae", vae_precision, vae),)
                    plan = Plan(device="cuda", components=plain(list(components)), **plan_fields)
                    plan = with_loras(plan, job.loras)  # a denoiser no LoRA applies to carries none
                    plan = _with_prediction(plan, spec, job, for_processes(tp, plan.parallel_gpus, warm_parallel),
                                            budget, cache)
                    judged = _judge(plan, budget, _rule_out(plan, spec, prefs, probe, tp))
                    out.append(judged)
                    if (vae_precision, vae) == ("fp32", "gpu_tiled"):
                        fp32_tiled_fits = judged.fits or judged.ruled_out
    return out


def _rule_out(plan: Plan, spec: ModelSpec, prefs: Preferences, probe: HardwareProbe, tp: Throughput) -> str:
    """Reasons that are not about the budget."""
    d = plan.denoisers[0]
    if d.precision not in ("fp32", "stored") and not prefs.allows(d.precision):
        return f"below the lowest precision allowed ({prefs.min_quant})"
    if d.fast:
        error = C.FAST_LEVEL_ERROR[d.precision]
        if error > prefs.max_error:
            return (f"{d.precision}'s per-forward error {error:.1%} vs bf16 is above the bound "
                    f"{prefs.max_error:.1%} (--max-error)")
        for g in _plan_gpus(plan):  # every card the plan computes on must run it
            why = tp.on(g).fast_unavailable(d.precision)
            if why:
                return f"cuda:{g}: {why}" if tp.cards else why
    if plan.component("text_encoder").precision != "bf16" and prefs.min_quant == "bf16":
        return "text encoder int8 is below the lowest precision allowed (bf16)"
    slow = [g for g in _plan_gpus(plan) if not tp.on(g).fp8_fast]
    if d.precision == "fp8" and slow:
        cc = ".".join(map(str, tp.on(slow[0]).compute_capability or ())) or "unknown"
        need = ".".join(map(str, C.FP8_MIN_COMPUTE_CAPABILITY))
        return f"fp8 needs compute capability >= {need} for fast matmul ({f'cuda:{slow[0]}' if tp.cards else 'this GPU'}: {cc})"
    on_disk = sum(M.denoiser_split(spec, cp)[2] for cp in plan.denoisers)
    if on_disk > probe.disk_free:
        return f"disk offload needs {gib(on_disk)} free in the cache folder, {gib(probe.disk_free)} free"
    return ""


def _plan_gpus(plan: Plan) -> tuple[int, ...]:
    """The GPUs a plan computes on (GPU 0 alone for a one-GPU plan)."""
    return plan.gpus or (0,)


def _judge(plan: Plan, budget: Budget, ruled_out: str = "") -> Candidate:
    short = vram_short(plan, budget) + max(0, plan.peak_ram_bytes - budget.ram)
    reason = ruled_out or over_budget(plan, budget)
    return Candidate(plan, not reason, reason, short, bool(ruled_out))


def vram_short(plan: Plan, budget: Budget) -> int:
    """How much VRAM the plan lacks, summed over the GPUs it uses (0 when every card's peak fits its budget)."""
    per_gpu = plan.peak_vram_per_gpu or (plan.peak_vram_bytes,)
    return sum(max(0, v - budget.gpu(i)) for i, v in enumerate(per_gpu))


def _stage_on(plan: Plan, gpu: int) -> StagePeak:
    def on(s: StagePeak) -> int:
        return s.vram_per_gpu[gpu] if gpu < len(s.vram_per_gpu) else (s.vram_bytes if gpu == 0 else 0)

    worst = max(plan.predicted, key=on)
    return replace(worst, vram_bytes=on(worst))


def over_budget(plan: Plan, budget: Budget) -> str:
    """'' when the plan fits; else which budget it exceeds, by how much, in which stage (on which GPU)."""
    worst_r = max(plan.predicted, key=lambda s: s.ram_bytes)
    reasons = []
    per_gpu = plan.peak_vram_per_gpu
    for i in range(max(1, len(per_gpu))):
        worst_v = _stage_on(plan, i)
        card = budget.gpu(i)
        where = f" on cuda:{i}" if len(per_gpu) > 1 else ""
        if worst_v.vram_bytes > card:
            reasons.append(
                f"over VRAM{where} by {gib(worst_v.vram_bytes - card)} in {worst_v.label} "
                f"(needs {gib(worst_v.vram_bytes)}, budget {gib(card)})"
            )
    if worst_r.ram_bytes > budget.ram:
        reasons.append(
            f"over RAM by {gib(worst_r.ram_bytes - budget.ram)} in {worst_r.label} "
            f"(needs {gib(worst_r.ram_bytes)}, budget {gib(budget.ram)})"
        )
    return "; ".join(reasons)


# Most precise first. torchao's fast levels round the activations too; they rank below quanto's 8-bit
# weight-only levels and above int4. Conservative: on the CPU's tiny shapes fp8_fast measured 1.0-1.2% per
# forward against quanto fp8's 2.5-2.9% (planner.constants.FAST_LEVEL_ERROR); the rank only breaks near-ties.
PRECISION_RANK = {p: i for i, p in enumerate(("fp32", "bf16", "stored", "fp8", "int8", "fp8_fast", "int8_fast", "int4"))}


def precision_key(plan: Plan) -> tuple:
    """Lower is more precise: the denoisers' precision, then the text encoder's, then the VAE's. (A tiled VAE
    decodes the same numbers up to tile blending: not a precision matter.)"""
    denoisers = max((PRECISION_RANK[c.precision] for c in plan.denoisers), default=0)
    te = plan.get("text_encoder")
    vae = plan.get("vae")
    return (denoisers, PRECISION_RANK[te.precision] if te else 0, PRECISION_RANK[vae.precision] if vae else 0)


def _varying_seconds(plan: Plan) -> float:
    """The predicted time a plan's choices change: without the load's fixed cost, which every plan pays alike and
    which must not narrow the tie tolerance (a demo-sized job would otherwise be all fixed cost)."""
    return plan.predicted_seconds - C.LOAD_FIXED_SECONDS


def pick(fitting: list[Candidate], prefer: str) -> Candidate:
    """speed: the fastest; within the tie tolerance of it, the most precise (then the fastest of those).
    quality: the most precise that fits, the fastest of those (an untiled VAE on a tie)."""
    if prefer == "quality":
        return min(fitting, key=lambda c: (precision_key(c.plan), c.plan.predicted_seconds, c.plan.peak_ram_bytes))
    fastest = min(_varying_seconds(c.plan) for c in fitting)
    near = [c for c in fitting if _varying_seconds(c.plan) <= fastest * (1 + C.TIE_TOLERANCE[prefer])]
    # equal time: the plan that holds less RAM (e.g. an idle expert in its file rather than pinned), on fewer GPUs
    return min(near, key=lambda c: (precision_key(c.plan), round(c.plan.predicted_seconds, 6), c.plan.peak_ram_bytes,
                                    c.plan.gpu_count))


# --- The CPU ---------------------------------------------------------------------------------------------


def cpu_plan(spec: ModelSpec, job: Job, tp: Throughput, cache=None) -> Plan:
    """Everything on the CPU. float32 for the demo (CPU bf16 matmuls are slow or missing on many CPUs, and
    the demo is tiny); bfloat16 for real models (float32 would double the RAM: 57 GB for the 14B transformer)."""
    precision = "fp32" if spec.is_demo else "bf16"
    components = [ComponentPlan("text_encoder", precision, "cpu")]
    if spec.image_encoder is not None:
        components.append(ComponentPlan("image_encoder", "fp32", "cpu"))
    components += [ComponentPlan(d.name, precision, "resident") for d in spec.denoisers]
    components.append(ComponentPlan("vae", "fp32", "cpu"))
    reasons = ("no CUDA GPU: everything runs on the CPU",
               f"precision {precision}: " + ("the demo model is tiny and CPU float32 matmuls are the fast, safe path"
                                             if spec.is_demo else "float32 would double the RAM of a real model"))
    if job.loras:
        reasons += ("LoRAs fused into the weights: on the CPU the weights stay in RAM anyway, and adapters would add "
                    "their matmuls to every step",)
    plan = with_loras(Plan(device="cpu", components=plain(components), reasons=reasons), job.loras, default="fused")
    plan = _with_prediction(plan, spec, job, tp, cache=cache)
    # Every forward on the CPU reads all of a denoiser's weights: they must stay in RAM (page cache) to run at
    # compute speed, so they count in the budget here.
    weights = max(M.component_bytes(spec.component(c.name), c.precision) for c in plan.denoisers)
    stages = tuple(replace(s, ram_bytes=s.ram_bytes + weights) if s.stage == "denoise" else s for s in plan.predicted)
    return replace(plan, predicted=stages)


# --- The choice -------------------------------------------------------------------------------------------


def make_plan(probe: HardwareProbe, spec: ModelSpec, job: Job, prefs: Preferences = Preferences(),
              calibration=None, suggest_smaller: bool = True, cache=None,
              warm_precisions: tuple[str, ...] = (), warm_parallel: tuple[tuple[int, tuple[str, ...]], ...] = ()
              ) -> PlanResult:
    """The fastest plan that fits this machine, with every candidate and an explanation. `cache`: the calls
    the job's step cache computes (lowvram.caching CallCounts), when known: time counts only those.
    `warm_precisions`: precisions this job's blocks were compiled at before (a cheaper compile); `warm_parallel`:
    (process count, precisions) compiled before at one context-parallel process's share of the tokens.

    Raises NoPlanFits naming what is short and what would fit (with `suggest_smaller`, a smaller job too).
    """
    tp = throughput_for(probe, calibration, warm_precisions)
    if job.cache.enabled and prefs.context_parallel:  # a step cache does not run with context parallel yet
        prefs = replace(prefs, context_parallel=False)
    budget = Budget.of(probe, prefs)
    if probe.has_gpu:
        candidates = gpu_candidates(spec, job, probe, prefs, tp, budget, cache, warm_parallel)
    else:
        candidates = [_judge(cpu_plan(spec, job, tp, cache), budget)]
    fitting = [c for c in candidates if c.fits]
    if not fitting:
        raise _no_plan_fits(probe, spec, job, prefs, calibration, candidates, budget, suggest_smaller)
    chosen = pick(fitting, prefs.prefer).plan
    chosen = replace(chosen, reasons=chosen.reasons + _choice_reasons(chosen, fitting, tp, prefs)
                     + idle_reasons(chosen, candidates, budget)
                     + why_denoiser(chosen, candidates, spec, job, tp, prefs, budget, warm_parallel)
                     + _why_vae(chosen, candidates))
    lines = explain(probe, spec, job, budget, tp, chosen, candidates)
    return PlanResult(plan=chosen, candidates=tuple(candidates), explanation=tuple(lines))


def _choice_reasons(chosen: Plan, fitting: list[Candidate], tp: Throughput, prefs: Preferences) -> tuple[str, ...]:
    fastest = min(_varying_seconds(c.plan) for c in fitting)
    slower = 100 * (_varying_seconds(chosen) / fastest - 1) if fastest > 0 else 0.0
    if _varying_seconds(chosen) <= fastest:
        first = f"fastest predicted of {len(fitting)} plans that fit"
    elif prefs.prefer == "quality":
        first = f"the most precise of {len(fitting)} plans that fit (--prefer quality), {slower:.0f}% slower than the fastest"
    else:
        first = f"within {slower:.1f}% of the fastest, at higher precision"
    return (first, f"time model: {tp.source}")


def _why_vae(chosen: Plan, candidates: list[Candidate]) -> tuple[str, ...]:
    """Why the VAE decodes in bf16, when it does: the fp32 decode's need against the budget, and the CPU's time."""
    vae = chosen.get("vae")
    if vae is None or vae.precision != "bf16":
        return ()
    twins = {c.plan.component("vae").placement: c for c in candidates
             if c.plan.component("vae").precision == "fp32" and _same_but_vae(c.plan, chosen)}
    why = "VAE bf16 on the GPU, tiled (half the memory of fp32; small rounding differences in the frames)"
    tiled, cpu = twins.get("gpu_tiled"), twins.get("cpu")
    if tiled is not None:
        why += f": fp32 tiled is {tiled.rejected_reason or _compare(tiled.plan, chosen)}"
    if cpu is not None:
        why += f"; decoding on the CPU instead: {cpu.rejected_reason or _compare(cpu.plan, chosen)}"
    return (why,)


def _same_but_vae(plan: Plan, other: Plan) -> bool:
    return [c for c in plan.components if c.name != "vae"] == [c for c in other.components if c.name != "vae"]


def idle_reasons(chosen: Plan, candidates: list[Candidate], budget: Budget) -> tuple[str, ...]:
    """Where the idle expert of a two-expert plan waits, and why (against the other choice, same plan otherwise)."""
    if not chosen.two_experts or chosen.device != "cuda":
        return ()
    idle = chosen.denoisers[0].idle
    other = "mmap" if idle == "pinned" else "pinned"
    twin_key = config_key(replace(chosen, components=tuple(replace(c, idle=other) if c.role == "denoiser" else c
                                                           for c in chosen.components)))
    twin = next((c for c in candidates if config_key(c.plan) == twin_key), None)
    if idle == "pinned":
        why = "both experts' streamed weights stay in page-locked RAM for the whole run, so the switch only copies"
        if twin is not None:
            why += (f" (waiting in the weights file instead saves {gib(chosen.peak_ram_bytes - twin.plan.peak_ram_bytes)}"
                    f" of RAM but costs {fmt_seconds(twin.plan.predicted_seconds - chosen.predicted_seconds)} per run)")
        return (f"idle expert waits in pinned RAM: {why}",)
    why = "it waits memory-mapped in its weights file and is read and page-locked when its phase starts"
    if twin is not None and not twin.fits:
        why += f"; keeping both pinned is {twin.rejected_reason}"
    elif twin is not None:
        why += f" (pinned would be {fmt_seconds(chosen.predicted_seconds - twin.plan.predicted_seconds)} faster only)"
    return (f"idle expert waits in its weights file: {why}",)


def check_job(job: Job, spec: ModelSpec, inputs: bool = True) -> None:
    """UserError (exit 2) naming each option to change when the job asks what its model cannot do.
    `inputs=False` (planning only: `lowvram plan`, profiles): a missing first frame is not a problem yet."""
    from planner.job_checks import job_problems

    problems = job_problems(job, spec, inputs)
    if problems:
        raise UserError(f"Invalid job for {spec.name}:\n  - " + "\n  - ".join(problems))


# --- Why the denoisers run as they do, in words ------------------------------------------------------------


def _twin(chosen: Plan, candidates: list[Candidate], **change) -> Optional[Candidate]:
    """The candidate that differs from the chosen plan only in the denoisers' fields `change`."""
    key = config_key(replace(chosen, components=tuple(replace(c, **change) if c.role == "denoiser" else c
                                                      for c in chosen.components)))
    return next((c for c in candidates if config_key(c.plan) == key), None)


def _best_at(candidates: list[Candidate], precision: str) -> Optional[Candidate]:
    """The best candidate whose denoisers run at `precision` (fitting first, then the fastest)."""
    at = [c for c in candidates if c.plan.denoisers and c.plan.denoisers[0].precision == precision]
    return _best(at) if at else None


def _forwards(spec: ModelSpec, job: Job) -> int:
    steps = phase_steps(spec, job)
    return sum(n * passes_for(guidance_for(spec, job, name)) for name, n in steps.items())


def why_denoiser(chosen: Plan, candidates: list[Candidate], spec: ModelSpec, job: Job, tp: Throughput,
                 prefs: Preferences, budget: Budget, warm_parallel: tuple = ()) -> tuple[str, ...]:
    """Precision, placement and compile of the chosen denoisers, each with its reason (GPU plans). `tp`: the
    machine's; each plan's compile is warm or cold as for its processes (for_processes, `warm_parallel`)."""
    if chosen.device != "cuda" or not chosen.denoisers:
        return ()
    mine = for_processes(tp, chosen.parallel_gpus, warm_parallel)
    return (_why_precision(chosen, candidates, mine, prefs, lambda plan: for_processes(tp, plan.parallel_gpus, warm_parallel),
                           lambda plan: _quantized_now(plan, spec, job)),
            _why_placement(chosen, spec, job, mine, budget), _why_compile(chosen, candidates, spec, job, mine, prefs))


def _quantized_now(plan: Plan, spec: ModelSpec, job: Job) -> float:
    """Seconds the plan's load spends quantizing its denoisers (not in the quantized-weights cache yet)."""
    return quantize_seconds(spec, [cp for cp in plan.denoisers
                                   if cp.quantized and (cp.name, cache_level(plan, job, cp)) not in spec.quantized_cached])


def _why_precision(chosen: Plan, candidates: list[Candidate], tp: Throughput, prefs: Preferences,
                   tp_of: Callable[[Plan], Throughput], quantizing: Callable[[Plan], float]) -> str:
    d = chosen.denoisers[0]
    if d.fast:
        what = "fp8" if d.precision == "fp8_fast" else "int8"
        text = (f"precision {d.precision}: the blocks' matmuls run in {what} (torchao, activations and weights "
                f"quantized per row), per-forward error {C.FAST_LEVEL_ERROR[d.precision]:.1%} vs bf16 "
                f"on the test model (bound {prefs.max_error:.1%}: about twice quanto fp8's there), "
                f"{C.FAST_LEVEL_ERROR_REAL[d.precision]:.1%} on the 14B's shapes with random weights (quanto fp8, "
                f"allowed by default: {C.FAST_LEVEL_ERROR_REAL['quanto_fp8']:.1%}); matmuls x{tp.fast_factor(d.precision):.2f} ({tp.fast_source})")
        bf16 = _best_at(candidates, "bf16")
        if bf16 is not None and bf16.fits and bf16.plan.predicted_seconds > chosen.predicted_seconds:
            text += f", {100 * (1 - chosen.predicted_seconds / bf16.plan.predicted_seconds):.0f}% faster than bf16 here"
        return text
    if prefs.prefer == "quality":
        return f"precision {d.precision}: --prefer quality (no fp8/int8 matmuls; the most precise plan that fits)"
    # why no fast level: the first reason among them
    reasons = []
    for level in FAST_LEVELS:
        why = tp.fast_unavailable(level)
        if not why and C.FAST_LEVEL_ERROR[level] > prefs.max_error:
            why = f"{level}'s per-forward error {C.FAST_LEVEL_ERROR[level]:.1%} is above the bound {prefs.max_error:.1%}"
        if not why and not prefs.allows(level):
            why = f"{level} is below the lowest precision allowed ({prefs.min_quant})"
        if not why and not prefs.compile:
            why = f"{level} is fast only compiled, and compile is off (--no-compile)"
        if not why:
            best = _best_at(candidates, level)
            why = f"{level} was {_verdict(best, chosen)}" if best is not None else f"{level} was not planned"
            if best is not None and best.fits and best.plan.predicted_seconds > chosen.predicted_seconds:
                # a fast level runs compiled only: on a short job its compile can outweigh its faster matmuls
                own = tp_of(best.plan)
                warmth = "from inductor's cache" if level in own.warm_precisions else "first time at these shapes"
                quantize = quantizing(best.plan)
                why += (f" (with its compile, ~{fmt_seconds(compile_seconds(best.plan, own))}, {warmth}"
                        + (f", and quantizing its weights, ~{fmt_seconds(quantize)} the first time)" if quantize else ")"))
        reasons.append(why)
    return f"precision {d.precision}: " + "; ".join(reasons)


def _why_placement(chosen: Plan, spec: ModelSpec, job: Job, tp: Throughput, budget: Budget) -> str:
    d = chosen.denoisers[0]
    t = spec.component(d.name)
    tokens = spec.tokens(job.width, job.height, job.frames)
    phase_vram = max((s.vram_bytes for s in chosen.predicted if s.stage == "denoise"), default=0)
    used = f"{gib(phase_vram)} of the {gib(budget.vram)} VRAM budget while denoising"
    if d.placement == "resident":
        return f"placement: all {t.num_blocks} blocks resident ({used})"
    resident = replace(d, placement="resident", resident_blocks=0)
    # a context-parallel process computes its share of the tokens and holds their activations and its buffers
    share = -(-tokens // chosen.parallel_gpus) if chosen.parallel else tokens
    need = context_parallel_vram(spec, resident, tokens, chosen) if chosen.parallel else \
        M.denoiser_vram_bytes(spec, resident, tokens)
    compute = forward_seconds(Plan("cuda", (resident,)), resident, spec, share, tp) / max(1, t.num_blocks)
    copy = M.block_bytes(t, d.precision) / tp.h2d_pinned
    hidden = ("the copy of a block hides behind the compute of the one before"
              if copy <= compute else "copies are slower than compute here, so streamed blocks wait on them")
    if d.placement == "partial":
        return (f"placement: {d.resident_blocks} of {t.num_blocks} blocks resident, the rest streamed ({used}; "
                f"all resident would need {gib(need)}); "
                f"{hidden}: {1e3 * copy:.0f} ms copy vs {1e3 * compute:.0f} ms compute per block")
    if d.placement in ("block_offload", "leaf_offload"):
        return (f"placement: every block streamed ({d.describe_placement()}; {used}); "
                f"{hidden}: {1e3 * copy:.0f} ms copy vs {1e3 * compute:.0f} ms compute per block")
    return f"placement: streamed from disk ({used}): RAM does not hold the weights"


def _why_compile(chosen: Plan, candidates: list[Candidate], spec: ModelSpec, job: Job, tp: Throughput,
                 prefs: Preferences) -> str:
    d = chosen.denoisers[0]
    forwards = _forwards(spec, job)
    blocks = spec.component(d.name).num_blocks
    cost = tp.compile_seconds_for(d.precision)
    warmth = "from inductor's cache" if d.precision in tp.warm_precisions else "first time at these shapes"
    if d.compile:
        once = f"once in each of the {chosen.parallel_gpus} processes" if chosen.parallel else "once"
        text = (f"compile: the {blocks} blocks are compiled {once} (~{fmt_seconds(cost)}, {warmth}), then each forward's "
                f"compute runs x{tp.compile_factor(d.placement):.2f}")
        eager = _twin(chosen, candidates, compile=False)
        if eager is not None:
            text += (f": {fmt_seconds(eager.plan.predicted_seconds - chosen.predicted_seconds)} saved over the "
                     f"job's {forwards} forwards")
        elif d.fast:
            text += f" over the job's {forwards} forwards ({d.precision} is fast only compiled: eager, quantizing the activations costs more than it saves)"
        return text
    if not prefs.compile:
        return "compile: off (--no-compile)"
    if d.placement == "leaf_offload":
        return "compile: not under leaf offload (its per-layer hooks split every block: no gain)"
    if d.precision not in COMPILED_PRECISIONS:
        return f"compile: not planned for {d.precision} weights (quanto / stored files: not measured compiled)"
    twin = _twin(chosen, candidates, compile=True)
    if twin is not None and twin.fits:
        gain = chosen.predicted_seconds + cost - twin.plan.predicted_seconds
        return (f"compile: not worth it for {forwards} forwards: compiling costs ~{fmt_seconds(cost)} and would save "
                f"{fmt_seconds(max(0.0, gain))}")
    return "compile: " + (twin.rejected_reason if twin is not None else "no compiled plan fits")


# --- Explanation --------------------------------------------------------------------------------------------


def stage_table(plan: Plan) -> list[str]:
    """Predicted peaks per stage; a plan on several GPUs gets one VRAM column per GPU."""
    gpus = len(plan.peak_vram_per_gpu) if len(plan.peak_vram_per_gpu) > 1 else 0
    if not gpus:
        lines = [f"  {'stage':<26} {'VRAM':>10} {'RAM':>10} {'time':>9}"]
        for s in plan.predicted:
            lines.append(f"  {s.label:<26} {gib(s.vram_bytes):>10} {gib(s.ram_bytes):>10} {fmt_seconds(s.seconds):>9}")
        lines.append(f"  {'peak':<26} {gib(plan.peak_vram_bytes):>10} {gib(plan.peak_ram_bytes):>10} {fmt_seconds(plan.predicted_seconds):>9}")
        return lines
    head = "".join(f"{'cuda:' + str(i):>10} " for i in range(gpus))
    lines = [f"  {'stage':<26} {head}{'RAM':>10} {'time':>9}"]
    for s in plan.predicted:
        per = s.vram_per_gpu or (s.vram_bytes,) + (0,) * (gpus - 1)
        cols = "".join(f"{gib(v):>10} " for v in per)
        lines.append(f"  {s.label:<26} {cols}{gib(s.ram_bytes):>10} {fmt_seconds(s.seconds):>9}")
    cols = "".join(f"{gib(v):>10} " for v in plan.peak_vram_per_gpu)
    lines.append(f"  {'peak':<26} {cols}{gib(plan.peak_ram_bytes):>10} {fmt_seconds(plan.predicted_seconds):>9}")
    return lines


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n:,}"


def _denoiser_label(plan: Plan) -> str:
    d = next((c for c in plan.denoisers if c.lora), plan.denoisers[0])
    label = f"{d.precision} {d.describe_placement()}" + (", compiled" if d.compile else "")
    if d.lora:
        label += ", LoRA " + ("fused" if d.lora == "fused" else "adapters on the GPU")
    return label + (f", idle expert in {'pinned RAM' if d.idle == 'pinned' else 'its weights file'}" if d.idle else "")


def _differences(plan: Plan, chosen: Plan) -> str:
    """What a plan does differently from the chosen one, in words ('int8 text encoder, tiled VAE')."""
    out = []
    for c in plan.components:
        mine = chosen.get(c.name)
        if mine is None or mine == c:
            continue
        if c.role == "denoiser":
            if c.name == "transformer":
                out.append(f"{'experts' if plan.two_experts else 'transformer'} {_denoiser_label(plan)}")
        else:
            out.append(f"{component_label(c.name)} {c.words()}")
    return ", ".join(out)


def _compare(plan: Plan, chosen: Plan) -> str:
    """How a fitting plan compares with the chosen one."""
    pct = 100 * (plan.predicted_seconds / chosen.predicted_seconds - 1) if chosen.predicted_seconds else 0.0
    if pct >= 0.5:
        return f"slower by {pct:.0f}%"
    if precision_key(plan) > precision_key(chosen):
        return f"lower precision, {'faster' if pct < 0 else 'slower'} by only {abs(pct):.1f}%"
    return f"{'faster' if pct < 0 else 'slower'} by {abs(pct):.1f}%"


def _verdict(c: Candidate, chosen: Plan) -> str:
    return c.rejected_reason if not c.fits else _compare(c.plan, chosen)


def _best(cands: list[Candidate]) -> Candidate:
    """The fastest that fits; else the one closest to fitting (its reason is the telling one)."""
    return min(cands, key=lambda c: (not c.fits, c.short_bytes, c.plan.predicted_seconds))


def _by(cands: list[Candidate], key) -> dict:
    groups: dict = {}
    for c in cands:
        groups.setdefault(key(c.plan), []).append(c)
    return groups


def _denoiser_key(plan: Plan) -> tuple:
    d = plan.denoisers[0]
    return d.precision, d.placement, d.idle, d.compile, tuple(c.lora for c in plan.denoisers)


def _same_denoisers(a: Plan, b: Plan) -> bool:
    return a.denoisers == b.denoisers


def explain(probe: HardwareProbe, spec: ModelSpec, job: Job, budget: Budget, tp: Throughput, chosen: Plan,
            candidates: list[Candidate]) -> list[str]:
    lines = describe_probe(probe)
    lines.append(f"budget: {budget.describe()}, RAM {gib(budget.ram)} (free/available minus the reserves)")
    tokens = spec.tokens(job.width, job.height, job.frames)
    denoisers = spec.denoisers
    size = (f"two experts of {_count(denoisers[0].params)} params" if spec.two_experts
            else f"{_count(denoisers[0].params)} transformer params")
    lines.append(f"job: {spec.name} ({spec.task}, {size}), {job.width}x{job.height}, {job.frames} frames, "
                 f"{job.steps} steps, {tokens:,} tokens")
    if spec.two_experts:
        steps = phase_steps(spec, job)
        lines.append(
            f"experts: high-noise for {steps['transformer']} steps (guidance {guidance_for(spec, job, 'transformer'):g}), "
            f"low-noise for {steps['transformer_2']} (guidance {guidance_for(spec, job, 'transformer_2'):g}); "
            f"boundary {spec.boundary_ratio:g} x 1000, shift {shift_for(spec, job):g}"
        )
    lines.append(f"time model: {tp.source}")
    lines += describe_cards(probe, tp)
    lines.append(f"chosen: {chosen.summary()} ({chosen.device})")
    lines += stage_table(chosen)
    lines += [f"  why: {r}" for r in chosen.reasons
              if r.startswith(("idle expert", "the most precise", "precision ", "placement: ", "compile: ", "VAE ", "LoRAs fused"))]
    lines += lora_lines(spec, job, tp, chosen, candidates)
    if not probe.has_gpu:
        return lines
    one_gpu = [c for c in candidates if not multi_gpu.kind_of(c.plan)]
    fitting_one = [c for c in one_gpu if c.fits]
    lines += multi_gpu.explanation_lines(chosen, candidates, min(fitting_one, key=lambda c: c.plan.predicted_seconds)
                                         if fitting_one else None)
    candidates = one_gpu if not multi_gpu.kind_of(chosen) else [
        c for c in candidates if multi_gpu.kind_of(c.plan) == multi_gpu.kind_of(chosen)]
    others = [c for c in candidates if config_key(c.plan) != config_key(chosen)]
    options = _by(others, _denoiser_key)
    options.pop(_denoiser_key(chosen), None)  # its variants come below
    best_each = [_best(cs) for cs in options.values()]
    runners = sorted((c for c in best_each if c.fits), key=lambda c: c.plan.predicted_seconds)[:MAX_RUNNERS_UP]
    if runners:
        lines.append("runners-up:")
        for c in runners:
            lines.append(
                f"  {_differences(c.plan, chosen) or c.plan.summary()}: {fmt_seconds(c.plan.predicted_seconds)}, peak VRAM "
                f"{gib(c.plan.peak_vram_bytes)}, RAM {gib(c.plan.peak_ram_bytes)} ({_compare(c.plan, chosen)})"
            )
    what = "expert" if spec.two_experts else "transformer"
    lines.append(f"rejected {what} options (each with its best text encoder / VAE setting):")
    for c in best_each:
        if c not in runners:
            lines.append(f"  {_denoiser_label(c.plan)}: {_verdict(c, chosen)}")
    same_d = [c for c in others if _same_denoisers(c.plan, chosen)]
    lines.append(f"rejected text encoder options (with the chosen {what}):")
    chosen_te = chosen.component("text_encoder")
    for (teq, te), cs in _by(same_d, lambda p: (p.component("text_encoder").precision, p.component("text_encoder").placement)).items():
        if (teq, te) != (chosen_te.precision, chosen_te.placement):
            cs = _with_chosen(cs, chosen, "vae")  # the row judges the text encoder, not a VAE change beside it
            lines.append(f"  {teq} on {te}{' (no streams)' if te == 'offload' else ''}: {_verdict(_best(cs), chosen)}")
    lines.append(f"rejected VAE options (with the chosen {what}):")
    chosen_vae = chosen.component("vae")
    for (vaeq, vae), cs in _by(same_d, lambda p: (p.component("vae").precision, p.component("vae").placement)).items():
        if (vaeq, vae) != (chosen_vae.precision, chosen_vae.placement):
            cs = _with_chosen(cs, chosen, "text_encoder")  # a tiled VAE is not "lower precision" by an int8 text encoder
            lines.append(f"  {vae if vaeq == 'fp32' else f'{vaeq} {vae}'}: {_verdict(_best(cs), chosen)}")
    return lines


def _with_chosen(cands: list[Candidate], chosen: Plan, name: str) -> list[Candidate]:
    """Those of `cands` whose component `name` is set as in the chosen plan (all of them when none is)."""
    mine = chosen.get(name)
    same = [c for c in cands if c.plan.get(name) == mine]
    return same or cands


def lora_lines(spec: ModelSpec, job: Job, tp: Throughput, chosen: Plan, candidates: list[Candidate]) -> list[str]:
    """How the chosen plan carries the job's LoRAs, and what the other way would cost (memory and time): the
    best plan carrying them the other way."""
    if not job.loras:
        return []
    lines = ["LoRAs: " + "; ".join(r.describe() for r in chosen.loras)]
    mode = next((c.lora for c in chosen.denoisers if c.lora), "")
    other = "unfused" if mode == "fused" else "fused"
    # the other way at its best: the fastest plan carrying the LoRAs that way (else the closest to fitting)
    others = [c for c in candidates if any(d.lora == other for d in c.plan.denoisers)]
    fitting = [c for c in others if c.fits]
    twin = pick(fitting, "speed") if fitting else (_best(others) if others else None)
    steps = sum(phase_steps(spec, job).values())
    if mode == "fused":
        quantized = any(c.quantized for c in chosen.denoisers if c.lora)
        why = ("fused into the base weights before they are quantized and placed: nothing added per step"
               + ("; the quantized weights are cached per LoRA set (the files' hashes and scales)" if quantized else ""))
    else:
        fps = {c.name: lora_footprints(chosen, job, c.name) for c in chosen.denoisers if c.lora}
        adapters = max(M.adapter_bytes(f, chosen.component(n).dtype) for n, f in fps.items())
        why = (f"kept as adapters resident on the GPU ({gib(adapters)}) while the base weights are placed as planned; "
               "nothing is re-quantized or re-written when the LoRA set changes")
    lines.append(f"  LoRA {mode}: {why}")
    if twin is None:
        if mode == "unfused" and chosen.denoisers[0].precision == "stored":
            lines.append("  fused: not possible: a stored fp8 / GGUF file has no full-precision weights to fuse into")
        return lines
    d_vram = twin.plan.peak_vram_bytes - chosen.peak_vram_bytes
    d_ram = twin.plan.peak_ram_bytes - chosen.peak_ram_bytes
    d_run = twin.plan.predicted_seconds - chosen.predicted_seconds
    d_step = (twin.plan.stage_seconds("denoise") - chosen.stage_seconds("denoise")) / max(1, steps)
    verdict = twin.rejected_reason if not twin.fits else _compare(twin.plan, chosen)
    lines.append(f"  LoRA {other} instead ({_denoiser_label(twin.plan)}): peak VRAM {_signed(d_vram, gib)}, RAM "
                 f"{_signed(d_ram, gib)}, {_signed(d_run, _short_seconds)} per run ({_signed(d_step, _short_seconds)} per step): {verdict}")
    return lines


def _signed(value: float, fmt) -> str:
    return ("+" if value >= 0 else "-") + fmt(abs(value))


def _short_seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else fmt_seconds(s)


# --- Nothing fits ---------------------------------------------------------------------------------------------

# Smaller jobs tried when nothing fits, in order (largest first): sides scaled, then fewer frames.
SHRINK_SIDES = (0.75, 0.5)
SHRINK_FRAMES = (49, 33, 17)


def _smaller_jobs(spec: ModelSpec, job: Job) -> list[Job]:
    out = []
    m = spec.spatial_multiple
    for scale in SHRINK_SIDES:
        w = max(m, int(job.width * scale) // m * m)
        h = max(m, int(job.height * scale) // m * m)
        out.append(job.with_(width=w, height=h))
    out += [job.with_(frames=f) for f in SHRINK_FRAMES if f < job.frames]
    return out


def _no_plan_fits(probe, spec, job, prefs, calibration, candidates, budget, suggest_smaller) -> NoPlanFits:
    allowed = [c for c in candidates if not c.ruled_out] or candidates
    # "a GPU with X free" speaks of one card: what one-GPU plans need
    ram_ok = [c for c in allowed if c.plan.peak_ram_bytes <= budget.ram and not multi_gpu.kind_of(c.plan)]
    vram_ok = [c for c in allowed if vram_short(c.plan, budget) == 0]  # so short of RAM only
    leanest = _best(allowed)
    lines = [
        f"no plan fits {spec.name} at {job.width}x{job.height}, {job.frames} frames on this machine "
        f"({budget.describe().replace('VRAM', 'VRAM budget', 1)}, RAM budget {gib(budget.ram)}, reserves included).",
        f"The leanest plan ({leanest.plan.summary()}) is {leanest.rejected_reason}.",
    ]
    vram_needed = ram_needed = None
    fixes = []
    if ram_ok and probe.has_gpu:
        need = min(c.plan.peak_vram_bytes for c in ram_ok) + prefs.vram_reserve
        vram_needed = need
        fixes.append(f"a GPU with at least {gib_at_least(need)} free VRAM (this RAM is enough)")
    if vram_ok:
        need = min(c.plan.peak_ram_bytes for c in vram_ok) + prefs.ram_reserve
        ram_needed = need
        fixes.append(f"at least {gib_at_least(need)} of available RAM" + (" (this VRAM is enough)" if probe.has_gpu else ""))
    if not fixes:
        vram_needed = leanest.plan.peak_vram_bytes + prefs.vram_reserve if probe.has_gpu else None
        ram_needed = leanest.plan.peak_ram_bytes + prefs.ram_reserve
        fixes.append(
            (f"at least {gib_at_least(vram_needed)} free VRAM and " if vram_needed else "")
            + f"at least {gib_at_least(ram_needed)} of available RAM"
        )
    smaller = None
    for small in _smaller_jobs(spec, job) if suggest_smaller else ():
        try:
            make_plan(probe, spec, small, prefs, calibration, suggest_smaller=False)
        except NoPlanFits:
            continue
        smaller = small
        fixes.append(f"a smaller job: --width {small.width} --height {small.height} --frames {small.frames}")
        break
    lines.append("It would work with " + ", or ".join(fixes) + ".")
    return NoPlanFits("\n".join(lines), vram_needed=vram_needed, ram_needed=ram_needed, smaller_job=smaller)


__all__ = [
    "Budget", "Candidate", "NoPlanFits", "PlanResult", "Preferences", "QUANT_ORDER", "StagePeak", "TEXT_PLACEMENTS",
    "cpu_plan", "explain", "fmt_seconds", "gib", "gpu_candidates", "make_plan", "over_budget", "pick",
    "precision_key", "stage_table", "PHASE_LABEL", "PHASE_OF", "config_key",
]
