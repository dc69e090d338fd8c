"""The Plan: what the planner decides and the runtime applies. Plain frozen data, no torch.

A plan holds one `ComponentPlan` per component the model has (text encoder, image encoder, one or two
denoisers, VAE), each with its own precision and placement. A two-expert Wan2.2 model has two
denoisers: `transformer` (the high-noise expert) and `transformer_2` (the low-noise expert); each runs
in its own phase of the denoise stage and says where it waits while the other one runs (`idle`).

More than one GPU (planner.multi_gpu):
- `ComponentPlan.devices` names the GPUs a component's weights are on ("cuda:0", "cuda:1"); empty = the
  plan's device (GPU 0). A denoiser on two devices is split by layers: blocks [0, split[0]) on devices[0],
  the rest on devices[1] (its other modules on devices[0]); a second expert on "cuda:1" is one expert per card.
- `Plan.parallel` ("ulysses" | "ring") runs the denoisers with diffusers' context parallelism, one process
  per GPU (`parallel_gpus` of them), each holding the plan's components as a one-GPU plan would.
A plan without these keys is a one-GPU plan (profiles and resume files written before them read as such).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import Literal, Optional

# Weight precisions, highest first. "fp32"/"bf16" are compute dtypes; "fp8"/"int8"/"int4" are quanto
# weight-only storage levels (compute in bf16: they save memory, not time); "stored" keeps a single-file
# checkpoint's own format (fp8, GGUF: upcast layer by layer while computing). "fp8_fast"/"int8_fast" are
# torchao's dynamic-activation levels: the blocks' matmuls themselves run in fp8 / int8 (fast only compiled).
Precision = Literal["fp32", "bf16", "stored", "fp8", "int8", "fp8_fast", "int8_fast", "int4"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "stored", "fp8", "int8", "fp8_fast", "int8_fast", "int4")
Quant = Literal["bf16", "fp8", "int8", "int4"]  # the levels a user may set as the lowest allowed
QUANT_LEVELS: tuple[str, ...] = ("fp8", "int8", "int4")  # quanto, weight-only
FAST_LEVELS: tuple[str, ...] = ("fp8_fast", "int8_fast")  # torchao, weights and activations
# The storage level of a fast level: what --min-precision compares it with (its weights are 8-bit too).
FAST_STORAGE: dict[str, str] = {"fp8_fast": "fp8", "int8_fast": "int8"}

DenoiserPlacement = Literal["resident", "partial", "block_offload", "leaf_offload", "disk_offload"]
DENOISER_PLACEMENTS: tuple[str, ...] = ("resident", "partial", "block_offload", "leaf_offload", "disk_offload")
PLACEMENTS: dict[str, tuple[str, ...]] = {
    "denoiser": DENOISER_PLACEMENTS,
    "text_encoder": ("gpu", "offload", "cpu"),  # "offload": block-level group offload WITHOUT streams
    "image_encoder": ("gpu", "cpu"),
    "vae": ("gpu", "gpu_tiled", "cpu"),
}
# Where an expert of a two-expert model waits while the other one runs:
# "pinned": its streamed weights stay in page-locked RAM for the whole run (the fastest switch, the most RAM);
# "mmap": it waits in its weights file (memory-mapped: page cache, no process RAM); its streamed part is
#         pinned when its phase starts and released when it ends.
IDLE_PLACES: tuple[str, ...] = ("pinned", "mmap")
# How a denoiser carries the job's LoRAs: "" (none for it), "fused" (merged into its weights before they are
# quantized and placed: no cost per step), "unfused" (kept as small adapters resident on the GPU while the
# base weights are placed as planned: VRAM and time each step, nothing re-quantized).
LORA_MODES: tuple[str, ...] = ("", "fused", "unfused")

STAGES: tuple[str, ...] = ("load", "encode", "denoise", "decode")
# Context parallelism (diffusers' ContextParallelConfig): ulysses splits the heads (they must divide by the GPU
# count), ring passes key/value chunks around (any head count; needs an attention kernel that returns its LSE).
PARALLEL_KINDS: tuple[str, ...] = ("ulysses", "ring")
# The phases of the denoise stage of a two-expert model, and the denoiser that runs in each.
PHASE_OF: dict[str, str] = {"transformer": "high", "transformer_2": "low"}
PHASE_LABEL: dict[str, str] = {"high": "high-noise expert", "low": "low-noise expert"}


def component_label(name: str, two_experts: bool = False) -> str:
    """How people call a component: 'high-noise expert' for a two-expert model's transformer, 'VAE', ..."""
    if name == "transformer":
        return "high-noise expert" if two_experts else "transformer"
    return {"transformer_2": "low-noise expert", "text_encoder": "text encoder", "image_encoder": "image encoder",
            "vae": "VAE"}.get(name, name)


def role_of(name: str) -> str:
    """'denoiser' for transformer / transformer_2; otherwise the component's own name."""
    return "denoiser" if name.startswith("transformer") else name


def compute_dtype(precision: str) -> str:
    """The torch dtype name a component of this precision computes (and, unquantized, is held) in."""
    return "float32" if precision == "fp32" else "bfloat16"


@dataclass(frozen=True)
class ComponentPlan:
    """How one component is held and where it runs.

    Denoisers: `placement` is resident | partial (the first `resident_blocks` blocks stay on the GPU, the
    rest are streamed) | block_offload (`blocks_per_group` blocks a group) | leaf_offload | disk_offload;
    `use_stream` overlaps copies with compute; `compile`: its repeated blocks are compiled (regional
    compile, lowvram.placement.compile; not under leaf_offload, whose per-layer hooks break the graph).
    Text encoder: gpu | offload (no streams) | cpu. Image encoder: gpu | cpu. VAE: gpu | gpu_tiled | cpu, fp32 or (on the GPU) bf16.
    `idle`: see IDLE_PLACES ("" for a single denoiser).
    """

    name: str
    precision: str = "bf16"
    placement: str = "gpu"
    resident_blocks: int = 0
    blocks_per_group: int = 1
    use_stream: bool = True
    idle: str = ""
    compute_dtype: str = ""  # "" follows the precision (float32 for fp32, else bfloat16); "float32" for CPU plans
    compile: bool = False
    lora: str = ""  # denoisers: see LORA_MODES
    devices: tuple[str, ...] = ()  # "" = the plan's device; see the module docstring
    split: tuple[int, ...] = ()  # a layer split: the block index where each next device starts

    def __post_init__(self) -> None:
        for name, kind in (("name", str), ("precision", str), ("placement", str), ("resident_blocks", int),
                           ("blocks_per_group", int), ("use_stream", bool), ("idle", str), ("compute_dtype", str),
                           ("compile", bool), ("lora", str)):
            value = getattr(self, name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise TypeError(f"component {self.name!r}: {name} must be a {kind.__name__}, got {value!r}")
        for name, kind in (("devices", str), ("split", int)):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
                raise TypeError(f"component {self.name!r}: {name} must be a list of {kind.__name__}s, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        self._check_devices()
        if self.precision not in PRECISIONS:
            raise ValueError(f"{self.name}: precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        allowed = PLACEMENTS.get(self.role)
        if allowed is None:
            raise ValueError(f"unknown component {self.name!r}; expected one of transformer, transformer_2, "
                             f"{', '.join(k for k in PLACEMENTS if k != 'denoiser')}")
        if self.placement not in allowed:
            raise ValueError(f"{self.name}: placement {self.placement!r} is not one of {', '.join(allowed)}")
        if self.resident_blocks < 0:
            raise ValueError(f"{self.name}: resident_blocks must be >= 0, got {self.resident_blocks}")
        if self.blocks_per_group < 1:
            raise ValueError(f"{self.name}: blocks_per_group must be >= 1, got {self.blocks_per_group}")
        if self.placement != "partial" and self.resident_blocks:
            raise ValueError(f"{self.name}: resident_blocks is only meaningful for placement 'partial'")
        if self.idle and self.idle not in IDLE_PLACES:
            raise ValueError(f"{self.name}: idle {self.idle!r} is not one of {', '.join(IDLE_PLACES)}")
        if self.compute_dtype not in ("", "float32", "bfloat16"):
            raise ValueError(f"{self.name}: compute_dtype {self.compute_dtype!r} is not float32 or bfloat16")
        if self.precision in QUANT_LEVELS and self.role not in ("denoiser", "text_encoder"):
            raise ValueError(f"{self.name}: only the denoisers and the text encoder can be quantized")
        if self.precision in FAST_LEVELS and self.role != "denoiser":
            raise ValueError(f"{self.name}: {self.precision} (fp8/int8 matmuls) is for the denoisers only; "
                             "use int8 for a smaller text encoder")
        if self.precision in FAST_LEVELS and self.dtype != "bfloat16":
            raise ValueError(f"{self.name}: {self.precision} computes in bfloat16; leave compute_dtype empty")
        if self.role == "vae" and (self.precision not in ("fp32", "bf16") or (self.precision == "bf16" and self.placement == "cpu")):
            raise ValueError(f"{self.name}: the VAE decodes in fp32, or in bf16 on the GPU (half the memory); "
                             f"got {self.precision} {self.placement}")
        if self.compile and self.role != "denoiser":
            raise ValueError(f"{self.name}: compile applies to the denoisers' repeated blocks only")
        if self.compile and self.placement == "leaf_offload":
            raise ValueError(f"{self.name}: compile does not work under leaf_offload (a hook on every layer breaks "
                             "the compiled block into pieces that torch recompiles per layer); use block_offload "
                             "or partial with compile, or leaf_offload without it")
        if self.lora not in LORA_MODES or self.lora and self.role != "denoiser":
            raise ValueError(f"{self.name}: lora {self.lora!r} is not one of fused, unfused (denoisers only) or empty")

    def _check_devices(self) -> None:
        for d in self.devices:
            kind, _, index = d.partition(":")
            if not (kind == "cuda" and index.isdigit() or kind == "cpu" and (index == "" or index.isdigit())):
                raise ValueError(f"{self.name}: device {d!r} is not 'cuda:N' (or 'cpu:N' in a CPU plan)")
        if len(set(self.devices)) != len(self.devices) and not all(d == "cpu" for d in self.devices):
            raise ValueError(f"{self.name}: devices {list(self.devices)} name a GPU twice")
        if len(self.devices) > 1:
            if self.role != "denoiser" or self.placement != "resident":
                raise ValueError(f"{self.name}: only a resident denoiser can be split across devices "
                                 f"(got {self.placement} {self.role})")
            if len(self.split) != len(self.devices) - 1:
                raise ValueError(f"{self.name}: {len(self.devices)} devices need {len(self.devices) - 1} split point(s), "
                                 f"got {list(self.split)}")
            if any(b <= a for a, b in zip((0,) + self.split, self.split)):
                raise ValueError(f"{self.name}: split points must be increasing block indices > 0, got {list(self.split)}")
        elif self.split:
            raise ValueError(f"{self.name}: split {list(self.split)} needs two devices or more, got {list(self.devices)}")

    @property
    def role(self) -> str:
        return role_of(self.name)

    @property
    def layer_split(self) -> bool:
        return len(self.devices) > 1

    def block_devices(self, num_blocks: int) -> tuple[str, ...]:
        """The device of each block of a layer split (blocks past the last split point are on the last device)."""
        if not self.layer_split:
            raise ValueError(f"{self.name} is not split across devices")
        if self.split[-1] >= num_blocks:
            raise ValueError(f"{self.name}: split at block {self.split[-1]} but the model has {num_blocks} blocks")
        out, d = [], 0
        for i in range(num_blocks):
            while d < len(self.split) and i >= self.split[d]:
                d += 1
            out.append(self.devices[d])
        return tuple(out)

    @property
    def dtype(self) -> str:
        """The torch dtype it computes in (and holds its unquantized weights in)."""
        return self.compute_dtype or compute_dtype(self.precision)

    @property
    def quantized(self) -> bool:
        """Its weights are quantized at load (quanto's weight-only levels or torchao's fast levels)."""
        return self.precision in QUANT_LEVELS or self.precision in FAST_LEVELS

    @property
    def fast(self) -> bool:
        """Its matmuls run in fp8 / int8 (torchao dynamic activation quantization)."""
        return self.precision in FAST_LEVELS

    @property
    def streamed(self) -> bool:
        """Some of its weights are copied in while it computes (group offload hooks)."""
        return self.role == "denoiser" and self.placement != "resident" or self.placement == "offload"

    def describe_placement(self) -> str:
        p = self.placement
        if self.role != "denoiser":
            return {"gpu": "on the GPU", "gpu_tiled": "on the GPU, tiled", "cpu": "on the CPU",
                    "offload": "offloaded block by block (no streams)"}[p]
        if p == "resident":
            return "resident on the GPU"
        stream = "with streams" if self.use_stream else "without streams"
        if p == "partial":
            blocks = "block" if self.resident_blocks == 1 else "blocks"
            return f"{self.resident_blocks} {blocks} resident, the rest streamed {stream}"
        if p == "block_offload":
            per = "block" if self.blocks_per_group == 1 else "blocks"
            return f"block-level group offload ({self.blocks_per_group} {per}/group) {stream}"
        if p == "leaf_offload":
            return f"leaf-level group offload {stream}"
        return "streamed from disk"

    def words(self) -> str:
        """What the plan does with it, without its name: 'bf16 on the GPU', 'on the GPU, tiled', ..."""
        if self.role == "denoiser":
            return self.describe()
        if self.role == "text_encoder" or (self.role == "vae" and self.precision != "fp32"):
            return f"{self.precision} {self.describe_placement()}" + _on(self)
        return self.describe_placement() + _on(self)

    def describe_devices(self) -> str:
        """'' on the plan's device; 'blocks 0-19 on cuda:0, 20-39 on cuda:1' for a split; 'on cuda:1' otherwise."""
        if not self.devices:
            return ""
        if not self.layer_split:
            return f"on {self.devices[0]}"
        starts = (0,) + self.split
        parts = [f"blocks {a}-{b - 1} on {d}" for a, b, d in zip(starts, self.split, self.devices)]
        parts.append(f"blocks {starts[-1]}+ on {self.devices[-1]}")
        return ", ".join(parts)

    def describe(self) -> str:
        """'bf16 26 blocks resident, ..., compiled; waits in pinned RAM'."""
        text = f"{self.precision} {self.describe_placement()}"
        if self.compile:
            text += ", compiled"
        if self.devices:
            text += f" ({self.describe_devices()})"
        if self.lora:
            text += "; " + LORA_LABEL[self.lora]
        if self.idle:
            text += "; waits " + ("in pinned RAM" if self.idle == "pinned" else "in its weights file (memory-mapped)")
        return text


LORA_LABEL = {"fused": "LoRA fused into its weights", "unfused": "LoRA adapters resident on the GPU"}


@dataclass(frozen=True)
class LoraRecord:
    """A LoRA of the job as the plan applies it (the file is the job's): for the sidecar and the explanation."""

    name: str
    sha256: str
    scale: float
    expert: str  # "both", "high", "low" ("both" on a one-expert model)
    fused: bool

    def describe(self) -> str:
        where = "" if self.expert in ("", "both") else f" @{self.expert}"
        return f"{self.name} x{self.scale:g}{where}: {'fused' if self.fused else 'adapters'}"


@dataclass(frozen=True)
class StagePeak:
    """Predicted (or measured) peaks of one stage (or one phase of the denoise stage), in bytes; time in seconds."""

    stage: str
    vram_bytes: int
    ram_bytes: int
    seconds: float = 0.0
    phase: str = ""  # "high" / "low" for the denoise phases of a two-expert model
    vram_per_gpu: tuple[int, ...] = ()  # bytes on each GPU (index = cuda:N) when the plan uses several; vram_bytes is their max

    def __post_init__(self) -> None:
        object.__setattr__(self, "vram_per_gpu", tuple(self.vram_per_gpu))

    @property
    def key(self) -> str:
        """'denoise:high' for a phase, else the stage name: the key of the measured peaks too."""
        return f"{self.stage}:{self.phase}" if self.phase else self.stage

    @property
    def label(self) -> str:
        return f"{self.stage} ({PHASE_LABEL.get(self.phase, self.phase)})" if self.phase else self.stage


@dataclass(frozen=True)
class Plan:
    """A complete placement decision for one job on one machine.

    `device` is "cuda" or "cpu"; on "cpu" every component runs on the CPU. `predicted` holds one
    StagePeak per stage (and per denoise phase); the plan's peak is the max over them because stages
    run one after another and components leave the GPU when their stage (or phase) ends.
    """

    device: str = "cpu"
    components: tuple[ComponentPlan, ...] = ()
    predicted: tuple[StagePeak, ...] = ()
    predicted_seconds: float = 0.0
    reasons: tuple[str, ...] = ()
    source: str = "planner"  # "planner", "placeholder", "forced", "profile", "fallback"
    loras: tuple[LoraRecord, ...] = ()  # the job's LoRAs as applied (ComponentPlan.lora decides; this records)
    parallel: str = ""  # "" (one process) or a PARALLEL_KINDS context parallelism across `parallel_gpus` processes
    parallel_gpus: int = 1

    def __post_init__(self) -> None:
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError(f"a plan names each component once, got {names}")
        if not isinstance(self.parallel_gpus, int) or isinstance(self.parallel_gpus, bool):
            raise TypeError(f"parallel_gpus must be a whole number, got {self.parallel_gpus!r}")
        if self.parallel:
            if self.parallel not in PARALLEL_KINDS:
                raise ValueError(f"parallel {self.parallel!r} is not one of {', '.join(PARALLEL_KINDS)} (or empty)")
            if self.parallel_gpus < 2:
                raise ValueError(f"context parallelism ({self.parallel}) needs parallel_gpus >= 2, got {self.parallel_gpus}")
            if self.parallel == "ring" and self.device != "cuda":
                raise ValueError("ring attention needs CUDA (its attention kernel returns the log-sum-exp); use ulysses")
            if any(c.devices for c in self.components):
                raise ValueError("a context-parallel plan places each process on its own GPU: leave the components' devices empty")
        elif self.parallel_gpus != 1:
            raise ValueError(f"parallel_gpus {self.parallel_gpus} without a parallel kind: set parallel, or parallel_gpus 1")
        for c in self.components:
            # a CPU plan may name "devices" cpu:0, cpu:1: the multi-GPU code paths then run on the CPU (the tests)
            if self.device == "cpu" and any(not d.startswith("cpu") for d in c.devices):
                raise ValueError(f"{c.name}: a CPU plan cannot place it on {', '.join(c.devices)}")
            if self.device == "cuda" and any(d.startswith("cpu") for d in c.devices):
                raise ValueError(f"{c.name}: devices of a GPU plan are cuda:N (placement 'cpu' puts a component on the CPU)")

    # --- access -------------------------------------------------------------------------------------

    def get(self, name: str) -> Optional[ComponentPlan]:
        return next((c for c in self.components if c.name == name), None)

    def component(self, name: str) -> ComponentPlan:
        found = self.get(name)
        if found is None:
            raise KeyError(f"the plan has no {name!r} (it has {', '.join(c.name for c in self.components) or 'nothing'})")
        return found

    @cached_property  # read tens of thousands of times while the planner weighs its candidates
    def denoisers(self) -> tuple[ComponentPlan, ...]:
        return tuple(c for c in self.components if c.role == "denoiser")

    @cached_property
    def two_experts(self) -> bool:
        return len(self.denoisers) > 1

    def device_of(self, name: str) -> str:
        """Where a component runs during its stage: its first device, else the plan's (GPU 0 on a GPU plan)."""
        cp = self.get(name)
        if cp is None or cp.placement == "cpu":
            return "cpu"
        if cp.devices:
            return cp.devices[0]
        return "cpu" if self.device == "cpu" else "cuda:0"

    @property
    def gpus(self) -> tuple[int, ...]:
        """The GPU indices the plan uses: one per process of a context-parallel plan; () on the CPU."""
        if self.device != "cuda":
            return ()
        if self.parallel:
            return tuple(range(self.parallel_gpus))
        used = {0}
        for c in self.components:
            used |= {int(d[5:]) for d in c.devices if d.startswith("cuda:")}
        return tuple(sorted(used))

    @property
    def gpu_count(self) -> int:
        return max(1, len(self.gpus)) if self.device == "cuda" else 0

    @property
    def experts_apart(self) -> bool:
        """Two experts on different GPUs: both stay on their cards for the whole denoise stage (no switch)."""
        return self.two_experts and len({self.device_of(c.name) for c in self.denoisers}) > 1

    def with_component(self, new: ComponentPlan) -> "Plan":
        """The plan with one component replaced (matched by name)."""
        self.component(new.name)
        return replace(self, components=tuple(new if c.name == new.name else c for c in self.components))

    # --- peaks --------------------------------------------------------------------------------------

    @property
    def peak_vram_bytes(self) -> int:
        return max((s.vram_bytes for s in self.predicted), default=0)

    @property
    def peak_vram_per_gpu(self) -> tuple[int, ...]:
        """The predicted peak on each GPU the plan uses (one entry for a one-GPU plan)."""
        n = max((len(s.vram_per_gpu) for s in self.predicted), default=0)
        if n == 0:
            return (self.peak_vram_bytes,) if self.device == "cuda" else ()
        return tuple(max((s.vram_per_gpu[i] if i < len(s.vram_per_gpu) else (s.vram_bytes if i == 0 else 0))
                         for s in self.predicted) for i in range(n))

    @property
    def peak_ram_bytes(self) -> int:
        return max((s.ram_bytes for s in self.predicted), default=0)

    def stage_seconds(self, stage: str) -> float:
        return sum(s.seconds for s in self.predicted if s.stage == stage)

    # --- words --------------------------------------------------------------------------------------

    def summary(self) -> str:
        if self.device == "cpu" and not self.parallel and not any(c.devices for c in self.components):
            precisions = sorted({c.precision for c in self.components}) or ["fp32"]
            lora = next((LORA_LABEL[c.lora] for c in self.denoisers if c.lora), "")
            return f"everything on the CPU ({'/'.join(precisions)})" + (f"; {lora}" if lora else "")
        parts = []
        if self.parallel:
            where = "GPUs" if self.device == "cuda" else "CPU processes"
            parts.append(f"context parallel ({self.parallel}) on {self.parallel_gpus} {where}")
        for c in self.components:
            text = c.words()
            if self.device == "cpu" and c.role == "denoiser":  # a CPU plan's denoiser is "resident" on the CPU
                text = text.replace("on the GPU", "on the CPU")
            parts.append(f"{component_label(c.name, self.two_experts)} {text}")
        return "; ".join(parts)

    # --- serialisation ------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        """A Plan from to_dict()'s output. Raises TypeError/ValueError naming what is wrong."""
        if not isinstance(data, dict):
            raise TypeError(f"a plan is an object, got a {type(data).__name__}")
        data = dict(data)
        if "transformer_quant" in data or "text_encoder_quant" in data:
            raise ValueError("this plan was written by lowvram before plans had one entry per component; "
                             "write it again with `lowvram plan --json`")
        components = data.get("components", ())
        if not isinstance(components, (list, tuple)) or not all(isinstance(c, dict) for c in components):
            raise TypeError("'components' must be a list of objects")
        data["components"] = tuple(ComponentPlan(**c) for c in components)  # lists of devices become tuples there
        data["predicted"] = tuple(StagePeak(**s) for s in data.get("predicted", ()))
        data["reasons"] = tuple(data.get("reasons", ()))
        data["loras"] = tuple(LoraRecord(**r) if isinstance(r, dict) else r for r in data.get("loras", ()))
        return cls(**data)


def _on(c: ComponentPlan) -> str:
    return f" ({c.describe_devices()})" if c.devices else ""


def config_key(plan: Plan) -> tuple:
    """What a plan decides, without its predictions and reasons (a loaded model with other LoRAs differs)."""
    return (plan.device, plan.components, plan.loras, plan.parallel, plan.parallel_gpus)


def one_gpu(plan: Plan) -> Plan:
    """The plan with everything on one GPU (GPU 0) and one process: the same placements otherwise (a layer-split
    denoiser becomes resident on GPU 0: the fallback ladder then leans it). Predictions are dropped."""
    components = tuple(replace(c, devices=(), split=()) for c in plan.components)
    if plan.two_experts and plan.device == "cuda":
        # on one GPU the experts take turns: the idle one waits pinned when streamed, else in its file
        components = tuple(replace(c, idle=c.idle or ("pinned" if c.streamed else "mmap")) if c.role == "denoiser" else c
                           for c in components)
    return replace(plan, components=components, parallel="", parallel_gpus=1, predicted=(), predicted_seconds=0.0)


def describe_change(old: Plan, new: Plan) -> str:
    """What differs between two plans, in words: 'VAE gpu -> gpu_tiled'."""
    changes = []
    if old.device != new.device:
        changes.append(f"device {old.device} -> {new.device}")
    if (old.parallel, old.parallel_gpus) != (new.parallel, new.parallel_gpus):
        said = {True: lambda p: f"context parallel ({p.parallel}) on {p.parallel_gpus} GPUs", False: lambda p: "one process"}
        changes.append(f"{said[bool(old.parallel)](old)} -> {said[bool(new.parallel)](new)}")
    for c in new.components:
        before = old.get(c.name)
        if before is None or before == c:
            continue
        label = component_label(c.name, old.two_experts)
        if before.precision != c.precision:
            changes.append(f"{label} weights {before.precision} -> {c.precision}")
        if (before.placement, before.resident_blocks, before.blocks_per_group, before.use_stream) != (
                c.placement, c.resident_blocks, c.blocks_per_group, c.use_stream):
            if c.role == "denoiser":
                changes.append(f"{label} {before.describe_placement()} -> {c.describe_placement()}")
            else:
                changes.append(f"{label} {before.placement} -> {c.placement}")
        if before.idle != c.idle:
            changes.append(f"{label} waits {before.idle or '-'} -> {c.idle or '-'}")
        if before.compile != c.compile:
            changes.append(f"{label} {'compiled' if c.compile else 'no longer compiled'}")
        if before.lora != c.lora:
            changes.append(f"{label} LoRA {before.lora or '-'} -> {c.lora or '-'}")
        if (before.devices, before.split) != (c.devices, c.split):
            changes.append(f"{label} {before.describe_devices() or 'on GPU 0'} -> {c.describe_devices() or 'on GPU 0'}")
    return "; ".join(changes) or "no change"


def simple_plan(device: str = "cuda", precision: str = "bf16", placement: str = "resident", *, resident_blocks: int = 0,
                blocks_per_group: int = 1, use_stream: bool = True, compile: bool = False, text_encoder: str = "",
                text_encoder_precision: str = "", vae: str = "", source: str = "forced",
                reasons: tuple[str, ...] = (), components: tuple[str, ...] = ("text_encoder", "transformer", "vae")) -> Plan:
    """A plan from a few settings (benchmarks, tests, forced plans): every denoiser alike, the encoders and VAE
    as given (by default "gpu": the compute device, which on a CPU plan is the CPU: the same code paths run
    there as on a GPU). Fit it to a model with `fit_to`."""
    cpu = device == "cpu"
    text_encoder = text_encoder or "gpu"
    vae = vae or "gpu"
    out = []
    for name in components:
        role = role_of(name)
        # CPU plans compute in float32, quanto's quantized weights included (torchao's fast levels: bfloat16)
        compute = "float32" if cpu and precision not in FAST_LEVELS else ""
        if role == "denoiser":
            out.append(ComponentPlan(name, precision, placement, resident_blocks, blocks_per_group, use_stream,
                                     compute_dtype=compute, compile=compile))
        elif role == "text_encoder":
            te_precision = text_encoder_precision or (precision if precision in ("fp32", "bf16") else "bf16")
            compute = "float32" if cpu else ""
            out.append(ComponentPlan(name, te_precision, text_encoder, compute_dtype=compute))
        elif role == "vae":
            out.append(ComponentPlan(name, "fp32", vae))
        else:
            out.append(ComponentPlan(name, "fp32", "gpu"))
    return Plan(device=device, components=plain(out), source=source, reasons=reasons)


def fit_to(plan: Plan, names: tuple[str, ...]) -> Plan:
    """The plan with exactly the components `names` (a model's): missing ones follow the plan (a second
    expert like the first, encoders and VAE on the plan's device), extra ones are dropped. Lets a plan
    written for one model (a forced plan, a resume file, a test's CPU plan) run another of its kind."""
    have = {c.name: c for c in plan.components}
    first = plan.denoisers[0] if plan.denoisers else ComponentPlan("transformer", "bf16", "resident")
    on = "cpu" if plan.device == "cpu" else "gpu"
    out = []
    for name in names:
        if name in have:
            out.append(have[name])
        elif role_of(name) == "denoiser":
            out.append(replace(first, name=name))
        elif name == "text_encoder":
            out.append(ComponentPlan(name, first.precision if first.precision in ("fp32", "bf16") else "bf16", on))
        else:
            out.append(ComponentPlan(name, "fp32", on))
    components = plain(out)
    return plan if components == plan.components else replace(plan, components=components)


def with_loras(plan: Plan, loras: tuple = (), default: str = "unfused") -> Plan:
    """The plan with its LoRA decisions for the job's `loras` (lowvram.loras.LoraSpec): each denoiser a LoRA
    applies to keeps its mode, or gets `default` when the plan has none (a forced or test plan); the others
    get none; and one LoraRecord per LoRA. A plan without LoRAs comes back without any."""
    names = {c.name for c in plan.denoisers}
    two = len(names) > 1
    targets = {name for lora in loras for name in lora.components(two) if name in names}
    components = tuple(
        replace(c, lora=(c.lora or default) if c.name in targets else "") if c.role == "denoiser" else c
        for c in plan.components
    )
    modes = {c.name: c.lora for c in components}
    records = tuple(
        LoraRecord(lora.name, lora.sha256, float(lora.scale), lora.expert or "both",
                   all(modes.get(n) == "fused" for n in lora.components(two) if n in names))
        for lora in loras
    )
    if components == plan.components and records == plan.loras:
        return plan
    return replace(plan, components=components, loras=records)


def plain(components: list[ComponentPlan]) -> tuple[ComponentPlan, ...]:
    """Components in pipeline order: encoders, denoisers, VAE (how plans print and compare)."""
    order = {"text_encoder": 0, "image_encoder": 1, "transformer": 2, "transformer_2": 3, "vae": 4}
    return tuple(sorted(components, key=lambda c: order.get(c.name, 9)))


__all__ = [
    "ComponentPlan", "DENOISER_PLACEMENTS", "FAST_LEVELS", "FAST_STORAGE", "IDLE_PLACES", "LORA_MODES", "LoraRecord",
    "PARALLEL_KINDS", "PHASE_LABEL", "PHASE_OF", "PLACEMENTS", "PRECISIONS", "component_label", "one_gpu",
    "Plan", "QUANT_LEVELS", "Quant", "STAGES", "StagePeak", "compute_dtype", "config_key", "describe_change", "plain",
    "role_of", "fit_to", "simple_plan", "with_loras",
]
