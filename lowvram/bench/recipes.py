"""The placements the benchmark compares, each as a `Recipe` over a fresh module from a `HostCopy`.

Upstream recipes are applied exactly as a user would write them with diffusers 0.42 / accelerate:
- block_stream: `enable_group_offload(offload_type="block_level", num_blocks_per_group=1, use_stream=True)`
- leaf_stream: `enable_group_offload(offload_type="leaf_level", use_stream=True)`
- model_offload: what `enable_model_cpu_offload` puts on each component, accelerate's `cpu_offload_with_hook`;
  here the whole transformer is moved in for each forward and out after it (the hook's offload).
- mmgp_p4: mmgp's profile 4, only when mmgp is installed.
lowvram's recipe asks the planner for a plan at the budget and applies it with `lowvram.placement`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Optional

import torch

from lowvram.bench.build import HostCopy, TransformerInputs
from lowvram.bench.measure import CaseResult, Recipe

UPSTREAM = ("block_stream", "leaf_stream", "model_offload", "mmgp_p4")
ALL_RECIPES = ("resident",) + UPSTREAM + ("lowvram",)
# Recipes whose configuration does not depend on the budget: measured once at the smallest budget that
# fits, the result stands for the larger budgets of the same resolution (saves GPU time, same numbers).
BUDGET_INDEPENDENT = ("block_stream", "leaf_stream")


@dataclass
class BenchPipe:
    """Just enough of a pipeline for `lowvram.placement` and the runner's loop: the components, by name, and
    the pipeline settings the loop reads (one denoiser, no expert boundary, one timestep per frame)."""

    transformer: Any = None
    text_encoder: Any = None
    image_encoder: Any = None
    vae: Any = None
    transformer_2: Any = None
    config: Any = field(default_factory=lambda: SimpleNamespace(boundary_ratio=None, expand_timesteps=False))


class _Holder:
    """Keeps the case's module alive between setup and teardown, and drops it after."""

    def __init__(self) -> None:
        self.module = None
        self.pipe = None
        self.hook = None

    def clear(self) -> None:
        self.module = self.pipe = self.hook = None


def _forward(module, inputs: TransformerInputs) -> Callable[[], Any]:
    kwargs = inputs.kwargs()
    return lambda: module(**kwargs)


def resident(host: HostCopy, inputs: TransformerInputs, device: str = "cuda") -> Recipe:
    h = _Holder()

    def setup(result: CaseResult):
        h.module = host.fresh().to(device)
        return _forward(h.module, inputs)

    return Recipe("resident", setup, h.clear)


def group_offload(host: HostCopy, inputs: TransformerInputs, level: str, device: str = "cuda", use_stream: Optional[bool] = None) -> Recipe:
    if level not in ("block_level", "leaf_level"):
        raise ValueError(f"level must be block_level or leaf_level, got {level!r}")
    stream = (device != "cpu") if use_stream is None else use_stream
    h = _Holder()

    def setup(result: CaseResult):
        h.module = host.fresh()
        kwargs = dict(onload_device=torch.device(device), offload_device=torch.device("cpu"), offload_type=level, use_stream=stream)
        if level == "block_level":
            kwargs["num_blocks_per_group"] = 1
        h.module.enable_group_offload(**kwargs)
        result.notes.append(f"diffusers enable_group_offload({level}{', blocks/group 1' if level == 'block_level' else ''}, use_stream={stream})")
        return _forward(h.module, inputs)

    name = ("block" if level == "block_level" else "leaf") + ("_stream" if stream else "")
    return Recipe(name, setup, h.clear)


def model_offload(host: HostCopy, inputs: TransformerInputs, device: str = "cuda") -> Recipe:
    from accelerate import cpu_offload_with_hook

    h = _Holder()

    def setup(result: CaseResult):
        h.module = host.fresh()
        h.module, h.hook = cpu_offload_with_hook(h.module, execution_device=torch.device(device))
        result.notes.append("accelerate cpu_offload_with_hook (enable_model_cpu_offload's hook); model moved in per forward, offloaded after")
        run = _forward(h.module, inputs)

        def forward():
            out = run()
            h.hook.offload()
            return out

        return forward

    def teardown():
        if h.hook is not None:
            h.hook.remove()
        h.clear()

    return Recipe("model_offload", setup, teardown)


def mmgp_available() -> bool:
    return importlib.util.find_spec("mmgp") is not None


def mmgp_profile4(host: HostCopy, inputs: TransformerInputs, device: str = "cuda") -> Recipe:
    h = _Holder()

    def setup(result: CaseResult):
        if not mmgp_available():
            raise ModuleNotFoundError("mmgp is not installed")
        from mmgp import offload, profile_type

        h.module = host.fresh()
        h.pipe = {"transformer": h.module}
        offload.profile(h.pipe, profile_type.LowRAM_LowVRAM)  # profile 4
        return _forward(h.module, inputs)

    return Recipe("mmgp_p4", setup, h.clear)


def bench_job(model: str, resolution: str, steps: int = 50):
    from lowvram.bench.shapes import MODEL_NAMES, RESOLUTIONS
    from lowvram.job import Job

    height, width, frames = RESOLUTIONS[resolution]
    return Job(prompt="benchmark", model=MODEL_NAMES[model], width=width, height=height, frames=frames, steps=steps)


def bench_probe(budget_gib: float, ram_gib: float):
    """A probe of this machine's GPU (its name and capability: the planner's time model) with the budget
    as its VRAM, all free, as a card of that size would be."""
    from planner.probe import synthetic_probe

    name, cc = None, None
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        cc = torch.cuda.get_device_capability(0)
    return synthetic_probe(vram_gib=budget_gib, ram_gib=ram_gib, gpu_name=name or "what-if GPU", compute_capability=cc or (8, 6))


def lowvram_plan(model: str, resolution: str, budget_gib: float, ram_gib: float):
    """lowvram's plan for this matrix cell: the planner on a probe of this GPU with the budget as VRAM."""
    from lowvram.planning import plan_for_job

    return plan_for_job(bench_job(model, resolution), probe=bench_probe(budget_gib, ram_gib), inputs=False).plan


def forced_plan(text: str, model: str, resolution: str, budget_gib: float, ram_gib: float, device: str = "cuda"):
    """A plan of a given kind ("QUANT:KIND[:RESIDENT_BLOCKS]", e.g. "int8:block_offload", "bf16:partial:20"),
    with the planner's predictions for it: to check each placement kind the runtime supports."""
    from dataclasses import replace

    from lowvram.bench.shapes import MODEL_NAMES
    from planner.estimate import predict
    from planner.plan import simple_plan
    from lowvram.models.specs import spec_for_model
    from planner.timing import throughput_for

    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"plan {text!r}: write QUANT:KIND or bf16:partial:K (e.g. int8:block_offload)")
    quant, kind = parts[0], parts[1]
    resident_blocks = int(parts[2]) if len(parts) == 3 else 0
    plan = simple_plan(device, quant, kind, resident_blocks=resident_blocks, reasons=(f"bench: forced {text}",))
    job = bench_job(model, resolution)
    stages, seconds = predict(plan, spec_for_model(MODEL_NAMES[model]), job, throughput_for(bench_probe(budget_gib, ram_gib)))
    return replace(plan, predicted=stages, predicted_seconds=seconds)


def predicted_stage_vram(plan, stage: str = "denoise") -> Optional[int]:
    for peak in plan.predicted:
        if peak.stage == stage:
            return peak.vram_bytes
    return plan.peak_vram_bytes or None


def lowvram(host: HostCopy, inputs: TransformerInputs, model: str, resolution: str, budget_gib: float, ram_gib: float, plan=None) -> Recipe:
    from lowvram import placement

    h = _Holder()

    def setup(result: CaseResult):
        p = plan if plan is not None else lowvram_plan(model, resolution, budget_gib, ram_gib)
        result.plan = p.summary()
        result.predicted_peak_vram = predicted_stage_vram(p)
        h.pipe = BenchPipe(transformer=host.fresh())
        placement.prepare(h.pipe, p)
        placement.enter_stage(h.pipe, p, "denoise")
        return _forward(h.pipe.transformer, inputs)

    def teardown():
        if h.pipe is not None:
            placement.leave_all(h.pipe)
        h.clear()

    return Recipe("lowvram", setup, teardown)


def make_recipe(name: str, host: HostCopy, inputs: TransformerInputs, *, model: str, resolution: str, budget_gib: float, ram_gib: float, device: str = "cuda") -> Recipe:
    if name.startswith("plan:"):
        plan = forced_plan(name[len("plan:"):], model, resolution, budget_gib, ram_gib, device)
        recipe = lowvram(host, inputs, model, resolution, budget_gib, ram_gib, plan=plan)
        recipe.name = name
        return recipe
    if name == "resident":
        return resident(host, inputs, device)
    if name == "block_stream":
        return group_offload(host, inputs, "block_level", device)
    if name == "leaf_stream":
        return group_offload(host, inputs, "leaf_level", device)
    if name == "model_offload":
        return model_offload(host, inputs, device)
    if name == "mmgp_p4":
        return mmgp_profile4(host, inputs, device)
    if name == "lowvram":
        return lowvram(host, inputs, model, resolution, budget_gib, ram_gib)
    raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(ALL_RECIPES)}")
