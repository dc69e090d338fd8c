"""TeaCache for Wan2.1: coefficients, a skip schedule known before sampling, and the diffusers hooks.

The light parts (coefficients, schedule) import without torch; the hooks load on first use, so that
`lowvram.job` can validate a TeaCache setting without importing diffusers.
"""

from lowvram.caching.teacache.coefficients import (
    COEFFICIENTS,
    CoefficientChoice,
    ModelCoefficients,
    choose_coefficients,
)
from lowvram.caching.teacache.schedule import (
    CallDecision,
    SkipSchedule,
    TimeEmbedderWeights,
    branches_for,
    build_schedule,
    decide_branch,
    fixed_schedule,
    forced_steps,
    rel_l1_series,
    rescale,
    schedule_from_rel_l1,
    scheduler_timesteps,
    search_threshold,
    time_signal,
)

_LAZY_PREVIEW = ("Preview", "preview", "preview_checkpoint", "preview_for_job", "schedule_for_transformer")

_LAZY = {
    **{name: "planning" for name in _LAZY_PREVIEW},
    "TEACACHE_HOOK": "hook",
    "TEACACHE_BLOCK_HOOK": "hook",
    "TeaCacheConfig": "hook",
    "TeaCacheHook": "hook",
    "TeaCacheState": "hook",
    "apply_teacache": "hook",
    "get_teacache": "hook",
    "remove_teacache": "hook",
    "reset_teacache": "hook",
    "TeaCacheRun": "run",
    "schedule_for_run": "run",
    "teacache_run": "run",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "COEFFICIENTS",
    "CallDecision",
    "CoefficientChoice",
    "ModelCoefficients",
    "SkipSchedule",
    "TimeEmbedderWeights",
    "branches_for",
    "build_schedule",
    "choose_coefficients",
    "decide_branch",
    "fixed_schedule",
    "forced_steps",
    "rel_l1_series",
    "rescale",
    "schedule_from_rel_l1",
    "scheduler_timesteps",
    "search_threshold",
    "time_signal",
    *_LAZY,
]
