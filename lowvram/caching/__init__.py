"""Step skipping: TeaCache and MagCache, one skip schedule per denoiser component, known before sampling.

- setting.py: `CacheSetting`, what a job asks for (light: lowvram.job imports it).
- identity.py: which released model a checkpoint is (from its configs, never its path).
- teacache/, magcache/: each method's data (coefficients, magnitude ratios) and decisions.
- schedule.py: `SkipSchedule` (one component's decisions); plan.py: `CachePlan` (a job's, memoized:
  the preview is the run's), `preview_for_job`; estimate.py: computed calls for the planner (pure).
- hook.py: the diffusers hooks that follow a schedule; session.py: `cache_session` for the runner.
"""

from lowvram.caching.setting import METHODS, CacheSetting

__all__ = ["METHODS", "CacheSetting"]
