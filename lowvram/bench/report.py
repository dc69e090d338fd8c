"""Turn benchmark JSON into the markdown tables of docs/benchmarks.md. Pure formatting, no torch."""

from __future__ import annotations

from typing import Iterable, Optional

from lowvram.bench.shapes import PREDICTION_TOLERANCE, TARGETS

GIB = 1024**3


def fmt_gib(n: Optional[float]) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def fmt_s(s: Optional[float]) -> str:
    return "-" if s is None else f"{s:.3f}"


def fmt_ratio(r: Optional[float]) -> str:
    return "-" if r is None else f"x{r:.3f}"


def status(case: dict) -> str:
    if case.get("skipped"):
        return f"skipped: {case['skipped']}"
    if case.get("oom"):
        return "OOM"
    if case.get("error"):
        return "error: " + case["error"][:80]
    return "ok"


def prediction_error(case: dict, measured: str = "peak_vram_reserved") -> Optional[float]:
    """Measured over predicted - 1: against what torch reserved from the driver (what a card must hold) or,
    with measured="peak_vram_allocated", against the live tensors the planner's memory model counts."""
    pred, meas = case.get("predicted_peak_vram"), case.get(measured)
    if not pred or not meas or case.get("oom") or case.get("error"):
        return None
    return meas / pred - 1.0


def target_verdict(case: dict) -> str:
    """'met' / 'MISSED' against issue 8's target for lowvram's case, '' where no target applies."""
    if case.get("recipe") != "lowvram":
        return ""
    target = TARGETS.get((case["model"], case["resolution"], case.get("budget_gib")))
    checks = []
    if target is not None:
        ok = case.get("ratio") is not None and case["ratio"] <= target
        checks.append(f"ratio <= {target}: {'met' if ok else 'MISSED'}")
    err = prediction_error(case)
    if err is not None:
        alloc = prediction_error(case, "peak_vram_allocated")
        verdict = lambda e: "met" if abs(e) <= PREDICTION_TOLERANCE else "MISSED"  # noqa: E731
        checks.append(f"pred ±{PREDICTION_TOLERANCE:.0%}: reserved {verdict(err)}, allocated {verdict(alloc)}")
    budget = case.get("budget_gib")
    if budget is not None and case.get("peak_vram_reserved") is not None and not case.get("oom"):
        checks.append("peak <= budget: " + ("met" if case["peak_vram_reserved"] <= budget * GIB else "MISSED"))
    if case.get("oom"):
        checks.append("zero OOM: MISSED")
    return "; ".join(checks)


HEADER = "| res | budget GiB | recipe | step s | vs all-on-GPU | peak VRAM reserved / allocated GiB | predicted GiB (err vs reserved / allocated) | peak RSS GiB | result | target |"
RULE = "|---|---|---|---|---|---|---|---|---|---|"


def case_row(case: dict) -> str:
    budget = "uncapped" if case.get("budget_gib") is None else f"{case['budget_gib']:g}"
    err = prediction_error(case)
    pred = fmt_gib(case.get("predicted_peak_vram"))
    if err is not None:
        pred += f" ({err:+.1%} / {prediction_error(case, 'peak_vram_allocated'):+.1%})"
    peak = f"{fmt_gib(case.get('peak_vram_reserved'))} / {fmt_gib(case.get('peak_vram_allocated'))}"
    return f"| {case['resolution']} | {budget} | {case['recipe']} | {fmt_s(case.get('step_seconds'))} | {fmt_ratio(case.get('ratio'))} | {peak} | {pred} | {fmt_gib(case.get('peak_rss'))} | {status(case)} | {target_verdict(case)} |"


def matrix_table(data: dict) -> str:
    rows = [HEADER, RULE]
    for res, floor in sorted(data.get("floor", {}).items()):
        floor = dict(floor, ratio=1.0 if floor.get("step_seconds") else None)
        rows.append(case_row(floor))
    for case in data.get("cases", []):
        rows.append(case_row(case))
    return "\n".join(rows)


def plans_list(data: dict) -> str:
    seen = []
    for case in data.get("cases", []):
        if case.get("recipe") == "lowvram" and case.get("plan"):
            seen.append(f"- {case['resolution']} @ {case['budget_gib']:g} GiB: {case['plan']}")
    return "\n".join(seen)


def notes_list(data: dict) -> str:
    """Each recipe's notes once (they repeat across budgets)."""
    out = []
    for case in data.get("cases", []):
        for note in case.get("notes", []):
            line = f"- {case['recipe']}: {note}"
            if line not in out:
                out.append(line)
    return "\n".join(out)


def block_table(data: dict) -> str:
    rows = ["| tokens | mean block s | non-block s | blocks |", "|---|---|---|---|"]
    for res, b in sorted(data.get("block_times", {}).items(), key=lambda kv: kv[1]["tokens"]):
        rows.append(f"| {b['tokens']} | {b['mean_block_seconds']:.4f} | {b['non_block_seconds']:.4f} | {len(b['per_block_seconds'])} |")
    return "\n".join(rows)


def activation_table(data: dict) -> str:
    rows = ["| tokens | (h, w, frames) | activation peak GiB (peak allocated - resident) |", "|---|---|---|"]
    for a in data.get("activation_peaks", []):
        val = "OOM" if a.get("oom") else fmt_gib(a.get("peak_minus_resident_bytes"))
        rows.append(f"| {a['tokens']} | {tuple(a['shape'])} | {val} |")
    return "\n".join(rows)


def environment_line(env: dict) -> str:
    keys = ("gpu", "torch", "cuda", "diffusers", "transformers", "accelerate", "optimum-quanto", "mmgp")
    return ", ".join(f"{k} {env.get(k) or 'not installed'}" for k in keys)


def model_section(data: dict, command: str = "") -> str:
    parts = [
        f"### Wan2.1 {data['model'].upper()} transformer ({data['params'] / 1e9:.2f} B params, {fmt_gib(data['weights_bytes'])} GiB weights, {fmt_gib(data['block_bytes'])} GiB/block)",
        "",
        f"Device: {environment_line(data.get('environment', {}))}.",
    ]
    if command:
        parts += ["", f"Command: `{command}`"]
    parts += ["", matrix_table(data)]
    plans = plans_list(data)
    if plans:
        parts += ["", "lowvram's plans:", plans]
    notes = notes_list(data)
    if notes:
        parts += ["", "Notes:", notes]
    parts += ["", "Per-block forward time (all on GPU, CUDA events):", "", block_table(data), "", "Activation peak vs tokens:", "", activation_table(data)]
    return "\n".join(parts)


def components_section(data: dict, command: str = "") -> str:
    parts = ["### Components and bandwidth", "", f"Device: {environment_line(data.get('environment', {}))}."]
    if command:
        parts += ["", f"Command: `{command}`"]
    bw = data.get("h2d")
    if bw:
        parts += ["", f"Host to device copy of {bw['size_bytes'] / GIB:.0f} GiB: pinned {bw['pinned'] / 1e9:.1f} GB/s, pageable {bw['pageable'] / 1e9:.1f} GB/s; device to pageable host {bw['d2h_pageable'] / 1e9:.1f} GB/s."]
    u = data.get("umt5")
    if u:
        parts += ["", f"UMT5-XXL encoder ({u['dtype']}): {u['params'] / 1e9:.2f} B params, weights {fmt_gib(u['weights_bytes'])} GiB, peak above weights {fmt_gib(u['peak_bytes'])} GiB at {u['tokens']} tokens, {u['seconds']:.3f} s per prompt."]
    v = data.get("vae")
    if v:
        parts += ["", f"Wan VAE decode ({v['dtype']}, weights {fmt_gib(v['weights_bytes'])} GiB), peak above weights and latents:", "", "| (h, w, frames) | tiled | peak GiB | seconds |", "|---|---|---|---|"]
        for p in v["points"]:
            parts.append(f"| {tuple(p['shape'])} | {p['tiled']} | {'OOM' if p.get('oom') else fmt_gib(p['peak_bytes'])} | {fmt_s(p.get('seconds'))} |")
    return "\n".join(parts)


def e2e_section(data: dict, command: str = "") -> str:
    base, mine = data["all_on_gpu"], data["lowvram"]
    parts = [f"### End to end: Wan2.1 {data['model'].upper()} {data['resolution']}, {data['steps']} steps (CFG: 2 transformer calls a step), lowvram @ {data['budget_gib']:g} GiB", ""]
    if data.get("environment"):
        parts += [f"Device: {environment_line(data['environment'])}.", ""]
    if command:
        parts += [f"Command: `{command}`", ""]
    parts += ["| run | plan | load s | encode s | denoise s | decode s | end to end s | vs all-on-GPU | peak VRAM reserved GiB per stage (predicted) [while components move in/out] |", "|---|---|---|---|---|---|---|---|---|"]
    for run in (base, mine):
        st = run["stages"]
        cell = lambda k: "-" if k not in st else ("OOM" if st[k].get("oom") else f"{st[k]['seconds']:.2f}")  # noqa: E731
        den = "-" if run.get("denoise_seconds") is None else f"{run['denoise_seconds']:.1f}"
        peaks = ", ".join(f"{k} {fmt_gib(v.get('peak_vram_reserved'))}" + (f" ({fmt_gib(v['predicted_vram'])})" if v.get("predicted_vram") else "") + (f" [moving in {fmt_gib(v['enter_peak_vram_reserved'])}]" if v.get("enter_peak_vram_reserved") else "") for k, v in st.items())
        ratio = "x1.000" if run is base and run.get("e2e_seconds") else fmt_ratio(run.get("ratio"))
        e2e = "-" if run.get("e2e_seconds") is None else f"{run['e2e_seconds']:.1f}"
        parts.append(f"| {run['recipe']} | {run['plan']} | {cell('load')} | {cell('encode')} | {den} | {cell('decode')} | {e2e} | {ratio} | {peaks} |")
    for run in (base, mine):
        if run.get("composed"):
            parts += ["", f"{run['recipe']}: {run['composed']}."]
    return "\n".join(parts)


def teacache_section(data: dict, command: str = "") -> str:
    parts = [f"### TeaCache timing: Wan2.1 {data['model'].upper()} 480p, {data['steps']} steps, {data['plan']} @ {data['budget_gib']:g} GiB", ""]
    if command:
        parts += [f"Command: `{command}`", ""]
    ok = abs(data["ratio_to_expected"] - 1.0) <= 0.05
    parts += [
        "| no cache s | computed steps | with TeaCache s | expected (N/50 of no cache) s | ratio | within 5% | block bytes moved on skipped calls | on computed calls |",
        "|---|---|---|---|---|---|---|---|",
        f"| {data['no_cache_seconds']:.1f} | {data['computed_steps_actual']} of {data['steps']} | {data['cached_seconds']:.1f} | {data['expected_seconds']:.1f} | x{data['ratio_to_expected']:.3f} | {'yes' if ok else 'NO'} | {data['block_bytes_moved_on_skipped_calls']} | {fmt_gib(data['block_bytes_moved_on_computed_calls'])} GiB |",
    ]
    return "\n".join(parts)


def cache_section(data: dict, command: str = "") -> str:
    """Issue 14's target: the measured speed-up is at least TARGET x (total calls / computed calls)."""
    parts = [f"### Step skipping: Wan2.1 {data['model'].upper()} {data['resolution']}, {data['steps']} steps @ {data['budget_gib']:g} GiB", ""]
    if command or data.get("command"):
        parts += [f"Command: `{command or data['command']}`", ""]
    parts += [
        "| plan | cache | no cache s | with cache s | computed calls | ideal (calls / computed) | measured speed-up | measured / ideal | >= "
        f"{data['target']:g} | block bytes on skipped calls |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in data["runs"]:
        for method, m in run["methods"].items():
            parts.append(
                f"| {run['plan']} | {method}{' (fixed schedule)' if m.get('schedule') == 'fixed' else ''} | {run['no_cache_seconds']:.1f} | {m['seconds']:.1f} | {m['computed_calls']} of {m['calls']} | "
                f"x{m['ideal_speedup']:.2f} | x{m['speedup']:.2f} | {m['ratio_to_ideal']:.3f} | {'yes' if m['meets_target'] else 'NO'} | "
                f"{m['block_bytes_moved_on_skipped_calls']} |"
            )
    return "\n".join(parts)


def render(datas: Iterable[dict], command: str = "") -> str:
    out = []
    for d in datas:
        kind = d.get("kind")
        if kind == "components":
            out.append(components_section(d, command))
        elif kind == "e2e":
            out.append(e2e_section(d, command))
        elif kind == "teacache":
            out.append(teacache_section(d, command))
        elif kind == "cache":
            out.append(cache_section(d, command))
        elif kind == "fast":
            out.append(fast_section(d, command or d.get("command", "")))
        elif kind == "lora":
            from lowvram.bench.lora import lora_section

            out.append(lora_section(d))
        else:
            out.append(model_section(d, command))
    return "\n\n".join(out) + "\n"


# --- `lowvram bench fast` (issue 13) ---------------------------------------------------------------------------


def _verdict(ok: Optional[bool]) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")


def _pred(case: dict) -> str:
    pred, meas = case.get("predicted_step_seconds"), case.get("step_seconds")
    if not pred or not meas:
        return "-"
    return f"{pred:.3f} / {meas:.3f} ({meas / pred - 1:+.0%})"


def fast_rows(data: dict) -> list[dict]:
    """One row per table case: lowvram's plan, the bf16-only plan, the upstream recipes, the checks."""
    from lowvram.bench.fast import BF16_ONLY_TARGET, FAST_TARGETS, STEP_PREDICTION_TOLERANCE

    rows = []
    for model, m in data.get("models", {}).items():
        upstream = [u for u in m.get("upstream", []) if u.get("ratio")]
        for (mm, res, budget), target in FAST_TARGETS.items():
            if mm != model:
                continue
            pick = lambda kind: next((c for c in m.get("cases", []) if c.get("kind") == kind  # noqa: E731
                                      and c["resolution"] == res and c["budget_gib"] == budget), None)
            plan, bf16 = pick("planner"), pick("bf16_only")
            if plan is None and bf16 is None:
                continue
            ups = upstream if res == "480p" else []
            best = min(ups, key=lambda u: u["ratio"]) if ups else None
            ratio = plan.get("ratio") if plan else None
            checks = {
                "target": None if ratio is None else ratio <= target,
                "bf16_only": None if not bf16 or bf16.get("ratio") is None else bf16["ratio"] <= BF16_ONLY_TARGET,
                "beats_upstream": None if ratio is None or best is None else ratio < best["ratio"],
            }
            for key, case in (("prediction", plan), ("prediction_bf16_only", bf16)):
                p, s = (case or {}).get("predicted_step_seconds"), (case or {}).get("step_seconds")
                checks[key] = None if not p or not s else abs(s / p - 1) <= STEP_PREDICTION_TOLERANCE
            rows.append(dict(model=model, resolution=res, budget_gib=budget, target=target, plan=plan, bf16=bf16,
                             best_upstream=best, checks=checks))
    return rows


def fast_section(data: dict, command: str = "") -> str:
    from lowvram.bench.fast import BF16_ONLY_TARGET

    parts = ["### Compile and fp8/int8 matmuls against eager bf16 (issue 13)", "",
             f"Device: {environment_line(data.get('environment', {}))}, torchao {data.get('environment', {}).get('torchao')}."]
    if command:
        parts += ["", f"Command: `{command}`"]
    parts += ["", f"| case | lowvram plan | step s | vs eager bf16 (target) | bf16-only plan vs eager (<= {BF16_ONLY_TARGET}) "
              "| best upstream | beats upstream | predicted / measured step s (lowvram; bf16-only) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in fast_rows(data):
        plan, bf16, best, c = r["plan"] or {}, r["bf16"] or {}, r["best_upstream"], r["checks"]
        up = f"{best['recipe']} {fmt_ratio(best['ratio'])}" if best else "- (480p only)"
        parts.append(
            f"| {r['model']} {r['resolution']} @ {r['budget_gib']:g} GiB | {plan.get('plan') or status(plan) if plan else '-'} "
            f"| {fmt_s(plan.get('step_seconds'))} | {fmt_ratio(plan.get('ratio'))} (<= {r['target']}: {_verdict(c['target'])}) "
            f"| {fmt_ratio(bf16.get('ratio'))} ({_verdict(c['bf16_only'])}) | {up} | {_verdict(c['beats_upstream'])} "
            f"| {_pred(plan)}; {_pred(bf16)} |")
    e2e = data.get("e2e")
    if e2e:
        parts += ["", f"End to end {e2e['model']} {e2e['resolution']} @ {e2e['budget_gib']:g} GiB, {e2e['steps']} steps with CFG: "
                      f"{e2e['plan_seconds']:.0f} s vs {e2e['floor_seconds']:.0f} s eager bf16 = x{e2e['ratio']:.3f} "
                      f"(target <= {e2e['target']}: {_verdict(e2e['ratio'] <= e2e['target'])}); {e2e['note']}; "
                      f"compile warm-up {e2e['compile_seconds']:.0f} s, quantizing {e2e.get('quantize_seconds', 0.0):.0f} s (a first run)."]
        second = e2e.get("second_run")
        if second:
            parts[-1] += (f" A second run (the graph in inductor's cache, compile {second['compile_seconds']:.0f} s): "
                          f"{second['plan_seconds']:.0f} s = x{second['ratio']:.3f} ({_verdict(second['ratio'] <= e2e['target'])}).")
    parts += ["", "| model | resident: eager bf16 step s | compiled bf16 | compiled fast level | compile warm-up s | "
                  "per-forward error vs bf16 | FFN matmuls vs bf16 (compiled) | upstream (ratio to eager bf16) |",
              "|---|---|---|---|---|---|---|---|"]
    for model, m in data.get("models", {}).items():
        floor = m.get("floor", {}).get("480p", {})
        res = m.get("resident", {})
        comp = ", ".join(f"{k} {fmt_ratio(v.get('step_seconds') / floor['step_seconds']) if v.get('step_seconds') and floor.get('step_seconds') else '-'}"
                         for k, v in res.items())
        warm = ", ".join(f"{k} {v['warmup_extra_seconds']:.0f}" for k, v in res.items() if v.get("warmup_extra_seconds") is not None)
        errs = ", ".join(f"{k} {v:.2%}" if isinstance(v, float) else f"{k} {v}" for k, v in m.get("errors", {}).items())
        ffn = ", ".join(f"{k} x{v['factor']:.2f} (err {v['error']:.2%})" if "factor" in v else f"{k} {v.get('error_message', '-')}"
                        for k, v in m.get("ffn", {}).items() if k != "bf16")
        ups = ", ".join(f"{u['recipe']} {fmt_ratio(u.get('ratio'))}" if u.get("ratio") else f"{u['recipe']} {status(u)}"
                        for u in m.get("upstream", []))
        parts.append(f"| {model} | {fmt_s(floor.get('step_seconds'))} | {comp.split(', ')[0] if comp else '-'} | "
                     f"{', '.join(comp.split(', ')[1:]) or '-'} | {warm or '-'} | {errs or '-'} | {ffn or '-'} | {ups or '-'} |")
    return "\n".join(parts)
