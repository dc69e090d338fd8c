"""Pick the fastest plan that fits, and say why: `make_plan(probe, spec, job, prefs) -> PlanResult`.

Candidates are every combination of transformer quantization x placement, text encoder quantization x
placement and VAE placement. Each is predicted stage by stage (planner.estimate); those whose peak VRAM
and RAM fit the budgets (free minus a reserve) compete on predicted time, and higher precision wins
near-ties. Pure: the probe and the calibration come in as data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Optional

from lowvram.errors import UserError
from lowvram.job import Job
from planner import constants as C
from planner import memory as M
from planner.estimate import predict
from planner.plan import Plan, TransformerPlacement
from planner.probe import GIB, HardwareProbe, describe_probe
from planner.spec import ModelSpec
from planner.timing import Throughput, throughput_for

QUANT_ORDER = M.QUANT_ORDER
TEXT_QUANTS = ("bf16", "int8")
TEXT_PLACEMENTS = ("gpu", "offload", "cpu")  # "offload" is group offload WITHOUT streams, always
VAE_PLACEMENTS = ("gpu", "gpu_tiled", "cpu")
MAX_RUNNERS_UP = 3


@dataclass(frozen=True)
class Preferences:
    """What the user allows and wants. Sizes in bytes; caps limit what the planner may use."""

    min_quant: str = "int4"  # the lowest precision allowed for the transformer
    vram_reserve: int = C.DEFAULT_VRAM_RESERVE
    ram_reserve: int = C.DEFAULT_RAM_RESERVE
    vram_cap: Optional[int] = None
    ram_cap: Optional[int] = None
    prefer: Literal["speed", "quality"] = "speed"

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

    @property
    def allowed_quants(self) -> tuple[str, ...]:
        return QUANT_ORDER[: QUANT_ORDER.index(self.min_quant) + 1]


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
    vram: int
    ram: int
    disk: int

    @classmethod
    def of(cls, probe: HardwareProbe, prefs: Preferences) -> "Budget":
        vram = min(probe.vram_free, prefs.vram_cap) if prefs.vram_cap else probe.vram_free
        ram = min(probe.ram_available, prefs.ram_cap) if prefs.ram_cap else probe.ram_available
        vram = vram - prefs.vram_reserve if probe.has_gpu else 0
        return cls(vram=max(0, vram), ram=max(0, ram - prefs.ram_reserve), disk=probe.disk_free)


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def fmt_seconds(s: float) -> str:
    s = max(0.0, s)
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


# --- Candidates ----------------------------------------------------------------------------------------


def _with_prediction(plan: Plan, spec: ModelSpec, job: Job, tp: Throughput, cache=None) -> Plan:
    stages, seconds = predict(plan, spec, job, tp, cache)
    return replace(plan, predicted=stages, predicted_seconds=seconds)


def partial_blocks(spec: ModelSpec, quant: str, tokens: int, vram_budget: int, dtype: str = "bfloat16") -> int:
    """How many blocks can stay resident while the rest stream: the spare VRAM of block offload, in blocks."""
    streaming = M.transformer_vram_bytes(spec, quant, "block_offload", tokens, dtype=dtype)
    block = M.block_bytes(spec.transformer, quant, dtype)
    if block <= 0:
        return 0
    k = (vram_budget - streaming) // block
    return int(max(0, min(k, spec.transformer.num_blocks)))


def _placements(spec: ModelSpec, quant: str, tokens: int, budget: Budget) -> list[TransformerPlacement]:
    out = [TransformerPlacement("resident")]
    k = partial_blocks(spec, quant, tokens, budget.vram)
    if 0 < k < spec.transformer.num_blocks:
        out.append(TransformerPlacement("partial", resident_blocks=k))
    out += [TransformerPlacement("block_offload"), TransformerPlacement("leaf_offload"), TransformerPlacement("disk_offload")]
    return out


def gpu_candidates(spec: ModelSpec, job: Job, probe: HardwareProbe, prefs: Preferences, tp: Throughput,
                   budget: Budget, cache=None) -> list[Candidate]:
    out = []
    for quant in QUANT_ORDER:
        for placement in _placements(spec, quant, job.tokens, budget):
            for teq in TEXT_QUANTS:
                for te in TEXT_PLACEMENTS:
                    for vae in VAE_PLACEMENTS:
                        plan = Plan(
                            device="cuda", dtype="bfloat16", transformer_quant=quant, transformer=placement,
                            text_encoder_quant=teq, text_encoder=te, vae=vae,
                        )
                        plan = _with_prediction(plan, spec, job, tp, cache)
                        out.append(_judge(plan, budget, _rule_out(plan, spec, prefs, probe, tp)))
    return out


def _rule_out(plan: Plan, spec: ModelSpec, prefs: Preferences, probe: HardwareProbe, tp: Throughput) -> str:
    """Reasons that are not about the budget."""
    if plan.transformer_quant not in prefs.allowed_quants:
        return f"below the lowest precision allowed ({prefs.min_quant})"
    if plan.text_encoder_quant != "bf16" and prefs.min_quant == "bf16":
        return "text encoder int8 is below the lowest precision allowed (bf16)"
    if plan.transformer_quant == "fp8" and not tp.fp8_fast:
        cc = ".".join(map(str, probe.compute_capability or ())) or "unknown"
        need = ".".join(map(str, C.FP8_MIN_COMPUTE_CAPABILITY))
        return f"fp8 needs compute capability >= {need} for fast matmul (this GPU: {cc})"
    if plan.transformer.kind == "disk_offload":
        _, _, on_disk = M.transformer_ram_split(spec, plan.transformer_quant, "disk_offload")
        if on_disk > probe.disk_free:
            return f"disk offload needs {gib(on_disk)} free in the cache folder, {gib(probe.disk_free)} free"
    return ""


def _judge(plan: Plan, budget: Budget, ruled_out: str = "") -> Candidate:
    short = max(0, plan.peak_vram_bytes - budget.vram) + max(0, plan.peak_ram_bytes - budget.ram)
    reason = ruled_out or over_budget(plan, budget)
    return Candidate(plan, not reason, reason, short, bool(ruled_out))


def over_budget(plan: Plan, budget: Budget) -> str:
    """'' when the plan fits; else which budget it exceeds, by how much, in which stage."""
    worst_v = max(plan.predicted, key=lambda s: s.vram_bytes)
    worst_r = max(plan.predicted, key=lambda s: s.ram_bytes)
    reasons = []
    if worst_v.vram_bytes > budget.vram:
        reasons.append(
            f"over VRAM by {gib(worst_v.vram_bytes - budget.vram)} in {worst_v.stage} "
            f"(needs {gib(worst_v.vram_bytes)}, budget {gib(budget.vram)})"
        )
    if worst_r.ram_bytes > budget.ram:
        reasons.append(
            f"over RAM by {gib(worst_r.ram_bytes - budget.ram)} in {worst_r.stage} "
            f"(needs {gib(worst_r.ram_bytes)}, budget {gib(budget.ram)})"
        )
    return "; ".join(reasons)


def _precision_key(plan: Plan) -> tuple:
    """Lower is more precise: transformer quant, then text encoder quant, then untiled VAE."""
    return (
        QUANT_ORDER.index(plan.transformer_quant),
        TEXT_QUANTS.index(plan.text_encoder_quant),
        0 if plan.vae != "gpu_tiled" else 1,
    )


def pick(fitting: list[Candidate], prefer: str) -> Candidate:
    """The fastest; within the tie tolerance of it, the most precise (then the fastest of those)."""
    fastest = min(c.plan.predicted_seconds for c in fitting)
    near = [c for c in fitting if c.plan.predicted_seconds <= fastest * (1 + C.TIE_TOLERANCE[prefer])]
    return min(near, key=lambda c: (_precision_key(c.plan), c.plan.predicted_seconds))


# --- The CPU ---------------------------------------------------------------------------------------------


def cpu_plan(spec: ModelSpec, job: Job, tp: Throughput, cache=None) -> Plan:
    """Everything on the CPU. float32 for the demo (CPU bf16 matmuls are slow or missing on many CPUs, and
    the demo is tiny); bfloat16 for real models (float32 would double the RAM: 57 GB for the 14B transformer)."""
    dtype = "float32" if spec.is_demo else "bfloat16"
    plan = Plan(
        device="cpu", dtype=dtype, transformer=TransformerPlacement("resident"),
        text_encoder="cpu", vae="cpu",
        reasons=(
            "no CUDA GPU: everything runs on the CPU",
            f"dtype {dtype}: " + ("the demo model is tiny and CPU float32 matmuls are the fast, safe path"
                                  if spec.is_demo else "float32 would double the RAM of a real model"),
        ),
    )
    return _with_prediction(plan, spec, job, tp, cache)


# --- The choice -------------------------------------------------------------------------------------------


def make_plan(probe: HardwareProbe, spec: ModelSpec, job: Job, prefs: Preferences = Preferences(),
              calibration=None, suggest_smaller: bool = True, cache=None) -> PlanResult:
    """The fastest plan that fits this machine, with every candidate and an explanation. `cache`: the calls
    the job's step cache computes (lowvram.caching CallCounts), when known: time counts only those.

    Raises NoPlanFits naming what is short and what would fit (with `suggest_smaller`, a smaller job too).
    """
    tp = throughput_for(probe, calibration)
    budget = Budget.of(probe, prefs)
    if probe.has_gpu:
        candidates = gpu_candidates(spec, job, probe, prefs, tp, budget, cache)
    else:
        candidates = [_judge(cpu_plan(spec, job, tp, cache), budget)]
    fitting = [c for c in candidates if c.fits]
    if not fitting:
        raise _no_plan_fits(probe, spec, job, prefs, calibration, candidates, budget, suggest_smaller)
    chosen = pick(fitting, prefs.prefer).plan
    chosen = replace(chosen, reasons=chosen.reasons + _choice_reasons(chosen, fitting, tp))
    lines = explain(probe, spec, job, budget, tp, chosen, candidates)
    return PlanResult(plan=chosen, candidates=tuple(candidates), explanation=tuple(lines))


def _choice_reasons(chosen: Plan, fitting: list[Candidate], tp: Throughput) -> tuple[str, ...]:
    fastest = min(c.plan.predicted_seconds for c in fitting)
    reasons = [f"fastest predicted of {len(fitting)} plans that fit" if chosen.predicted_seconds <= fastest
               else f"within {100 * (chosen.predicted_seconds / fastest - 1):.1f}% of the fastest, at higher precision"]
    reasons.append(f"time model: {tp.source}")
    return tuple(reasons)


def plan_for_job(job: Job, probe: Optional[HardwareProbe] = None, prefs: Preferences = Preferences(),
                 calibration=None, cache=None) -> PlanResult:
    """What generate and the TUI call: probe this machine (unless given), read the model's spec, plan."""
    from planner.calibration import load_calibration
    from planner.probe import probe_hardware
    from planner.spec import spec_for_model

    probe = probe if probe is not None else probe_hardware()
    calibration = calibration if calibration is not None else load_calibration()
    return make_plan(probe, spec_for_model(job.model), job, prefs, calibration, cache=cache)


# --- Explanation --------------------------------------------------------------------------------------------


def stage_table(plan: Plan) -> list[str]:
    lines = [f"  {'stage':<8} {'VRAM':>10} {'RAM':>10} {'time':>9}"]
    for s in plan.predicted:
        lines.append(f"  {s.stage:<8} {gib(s.vram_bytes):>10} {gib(s.ram_bytes):>10} {fmt_seconds(s.seconds):>9}")
    lines.append(f"  {'peak':<8} {gib(plan.peak_vram_bytes):>10} {gib(plan.peak_ram_bytes):>10} {fmt_seconds(plan.predicted_seconds):>9}")
    return lines


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n:,}"


def _transformer_label(plan: Plan) -> str:
    return f"{plan.transformer_quant} {plan.transformer.describe()}"


def config_key(plan: Plan) -> tuple:
    """What a plan decides, without its predictions and reasons."""
    return (plan.device, plan.dtype, plan.transformer_quant, plan.transformer, plan.text_encoder_quant,
            plan.text_encoder, plan.vae)


def _compare(plan: Plan, chosen: Plan) -> str:
    """How a fitting plan compares with the chosen one."""
    pct = 100 * (plan.predicted_seconds / chosen.predicted_seconds - 1) if chosen.predicted_seconds else 0.0
    if pct >= 0.5:
        return f"slower by {pct:.0f}%"
    if _precision_key(plan) > _precision_key(chosen):
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


def explain(probe: HardwareProbe, spec: ModelSpec, job: Job, budget: Budget, tp: Throughput, chosen: Plan,
            candidates: list[Candidate]) -> list[str]:
    lines = describe_probe(probe)
    lines.append(f"budget: VRAM {gib(budget.vram)}, RAM {gib(budget.ram)} (free/available minus the reserves)")
    lines.append(
        f"job: {spec.name} ({spec.task}, {_count(spec.transformer.params)} transformer params), "
        f"{job.width}x{job.height}, {job.frames} frames, {job.steps} steps, {job.tokens:,} tokens"
    )
    lines.append(f"time model: {tp.source}")
    lines.append(f"chosen: {chosen.summary()} ({chosen.device}, {chosen.dtype})")
    lines += stage_table(chosen)
    if not probe.has_gpu:
        return lines
    others = [c for c in candidates if config_key(c.plan) != config_key(chosen)]
    transformer_options = _by(others, lambda p: (p.transformer_quant, p.transformer.kind))
    transformer_options.pop((chosen.transformer_quant, chosen.transformer.kind), None)  # its variants come below
    best_each = [_best(cs) for cs in transformer_options.values()]
    runners = sorted((c for c in best_each if c.fits), key=lambda c: c.plan.predicted_seconds)[:MAX_RUNNERS_UP]
    if runners:
        lines.append("runners-up:")
        for c in runners:
            lines.append(
                f"  {c.plan.summary()}: {fmt_seconds(c.plan.predicted_seconds)}, peak VRAM "
                f"{gib(c.plan.peak_vram_bytes)}, RAM {gib(c.plan.peak_ram_bytes)} ({_compare(c.plan, chosen)})"
            )
    lines.append("rejected transformer options (each with its best text encoder / VAE setting):")
    for c in best_each:
        if c not in runners:
            lines.append(f"  {_transformer_label(c.plan)}: {_verdict(c, chosen)}")
    same_t = [c for c in others if (c.plan.transformer_quant, c.plan.transformer) == (chosen.transformer_quant, chosen.transformer)]
    lines.append("rejected text encoder options (with the chosen transformer):")
    for (teq, te), cs in _by(same_t, lambda p: (p.text_encoder_quant, p.text_encoder)).items():
        if (teq, te) != (chosen.text_encoder_quant, chosen.text_encoder):
            lines.append(f"  {teq} on {te}{' (no streams)' if te == 'offload' else ''}: {_verdict(_best(cs), chosen)}")
    lines.append("rejected VAE options (with the chosen transformer):")
    for vae, cs in _by(same_t, lambda p: p.vae).items():
        if vae != chosen.vae:
            lines.append(f"  {vae}: {_verdict(_best(cs), chosen)}")
    return lines


# --- Nothing fits ---------------------------------------------------------------------------------------------

# Smaller jobs tried when nothing fits, in order (largest first): sides scaled, then fewer frames.
SHRINK_SIDES = (0.75, 0.5)
SHRINK_FRAMES = (49, 33, 17)


def _smaller_jobs(job: Job) -> list[Job]:
    out = []
    for scale in SHRINK_SIDES:
        w = max(16, int(job.width * scale) // 16 * 16)
        h = max(16, int(job.height * scale) // 16 * 16)
        out.append(job.with_(width=w, height=h))
    out += [job.with_(frames=f) for f in SHRINK_FRAMES if f < job.frames]
    return out


def _no_plan_fits(probe, spec, job, prefs, calibration, candidates, budget, suggest_smaller) -> NoPlanFits:
    allowed = [c for c in candidates if not c.ruled_out] or candidates
    ram_ok = [c for c in allowed if c.plan.peak_ram_bytes <= budget.ram]  # so short of VRAM only
    vram_ok = [c for c in allowed if c.plan.peak_vram_bytes <= budget.vram]  # so short of RAM only
    leanest = _best(allowed)
    lines = [
        f"no plan fits {spec.name} at {job.width}x{job.height}, {job.frames} frames on this machine "
        f"(VRAM budget {gib(budget.vram)}, RAM budget {gib(budget.ram)}, reserves included).",
        f"The leanest plan ({leanest.plan.summary()}) is {leanest.rejected_reason}.",
    ]
    vram_needed = ram_needed = None
    fixes = []
    if ram_ok and probe.has_gpu:
        need = min(c.plan.peak_vram_bytes for c in ram_ok) + prefs.vram_reserve
        vram_needed = need
        fixes.append(f"a GPU with at least {gib(need)} free VRAM (this RAM is enough)")
    if vram_ok:
        need = min(c.plan.peak_ram_bytes for c in vram_ok) + prefs.ram_reserve
        ram_needed = need
        fixes.append(f"at least {gib(need)} of available RAM" + (" (this VRAM is enough)" if probe.has_gpu else ""))
    if not fixes:
        vram_needed = leanest.plan.peak_vram_bytes + prefs.vram_reserve if probe.has_gpu else None
        ram_needed = leanest.plan.peak_ram_bytes + prefs.ram_reserve
        fixes.append(
            (f"at least {gib(vram_needed)} free VRAM and " if vram_needed else "")
            + f"at least {gib(ram_needed)} of available RAM"
        )
    smaller = None
    for small in _smaller_jobs(job) if suggest_smaller else ():
        try:
            make_plan(probe, spec, small, prefs, calibration, suggest_smaller=False)
        except NoPlanFits:
            continue
        smaller = small
        fixes.append(f"a smaller job: --width {small.width} --height {small.height} --frames {small.frames}")
        break
    lines.append("It would work with " + ", or ".join(fixes) + ".")
    return NoPlanFits("\n".join(lines), vram_needed=vram_needed, ram_needed=ram_needed, smaller_job=smaller)
