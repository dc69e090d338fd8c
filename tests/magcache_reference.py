"""A direct transcription of MagCache4Wan2.1 / MagCache4Wan2.2's decision bookkeeping, for the tests to compare against.

The reference (magcache_generate.py: `init_magcache` and `magcache_forward`) keeps its state on the
model class and counts transformer calls with `cnt`: even calls cond, odd uncond, `num_steps` and the
retention bounds in calls. It assumes two branches; `branches=1` is the same loop with one call per
step and the cond ratios (guidance off). Written with numpy, as the reference is; nothing is shared
with lowvram's implementation.
"""

from __future__ import annotations

import numpy as np


def nearest_interp(src_array, target_length):
    src_length = len(src_array)
    if target_length == 1:
        return np.array([src_array[-1]])
    scale = (src_length - 1) / (target_length - 1)
    mapped_indices = np.round(np.arange(target_length) * scale).astype(int)
    return src_array[mapped_indices]


def init_ratios(published, sample_steps, branches=2):
    """init_magcache: pad the first step with 1.0 per branch, interpolate per branch to the step count."""
    mag_ratios = np.array([1.0] * 2 + list(published))
    if len(mag_ratios) != sample_steps * 2:
        mag_ratio_con = nearest_interp(mag_ratios[0::2], sample_steps)
        mag_ratio_ucon = nearest_interp(mag_ratios[1::2], sample_steps)
        mag_ratios = np.concatenate([mag_ratio_con.reshape(-1, 1), mag_ratio_ucon.reshape(-1, 1)], axis=1).reshape(-1)
    return mag_ratios if branches == 2 else mag_ratios[0::2]


def reference_decisions(published, sample_steps, magcache_thresh, magcache_K, retention_ratio,
                        split_steps=None, mode="t2v", wan21=False, branches=2):
    """Returns [(skip_forward, accumulated_err the decision was made on)] in call order for one video
    (0.0 on retained calls, which leave the accumulators untouched).

    wan21=True: MagCache4Wan2.1's retention rule (`cnt >= int(num_steps * retention_ratio)`);
    else MagCache4Wan2.2's, with split_steps=None for TI2V-5B (its `else` branch) and the high-noise
    expert's step count for A14B in mode "t2v" or "i2v".
    """
    mag_ratios = init_ratios(published, sample_steps, branches)
    num_steps = sample_steps * branches
    split_step = None if split_steps is None else split_steps * branches
    accumulated_err = [0.0] * branches
    accumulated_steps = [0] * branches
    accumulated_ratio = [1.0] * branches
    cnt = 0
    out = []
    for _ in range(num_steps):
        if wan21:
            use_magcache = cnt >= int(num_steps * retention_ratio)
        else:
            use_magcache = True
            if split_step is not None:
                if mode == "i2v":
                    if cnt < int(split_step + (num_steps - split_step) * retention_ratio):
                        use_magcache = False
                else:
                    if cnt < int(split_step * retention_ratio) or (
                        cnt <= ((num_steps - split_step) * retention_ratio + split_step) and cnt >= split_step
                    ):
                        use_magcache = False
            else:
                if cnt < int(num_steps * retention_ratio):
                    use_magcache = False
        skip_forward = False
        k = cnt % branches
        decided_on = accumulated_err[k] if not use_magcache else None
        if use_magcache:
            cur_mag_ratio = mag_ratios[cnt]
            accumulated_ratio[k] = accumulated_ratio[k] * cur_mag_ratio
            accumulated_steps[k] += 1
            cur_skip_err = np.abs(1 - accumulated_ratio[k])
            accumulated_err[k] += cur_skip_err
            decided_on = float(accumulated_err[k])
            if accumulated_err[k] < magcache_thresh and accumulated_steps[k] <= magcache_K:
                skip_forward = True
            else:
                accumulated_err[k] = 0
                accumulated_steps[k] = 0
                accumulated_ratio[k] = 1.0
        out.append((skip_forward, float(decided_on)))
        cnt += 1
        if cnt >= num_steps:
            cnt = 0
            accumulated_ratio = [1.0] * branches
            accumulated_err = [0.0] * branches
            accumulated_steps = [0] * branches
    return out
