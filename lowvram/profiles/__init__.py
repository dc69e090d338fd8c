"""Profiles: versioned TOML files of intent (model, job defaults, planner preferences) shared between machines.

Loading a profile never trusts the plan it carries: `check_profile` re-plans on this machine and says what changed.
"""

from lowvram.profiles.schema import (
    SCHEMA_VERSION,
    JobDefaults,
    MachineFingerprint,
    PlannerPrefs,
    Profile,
)
from lowvram.profiles.toml_io import dumps, load, loads, save
from lowvram.profiles.validate import ProfileError

__all__ = [
    "SCHEMA_VERSION",
    "JobDefaults",
    "MachineFingerprint",
    "PlannerPrefs",
    "Profile",
    "ProfileError",
    "dumps",
    "load",
    "loads",
    "save",
]
