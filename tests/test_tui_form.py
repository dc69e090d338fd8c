"""The job form's parsing: the same rules as the CLI, each problem attributed to its field."""

from __future__ import annotations

import pytest

from lowvram.caching.setting import CacheSetting
from lowvram.job import Job
from tui.form import (
    FormErrors,
    default_job,
    job_from_values,
    preset_for,
    values_from_job,
)


def test_round_trip_keeps_every_setting(tmp_path, image_file):
    job = Job(prompt="a dog runs", model="tiny-random-i2v", negative_prompt="blur", image=str(image_file), width=1280, height=720,
              frames=33, steps=12, guidance=4.5, seed=7, out=str(tmp_path / "a.mp4"), cache=CacheSetting("teacache", speedup=1.5))
    values = values_from_job(job)
    assert values["preset"] == "720p" and values["teacache_mode"] == "speedup"
    assert job_from_values(values) == job


def test_demo_defaults_are_small_and_real_models_get_480p():
    assert (default_job().width, default_job().height, default_job().steps) == (256, 144, 8)
    real = default_job("wan2.1-t2v-1.3b")
    assert preset_for(real.width, real.height) == "480p" and real.frames == 81


@pytest.mark.parametrize(
    "changes, field, words",
    [
        (dict(prompt=" "), "prompt", "prompt is empty"),
        (dict(width="100"), "width", "multiple of 16"),
        (dict(frames="6"), "frames", "4k+1"),
        (dict(steps="0"), "steps", "at least 1"),
        (dict(seed="x"), "seed", "whole number"),
        (dict(guidance="-1"), "guidance", ">= 0"),
        (dict(teacache_mode="threshold", teacache_value="11"), "teacache_value", "between 0 and 10"),
        (dict(teacache_mode="speedup", teacache_value=""), "teacache_value", "a number"),
        (dict(model="nope"), "model", "not a known model name"),
        (dict(out="/no/such/dir/a.mp4"), "out", "does not exist"),
    ],
)
def test_each_bad_field_is_named(changes, field, words):
    values = values_from_job(default_job().with_(prompt="a cat"))
    values.update(changes)
    with pytest.raises(FormErrors) as info:
        job_from_values(values)
    assert words in info.value.errors[field]
    assert info.value.exit_code == 2
