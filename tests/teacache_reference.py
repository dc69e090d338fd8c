"""A direct transcription of TeaCache4Wan2.1's decision bookkeeping, for the tests to compare against.

The reference (teacache_generate.py, `teacache_forward`) counts transformer calls with `cnt`: even
calls are cond, odd calls uncond, `ret_steps`/`cutoff_steps` are in calls. It assumes two branches;
`branches=1` is the same loop with one call per step (guidance off).
"""

from __future__ import annotations

import numpy as np


def reference_decisions(signals, coefficients, threshold, use_ret_steps, sample_steps, branches=2):
    """signals[step] is the modulated input of that step (the same tensor for every branch).
    Returns [(should_calc, accumulated_after_call)] in call order."""
    num_steps = sample_steps * branches
    if use_ret_steps:
        ret_steps = 5 * branches
        cutoff_steps = sample_steps * branches
    else:
        ret_steps = 1 * branches
        cutoff_steps = sample_steps * branches - branches
    rescale_func = np.poly1d(coefficients)
    accumulated = [0, 0] if branches == 2 else [0]
    previous = [None] * branches
    cnt = 0
    out = []
    for step in range(sample_steps):
        for _ in range(branches):
            modulated_inp = signals[step]
            k = cnt % branches
            if cnt < ret_steps or cnt >= cutoff_steps:
                should_calc = True
                accumulated[k] = 0
            else:
                accumulated[k] += rescale_func(
                    ((modulated_inp - previous[k]).abs().mean() / previous[k].abs().mean()).cpu().item()
                )
                if accumulated[k] < threshold:
                    should_calc = False
                else:
                    should_calc = True
                    accumulated[k] = 0
            previous[k] = modulated_inp.clone()
            out.append((should_calc, float(accumulated[k])))
            cnt += 1
            if cnt >= num_steps:
                cnt = 0
    return out
