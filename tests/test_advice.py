"""Advice before anything loads: model traits from names, image-shaped sizes, trained-range warnings,
"did you mean", the GPU a what-if VRAM implies, and the planner's suggestions for a slow plan."""

from __future__ import annotations

import pytest

from lowvram.job import Job
from lowvram.models.advice import model_traits, range_warnings, size_for_image
from lowvram.models.names import did_you_mean
from planner.choose import NoPlanFits, Preferences, make_plan
from planner.probe import synthetic_probe
from lowvram.models.specs import spec_for_model
from planner.suggest import is_slow, suggest
from planner.timing import infer_gpu


@pytest.mark.parametrize(
    "name, task, size, trained",
    [
        ("wan2.1-t2v-1.3b", "t2v", "1.3b", ("480p",)),
        ("Wan-AI/Wan2.1-T2V-14B-Diffusers", "t2v", "14b", ("480p", "720p")),
        ("wan2.1-i2v-14b-720p", "i2v", "14b", ("720p",)),
        ("tiny-random-i2v", "i2v", None, ()),
        ("someone/some-video-model", None, None, ()),
    ],
)
def test_model_traits_from_names(name, task, size, trained):
    traits = model_traits(name)
    assert (traits.task, traits.size, traits.trained_at) == (task, size, trained)


def test_a_local_folder_says_its_task(demo_i2v_path):
    assert model_traits(str(demo_i2v_path)).task == "i2v"


@pytest.mark.parametrize("image, area, size", [((1024, 1024), 832 * 480, (624, 624)), ((1920, 1080), 832 * 480, (832, 464)),
                                                ((480, 832), 832 * 480, (480, 832)), ((64, 48), 256 * 144, (208, 160))])
def test_size_for_image_keeps_the_shape_in_multiples_of_16(image, area, size):
    assert size_for_image(*image, area) == size


def test_range_warnings_only_outside_the_trained_range():
    assert range_warnings(Job(prompt="x", model="wan2.1-t2v-14b", width=1280, height=720)) == []
    assert [t for t, _ in range_warnings(Job(prompt="x", model="wan2.1-t2v-1.3b", width=1280, height=720, frames=241))] == ["size", "frames"]
    assert range_warnings(Job(prompt="x", model="tiny-random", width=1280, height=720, frames=241)) == []


def test_did_you_mean():
    assert did_you_mean("tiny-randon") == "tiny-random"
    assert did_you_mean("T2V-1.3B") == "wan2.1-t2v-1.3b"
    assert did_you_mean("completely-different") is None


@pytest.mark.parametrize("vram, cc, name", [(8, None, "RTX 3070"), (12, (8, 9), "RTX 4070"), (16, None, "RTX 4060 Ti"),
                                             (24, None, "RTX 3090"), (23.5, (8, 9), "RTX 4090"), (80, (9, 0), "H100")])
def test_infer_gpu_takes_the_slowest_card_of_that_size(vram, cc, name):
    card = infer_gpu(vram, cc)
    assert card.name == name and card.memory_gib >= vram


def test_infer_gpu_has_no_answer_for_sizes_no_card_has():
    assert infer_gpu(32) is None and infer_gpu(24, (7, 5)) is None


def test_suggestions_for_a_slow_plan_are_faster_and_say_how():
    probe = synthetic_probe(8, 16, gpu_name="RTX 3070", compute_capability=(8, 6))
    job = Job(prompt="x", model="wan2.1-t2v-14b")
    spec = spec_for_model(job.model)
    result = make_plan(probe, spec, job, Preferences())
    assert is_slow(result)
    found = suggest(result, job, probe, Preferences(), spec, spec_for_model)
    by_option = {s.option: s for s in found}
    assert {"--model wan2.1-t2v-1.3b", "--frames 49"} <= set(by_option)
    for s in found:  # each is worth it
        assert s.seconds <= result.plan.predicted_seconds * 0.8
    # and its number is the planner's own for the changed job
    assert by_option["--frames 49"].seconds == pytest.approx(make_plan(probe, spec, job.with_(frames=49), Preferences()).plan.predicted_seconds)
    small = job.with_(model="wan2.1-t2v-1.3b")
    assert by_option["--model wan2.1-t2v-1.3b"].seconds == pytest.approx(make_plan(probe, spec_for_model(small.model), small, Preferences()).plan.predicted_seconds)


def test_a_fast_plan_gets_no_suggestions():
    probe = synthetic_probe(24, 64, gpu_name="RTX 4090", compute_capability=(8, 9))
    job = Job(prompt="x", model="wan2.1-t2v-1.3b", frames=33, steps=20)
    spec = spec_for_model(job.model)
    result = make_plan(probe, spec, job, Preferences())
    assert not is_slow(result) and suggest(result, job, probe, Preferences(), spec, spec_for_model) == ()


def test_when_nothing_fits_a_smaller_reserve_that_would_is_suggested():
    """Search the RAM at which the default reserve leaves no plan but the lean one fits: there the
    suggestion must name the reserve, with the lean plan's predicted time."""
    from dataclasses import replace

    from planner.suggest import LEAN_RAM_RESERVE, LEAN_VRAM_RESERVE

    job = Job(prompt="x", model="wan2.1-t2v-14b")
    spec = spec_for_model(job.model)
    lean = replace(Preferences(), vram_reserve=LEAN_VRAM_RESERVE, ram_reserve=LEAN_RAM_RESERVE)
    checked = 0
    for ram in (4, 5, 6, 7, 8, 9, 10, 12):
        probe = synthetic_probe(8, ram, gpu_name="RTX 3070", compute_capability=(8, 6))
        try:
            make_plan(probe, spec, job, Preferences())
            continue
        except NoPlanFits as exc:
            error = exc
        try:
            seconds = make_plan(probe, spec, job, lean).plan.predicted_seconds
        except NoPlanFits:
            continue
        found = {s.option: s for s in suggest(error, job, probe, Preferences(), spec, spec_for_model)}
        assert found["--vram-reserve 0.5 --ram-reserve 1"].seconds == pytest.approx(seconds)
        checked += 1
    assert checked, "no RAM size where only the smaller reserve fits: the search range needs updating"


@pytest.mark.parametrize("image", [(20000, 100), (100, 20000), (9000, 4000)])
def test_a_very_long_image_gives_a_size_within_the_job_limits(image):
    """A size taken from the image is the tool's choice, not the user's: it must pass the job's checks (a 20000x100
    image once gave a 13568 px wide video, refused as '--width 13568 is over the limit', an option not given)."""
    from lowvram.job import MAX_SIDE, Job, validate_job

    width, height = size_for_image(*image, 1280 * 720)
    assert max(width, height) <= MAX_SIDE and width % 16 == 0 and height % 16 == 0 and min(width, height) >= 16
    assert (width > height) == (image[0] > image[1])  # still the image's orientation
    validate_job(Job(prompt="a fox", model="wan2.1-i2v-14b-720p", width=width, height=height))
