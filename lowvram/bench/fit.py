"""Fit the planner's constants (planner/constants.py) from benchmark JSON: what the numbers should be.

Pure arithmetic over measured results and the planner's own FLOP and byte counts, so a refit after a
new run is one call: `fit({"1.3b": <matrix json>, "14b": <matrix json>}, <components json>)` (there is
no CLI subcommand). It returns values; a person copies them into planner/constants.py with the run they
came from.
"""

from __future__ import annotations

from typing import Optional

from lowvram.bench.shapes import MODEL_NAMES


def _solve2(a11, a12, a21, a22, b1, b2) -> tuple[float, float]:
    det = a11 * a22 - a12 * a21
    return (b1 * a22 - a12 * b2) / det, (a11 * b2 - a21 * b1) / det


def activation_fit(points: list[tuple[int, int, int, int]]) -> tuple[float, float]:
    """Least squares of bytes = tokens * (a * dim + b * ffn) over (tokens, dim, ffn, bytes) points."""
    s11 = s12 = s22 = r1 = r2 = 0.0
    for tokens, dim, ffn, y in points:
        x1, x2 = tokens * dim, tokens * ffn
        s11 += x1 * x1
        s12 += x1 * x2
        s22 += x2 * x2
        r1 += x1 * y
        r2 += x2 * y
    return _solve2(s11, s12, s12, s22, r1, r2)


def streamed_block_seconds(step: float, floor: float, n_blocks: int, block_bytes: int, h2d_pinned: float) -> float:
    """S in  step = n * (max(c, k) + S),  c = floor / n,  k = block bytes / pinned B/s: the fixed cost of a
    streamed block (planner.constants.STREAMED_BLOCK_SECONDS)."""
    c = floor / n_blocks
    k = block_bytes / h2d_pinned
    return step / n_blocks - max(c, k)


def leaf_fit(cases: list[tuple[float, float, int, int, int]], h2d_pinned: float) -> tuple[float, float]:
    """(LEAF_INTERFERENCE, LEAF_HOOK_SECONDS) from two (step, floor, n_blocks, block_bytes, leaves) cases:
    step = n * (max(c, k) + I * min(c, k)) + leaves * H."""
    rows = []
    for step, floor, n, block, leaves in cases:
        c, k = floor / n, block / h2d_pinned
        rows.append((n * min(c, k), leaves, step - n * max(c, k)))
    (a11, a12, b1), (a21, a22, b2) = rows[:2]
    return _solve2(a11, a12, a21, a22, b1, b2)


def _case(data: dict, recipe: str, resolution: str = "480p") -> Optional[dict]:
    for c in data.get("cases", []):
        if c["recipe"] == recipe and c["resolution"] == resolution and c.get("step_seconds"):
            return c
    return None


def fit(models: dict[str, dict], components: Optional[dict]) -> dict:
    """models: {"1.3b": matrix json, "14b": matrix json}. Returns {constant: value} plus the evidence."""
    from planner import constants as C
    from planner import memory as M
    from planner import timing as T
    from lowvram.models.specs import spec_for_model

    out: dict = {"evidence": {}}
    pinned = components["h2d"]["pinned"] if components and "h2d" in components else C.H2D_PINNED_DATACENTER
    if components and "h2d" in components:
        out["H2D_PINNED_DATACENTER"] = components["h2d"]["pinned"]
        out["PAGEABLE_OVER_PINNED"] = components["h2d"]["pageable"] / components["h2d"]["pinned"]
    act_points, eff, interference, leaf_cases = [], [], [], []
    tflops = None
    for key, data in models.items():
        spec = spec_for_model(MODEL_NAMES[key])
        gpu = data.get("environment", {}).get("gpu")
        tflops, _ = T.gpu_datasheet_tflops(gpu)
        for a in data.get("activation_peaks", []):
            if "peak_minus_resident_bytes" in a:
                act_points.append((a["tokens"], spec.dims.dim, spec.dims.ffn_dim, a["peak_minus_resident_bytes"]))
        for res, floor in data.get("floor", {}).items():
            if floor.get("step_seconds"):
                e = T.transformer_flops(spec, floor["tokens"]) / (floor["step_seconds"] * tflops * 1e12)
                eff.append(e)
                out["evidence"][f"efficiency {key} {floor['tokens']} tokens"] = e
        floor = data.get("floor", {}).get("480p", {}).get("step_seconds")
        block = M.block_bytes(spec.transformer, "bf16")
        n = spec.dims.num_layers
        bs = _case(data, "block_stream")
        if floor and bs:
            i = streamed_block_seconds(bs["step_seconds"], floor, n, block, pinned)
            interference.append(i)
            out["evidence"][f"streamed block seconds {key}"] = i
        lf = _case(data, "leaf_stream")
        if floor and lf:
            leaf_cases.append((lf["step_seconds"], floor, n, block, spec.transformer.whole.leaves))
    if act_points:
        out["ACT_BYTES_PER_TOKEN_DIM"], out["ACT_BYTES_PER_TOKEN_FFN"] = activation_fit(act_points)
        a, b = out["ACT_BYTES_PER_TOKEN_DIM"], out["ACT_BYTES_PER_TOKEN_FFN"]
        worst = max(abs(t * (a * d + b * f) / y - 1) for t, d, f, y in act_points)
        out["evidence"]["activation fit worst error"] = worst
    if eff:
        out["MATMUL_EFFICIENCY"] = sum(eff) / len(eff)
    if interference:
        out["STREAMED_BLOCK_SECONDS"] = sum(interference) / len(interference)
    if len(leaf_cases) >= 2:
        out["LEAF_INTERFERENCE"], out["LEAF_HOOK_SECONDS"] = leaf_fit(leaf_cases, pinned)
    return out
