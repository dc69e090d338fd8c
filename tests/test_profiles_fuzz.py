"""Malformed profiles, generated: whatever the file holds, loading gives a Profile or a clear ProfileError."""

from __future__ import annotations

import tomllib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_profiles_io import GOOD  # tests/ is on sys.path under pytest

from lowvram.caching.setting import METHODS, CacheSetting
from lowvram.errors import UserError
from lowvram.profiles import (
    JobDefaults,
    PlannerPrefs,
    Profile,
    ProfileError,
    dumps,
    loads,
)
from lowvram.profiles.check import check_profile
from lowvram.profiles.toml_io import dumps_data
from planner.probe import GIB, synthetic_probe

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
toml_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def load_or_clear_error(text: str) -> None:
    try:
        assert isinstance(loads(text, source="fuzz.toml"), Profile)
    except ProfileError as exc:
        message = str(exc)
        assert message.startswith("profile fuzz.toml") and len(message) > 30, message


@FUZZ
@given(data=st.dictionaries(st.text(max_size=8), toml_values, max_size=5))
def test_writer_round_trips_any_toml_data(data):
    assert tomllib.loads(dumps_data(data)) == data


@FUZZ
@given(cut=st.integers(0, len(GOOD)), start=st.integers(0, len(GOOD)), length=st.integers(0, 40), junk=st.text(max_size=30))
def test_cut_deleted_or_garbled_text(cut, start, length, junk):
    load_or_clear_error(GOOD[:cut])
    load_or_clear_error(GOOD[:start] + GOOD[start + length:])
    load_or_clear_error(GOOD[:start] + junk + GOOD[start:])


def _paths(data, prefix=()):
    for key, value in data.items():
        yield prefix + (key,)
        if isinstance(value, dict):
            yield from _paths(value, prefix + (key,))


GOOD_DATA = tomllib.loads(GOOD)
PATHS = list(_paths(GOOD_DATA))


@FUZZ
@given(path=st.sampled_from(PATHS), value=toml_values, extra_key=st.text(max_size=8))
def test_any_value_at_any_key(path, value, extra_key):
    data = tomllib.loads(GOOD)
    table = data
    for key in path[:-1]:
        table = table[key]
    table[path[-1]] = value
    load_or_clear_error(dumps_data(data))
    table[extra_key] = value  # an extra (usually unknown) key beside it
    load_or_clear_error(dumps_data(data))


@FUZZ
@given(path=st.sampled_from(PATHS))
def test_any_key_removed(path):
    data = tomllib.loads(GOOD)
    table = data
    for key in path[:-1]:
        table = table[key]
    del table[path[-1]]
    load_or_clear_error(dumps_data(data))



# Valid profiles with any in-range values: they round-trip exactly, and checking one on any machine gives
# a verdict or a UserError (an impossible job), never a crash.
opt = lambda s: st.none() | s  # noqa: E731
cache = st.builds(
    CacheSetting,
    method=st.sampled_from(METHODS),
    threshold=opt(st.floats(0.0, 10.0)),
    retention=st.booleans(),
    max_skips=opt(st.integers(1, 50)),
    retention_ratio=opt(st.floats(0.0, 1.0)),
)
job_defaults = st.builds(
    JobDefaults,
    width=opt(st.integers(1, 256).map(lambda k: 16 * k)),
    height=opt(st.integers(1, 256).map(lambda k: 16 * k)),
    frames=opt(st.integers(0, 250).map(lambda k: 4 * k + 1)),
    steps=opt(st.integers(1, 1000)),
    guidance=opt(st.floats(0.0, 50.0)),
    negative_prompt=opt(st.text(max_size=40)),
    fps=opt(st.integers(1, 240)),
    cache=opt(cache),
)
prefs = st.builds(
    PlannerPrefs,
    min_precision=opt(st.sampled_from(["bf16", "fp8", "int8", "int4"])),
    prefer=opt(st.sampled_from(["speed", "quality"])),
    vram_reserve_gib=opt(st.floats(0.0, 8.0)),
    ram_reserve_gib=opt(st.floats(0.0, 8.0)),
    vram_cap_gib=opt(st.floats(0.25, 80.0)),
    ram_cap_gib=opt(st.floats(0.25, 256.0)),
)
profiles = st.builds(
    Profile,
    name=st.text(min_size=1, max_size=30),
    model=st.sampled_from(["wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.1-i2v-14b-480p", "wan2.1-i2v-14b-720p"]),
    description=st.text(max_size=80),
    job=job_defaults,
    planner=prefs,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profile=profiles, vram=st.sampled_from([0, 4, 8, 12, 24, 80]), ram=st.sampled_from([8, 16, 32, 64]))
def test_any_valid_profile_round_trips_and_checks_without_crashing(profile, vram, ram):
    assert loads(dumps(profile)) == profile
    try:
        result = check_profile(profile, synthetic_probe(vram, ram))
    except UserError as exc:
        assert str(exc)
        return
    assert result.status in ("planned", "impossible")
    if result.plan is not None and vram:
        assert result.plan.peak_vram_bytes <= vram * GIB
