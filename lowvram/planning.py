"""Planning a job on this machine: probe it (unless a probe is given), read the model's spec, the stored
calibration and this machine's compile records, and plan. The planning itself is planner.choose.make_plan (pure);
this is its edge with the files and the hardware. What generate, the TUI, profiles and the benches call.
"""

from __future__ import annotations

from typing import Optional

from lowvram.job import Job
from lowvram.models.specs import spec_for_model, with_fused_cached
from lowvram.placement.compile_records import warm_compiles
from planner.calibration import load_calibration
from planner.choose import PlanResult, Preferences, check_job, make_plan
from planner.probe import HardwareProbe, probe_hardware


def plan_for_job(job: Job, probe: Optional[HardwareProbe] = None, prefs: Preferences = Preferences(),
                 calibration=None, cache=None, inputs: bool = True) -> PlanResult:
    """What generate and the TUI call: probe this machine (unless given), read the model's spec, plan."""
    spec = with_fused_cached(spec_for_model(job.model, job.base), job)
    check_job(job, spec, inputs)
    measured = probe is None  # this machine: its compile records count (a what-if machine has none)
    probe = probe if probe is not None else probe_hardware()
    calibration = calibration if calibration is not None else load_calibration()
    tokens = spec.tokens(job.width, job.height, job.frames)
    warm = warm_compiles(spec, tokens, probe.gpu_name) if measured else ()
    # a context-parallel process compiles its blocks at its share of the tokens (the first process's, the larger)
    warm_parallel = tuple((n, warm_compiles(spec, -(-tokens // n), probe.gpu_name))
                          for n in range(2, probe.gpu_count + 1)) if measured and prefs.context_parallel else ()
    return make_plan(probe, spec, job, prefs, calibration, cache=cache, warm_precisions=warm, warm_parallel=warm_parallel)
