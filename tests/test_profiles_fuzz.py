"""Malformed profiles, generated: whatever the file holds, loading gives a Profile or a clear ProfileError."""

from __future__ import annotations

import tomllib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowvram.profiles import Profile, ProfileError, loads
from lowvram.profiles.toml_io import dumps_data
from test_profiles_io import GOOD  # tests/ is on sys.path under pytest

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

