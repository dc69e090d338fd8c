"""TeaCache for Wan2.1: the coefficients, which a model gets, and the decisions, from the fp32 timestep embedding.

Light to import (no torch until a signal is computed); the hooks and the run are shared with MagCache
in lowvram.caching.
"""

from lowvram.caching.teacache.coefficients import (
    COEFFICIENTS,
    CoefficientChoice,
    ModelCoefficients,
    choose_coefficients,
)
from lowvram.caching.teacache.schedule import (
    RETENTION_STEPS,
    TimeEmbedderWeights,
    build_schedule,
    decide_branch,
    forced_steps,
    rel_l1_series,
    rescale,
    schedule_from_rel_l1,
    threshold_for_speedup,
    time_signal,
)

__all__ = [
    "COEFFICIENTS",
    "RETENTION_STEPS",
    "CoefficientChoice",
    "ModelCoefficients",
    "TimeEmbedderWeights",
    "build_schedule",
    "choose_coefficients",
    "decide_branch",
    "forced_steps",
    "rel_l1_series",
    "rescale",
    "schedule_from_rel_l1",
    "threshold_for_speedup",
    "time_signal",
]
