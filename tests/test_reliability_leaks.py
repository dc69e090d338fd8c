"""No leaks: ten generations back to back on one loaded demo model (the TUI's case).

RSS is noisy (allocator pools, ffmpeg pipes): measured here single samples rise by up to ~20 MiB and
fall back on the next run, so the check is on the floor (min of the last 3 samples against min of the 3
from the end of the warm-up) with a tolerance of 24 MiB. The count of live torch tensors is exact and
must not grow at all: a kept checkpoint, event or hook state per run shows up there first (a deliberate
per-step checkpoint leak gave +54 tensors over 2 runs).
"""

from __future__ import annotations

from lowvram.bench.leak_check import MIB, leak_loop

RSS_TOLERANCE = 24 * MIB


def test_ten_runs_on_one_loaded_model_do_not_grow(small_job, cpu_plan, tmp_path):
    report = leak_loop(small_job(frames=1), cpu_plan, runs=10, warmup=2, out_dir=tmp_path)
    detail = "\n".join(report.lines())
    assert len(report.samples) == 10
    assert report.tensor_growth <= 0, detail
    assert report.rss_growth <= RSS_TOLERANCE, detail
    assert report.vram_growth <= 0, detail


def test_runs_that_fall_back_every_time_do_not_grow(small_job, cpu_plan, tmp_path):
    """The OOM path: every run is re-placed per the plan, runs out of memory at step 1 and falls back."""
    from lowvram.sampling.faults import FaultPlan

    report = leak_loop(small_job(frames=1), cpu_plan, runs=6, warmup=2, out_dir=tmp_path, faults=FaultPlan.parse("denoise:1"))
    detail = "\n".join(report.lines())
    assert report.tensor_growth <= 0, detail
    assert report.rss_growth <= RSS_TOLERANCE, detail
