"""One model's benchmark in one process: the all-on-GPU floor, the planner's constants, then the matrix.

Order matters for memory: the model is built on the GPU, measured resident (floor, per-block times,
activation peaks), copied once to pageable host memory, dropped from the GPU, and every capped case then
starts from a fresh module over that host copy.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from lowvram.bench import recipes as R
from lowvram.bench.build import (
    HostCopy,
    build_transformer,
    param_bytes,
    param_count,
    transformer_inputs,
    transformer_on_meta,
)
from lowvram.bench.measure import GIB, CaseResult, Recipe, clean_cuda, run_case
from lowvram.bench.shapes import (
    ACTIVATION_SHAPES,
    RESOLUTIONS,
    TRANSFORMERS,
    BenchCase,
    tokens,
)


def environment() -> dict:
    import importlib.metadata as md

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": version("diffusers"),
        "transformers": version("transformers"),
        "accelerate": version("accelerate"),
        "optimum-quanto": version("optimum-quanto"),
        "mmgp": version("mmgp"),
        "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),  # expandable segments or torch's default
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_total_bytes=props.total_memory, capability=f"{props.major}.{props.minor}")
    try:
        import psutil

        env["ram_total_bytes"] = psutil.virtual_memory().total
    except Exception:
        pass
    return env


class BlockTimer:
    """CUDA events around every transformer block: per-block forward time without extra syncs."""

    def __init__(self, blocks) -> None:
        self.pairs: list = []
        self.handles = []
        for block in blocks:
            self.handles.append(block.register_forward_pre_hook(self._pre))
            self.handles.append(block.register_forward_hook(self._post))

    def _pre(self, module, args):
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        self.pairs.append([start, None])

    def _post(self, module, args, out):
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self.pairs[-1][1] = end

    def reset(self) -> None:
        self.pairs = []

    def seconds(self) -> list[float]:
        torch.cuda.synchronize()
        return [s.elapsed_time(e) / 1000.0 for s, e in self.pairs if e is not None]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _floor_recipe(model, inputs, timer: BlockTimer) -> Recipe:
    kwargs = inputs.kwargs()

    def setup(result: CaseResult):
        def forward():
            timer.reset()
            return model(**kwargs)

        return forward

    return Recipe("all_on_gpu", setup)


def measure_resident(model_key: str, model, resolutions: list[str], warmup: int, iters: dict, log: Callable[[str], None]) -> tuple[dict, dict, list]:
    """Uncapped all-on-GPU step per resolution (the floor), per-block times, activation peaks."""
    floors: dict = {}
    blocks: dict = {}
    activations: list = []
    weights = param_bytes(model)
    timer = BlockTimer(model.blocks)
    try:
        for res in resolutions:
            h, w, f = RESOLUTIONS[res]
            inputs = transformer_inputs(h, w, f)
            base = torch.cuda.memory_allocated()
            r = CaseResult(model_key, res, None, "all_on_gpu", tokens(h, w, f))
            run_case(r, _floor_recipe(model, inputs, timer), warmup=warmup, iters=iters.get(res, 2), log=log)
            floors[res] = r
            if r.step_seconds is not None:
                per_block = timer.seconds()
                blocks[res] = dict(tokens=r.tokens, per_block_seconds=per_block, mean_block_seconds=sum(per_block) / len(per_block), non_block_seconds=r.step_times[-1] - sum(per_block))
                activations.append(dict(tokens=r.tokens, shape=[h, w, f], peak_minus_resident_bytes=r.peak_vram_allocated - base, source="floor run"))
            del inputs
        done = {a["tokens"] for a in activations}
        for h, w, f in ACTIVATION_SHAPES:
            n = tokens(h, w, f)
            if n in done:
                continue
            inputs = transformer_inputs(h, w, f)
            clean_cuda()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            try:
                with torch.no_grad():
                    model(**inputs.kwargs())
                torch.cuda.synchronize()
                activations.append(dict(tokens=n, shape=[h, w, f], peak_minus_resident_bytes=torch.cuda.max_memory_allocated() - base, source="extra forward"))
            except torch.OutOfMemoryError:
                activations.append(dict(tokens=n, shape=[h, w, f], oom=True))
            del inputs
    finally:
        timer.remove()
    activations.sort(key=lambda a: a["tokens"])
    log(f"[{model_key}] weights {weights / GIB:.2f} GiB; activation peaks: " + ", ".join(f"{a['tokens']}: {a.get('peak_minus_resident_bytes', 0) / GIB:.2f} GiB" for a in activations))
    return floors, blocks, activations


def run_matrix(
    model_key: str,
    cases: list[BenchCase],
    recipe_names: tuple[str, ...],
    out_path: Optional[Path] = None,
    warmup: int = 1,
    iters: Optional[dict] = None,
    ram_gib: float = 64.0,
    log: Callable[[str], None] = print,
    floor_resolutions: tuple[str, ...] = ("480p", "720p"),
    plans: tuple[str, ...] = (),
    plans_budget: Optional[float] = None,
    profile: tuple[str, ...] = (),
    profile_dir: Optional[Path] = None,
) -> dict:
    iters = iters or {"480p": 2, "720p": 1}
    started = time.perf_counter()
    data: dict = dict(model=model_key, config={k: list(v) if isinstance(v, tuple) else v for k, v in TRANSFORMERS[model_key].items()}, environment=environment(), ram_gib_for_planner=ram_gib)

    def save():
        if out_path is not None:
            out_path.write_text(json.dumps(data, indent=1, default=str))

    t0 = time.perf_counter()
    model = build_transformer(model_key)
    torch.cuda.synchronize()
    data["build_seconds"] = time.perf_counter() - t0
    data["weights_bytes"] = param_bytes(model)
    data["params"] = param_count(model)
    data["block_bytes"] = param_bytes(model.blocks[0])
    log(f"[{model_key}] built {data['params'] / 1e9:.2f} B params in {data['build_seconds']:.1f}s")

    # the floor (and the planner's per-block times) at every resolution asked, cases or not
    resolutions = sorted({c.resolution for c in cases} | set(floor_resolutions))
    floors, blocks, activations = measure_resident(model_key, model, resolutions, warmup, iters, log)
    data["floor"] = {res: r.to_dict() for res, r in floors.items()}
    data["block_times"] = blocks
    data["activation_peaks"] = activations
    save()

    t0 = time.perf_counter()
    host = HostCopy.of(model, lambda: transformer_on_meta(model_key))
    data["host_copy_seconds"] = time.perf_counter() - t0
    del model
    clean_cuda()

    results: list[CaseResult] = []
    measured_once: dict = {}
    work = [(case, tuple(recipe_names)) for case in sorted(cases, key=lambda c: (c.resolution, c.budget_gib))]
    if plans:
        # each placement kind the runtime supports, forced, under one budget (issue 4's GPU checks)
        work.append((BenchCase(model_key, "480p", plans_budget or 24.0), tuple(f"plan:{p}" for p in plans)))
    for case, names in work:
        h, w, f = RESOLUTIONS[case.resolution]
        inputs = transformer_inputs(h, w, f)
        floor = floors.get(case.resolution)
        for name in names:
            r = CaseResult(model_key, case.resolution, case.budget_gib, name, tokens(h, w, f))
            key = (name, case.resolution)
            if name == "mmgp_p4" and not R.mmgp_available():
                r.skipped = "mmgp is not installed"
            elif name in R.BUDGET_INDEPENDENT and key in measured_once:
                prev = measured_once[key]
                r = copy.deepcopy(prev)
                r.budget_gib = case.budget_gib
                r.notes.append(f"same configuration as at {prev.budget_gib:g} GiB (budget-independent); measured there once")
            else:
                recipe = R.make_recipe(name, host, inputs, model=model_key, resolution=case.resolution, budget_gib=case.budget_gib, ram_gib=ram_gib)
                prof = f"{name}@{case.budget_gib:g}" in profile or name in profile
                run_case(r, recipe, warmup=warmup, iters=iters.get(case.resolution, 2), log=log, profile_to=(profile_dir / f"profile-{model_key}-{case.resolution}-{name.replace(':', '_')}-{case.budget_gib:g}.txt") if prof and profile_dir else None)
                if name in R.BUDGET_INDEPENDENT and r.step_seconds is not None:
                    measured_once[key] = r
            if floor is not None and floor.step_seconds and r.step_seconds:
                r.ratio = r.step_seconds / floor.step_seconds
            results.append(r)
            data["cases"] = [x.to_dict() for x in results]
            save()
        del inputs
    data["host_bytes"] = host.nbytes
    data["total_seconds"] = time.perf_counter() - started
    save()
    return data
