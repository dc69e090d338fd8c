"""Step skipping from the command line and profiles: options and their older spellings, bad input (exit 2
before any model loads), `lowvram plan` with a cache, calibration end to end, [job.cache] in profiles."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lowvram.caching.setting import CacheSetting
from lowvram.errors import UserError

SMALL = ["--width", "64", "--height", "64", "--frames", "5"]


def _args(*argv):
    from lowvram.cli import build_parser

    return build_parser().parse_args(["generate", "a cat", *argv])


def setting(*argv) -> CacheSetting:
    from lowvram.profiles.apply import job_from_args

    return job_from_args(_args(*argv)).cache


def test_options_make_the_setting_and_the_older_flags_still_work():
    assert setting() == CacheSetting()
    assert setting("--cache", "magcache") == CacheSetting("magcache")
    assert setting("--cache", "magcache", "--cache-threshold", "0.1", "--magcache-k", "3", "--magcache-retention", "0.3") == \
        CacheSetting("magcache", threshold=0.1, max_skips=3, retention_ratio=0.3)
    assert setting("--cache", "teacache", "--cache-speedup", "1.8", "--no-teacache-retention", "--teacache-coefficients", "t2v-14b") == \
        CacheSetting("teacache", speedup=1.8, retention=False, coefficients="t2v-14b")
    assert setting("--cache-calibrate") == CacheSetting("magcache", calibrate=True)
    # The older spellings (shipped profiles' descriptions use them):
    assert setting("--teacache", "0.08") == CacheSetting("teacache", threshold=0.08) == setting("--cache", "teacache", "--cache-threshold", "0.08")
    assert setting("--teacache-speedup", "2") == CacheSetting("teacache", speedup=2.0)
    assert setting("--no-teacache") == CacheSetting() == setting("--cache", "none")
    for bad, words in (
        (("--no-teacache", "--teacache", "0.1"), "contradicts"),
        (("--cache", "magcache", "--teacache", "0.1"), "contradict --cache magcache"),
        (("--cache-threshold", "0.1"), "add --cache teacache or --cache magcache"),
        (("--cache", "teacache", "--cache-threshold", "0.1", "--cache-speedup", "2"), "not both"),
        (("--cache", "teacache", "--cache-calibrate"), "with --cache magcache"),
        (("--cache", "magcache", "--magcache-k", "0"), "from 1 to 50"),
    ):
        with pytest.raises(UserError, match=words):
            setting(*bad)


def test_a_profiles_cache_is_overridden_by_options():
    from argparse import Namespace

    from lowvram.profiles.apply import apply_profile
    from lowvram.profiles.schema import JobDefaults, Profile

    profile = Profile(name="p", model="tiny-random", job=JobDefaults(cache=CacheSetting("teacache", threshold=0.1, retention=False)))
    job, _ = apply_profile(Namespace(prompt="x"), profile)
    assert job.cache == CacheSetting("teacache", threshold=0.1, retention=False)
    job, _ = apply_profile(Namespace(prompt="x", cache="magcache"), profile)  # another method: its threshold does not carry over
    assert job.cache == CacheSetting("magcache", retention=False)
    job, _ = apply_profile(Namespace(prompt="x", cache_speedup=2.0), profile)
    assert job.cache == CacheSetting("teacache", speedup=2.0, retention=False)
    job, _ = apply_profile(Namespace(prompt="x", no_teacache=True), profile)
    assert job.cache == CacheSetting()


def test_old_teacache_tables_and_sidecars_read_as_cache_settings(tmp_path):
    from lowvram.profiles.apply import job_from_sidecar
    from lowvram.profiles.toml_io import dumps, loads

    old = 'schema_version = 1\nname = "old"\nmodel = "tiny-random"\n\n[job.teacache]\nenabled = true\nthreshold = 0.05\nretention = false\n'
    profile = loads(old)
    assert profile.job.cache == CacheSetting("teacache", threshold=0.05, retention=False) and profile.job.teacache is None
    text = dumps(profile)
    assert "[job.cache]" in text and "[job.teacache]" not in text and loads(text) == profile
    for settings in ({"teacache": {"enabled": True, "speedup": 2.0, "retention": True}},
                     {"cache": {"method": "teacache", "speedup": 2.0}}):
        path = tmp_path / "old.json"
        path.write_text(json.dumps({"settings": dict(prompt="x", **settings), "plan": {"device": "cpu"}}))
        assert job_from_sidecar(str(path))[0].cache == CacheSetting("teacache", speedup=2.0)


def run_cli(*argv, env=None):
    """A real `lowvram` process: bad input must exit 2 with a message and no traceback."""
    return subprocess.run([sys.executable, "-m", "lowvram", *argv], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize(
    "argv, words",
    [
        (("--cache", "teacache", "--cache-threshold", "-0.1"), "'-0.1' is not a threshold"),
        (("--cache", "teacache", "--cache-threshold", "abc"), "'abc' is not a threshold"),
        (("--teacache", "nan"), "'nan' is not a threshold"),
        (("--cache", "magcache", "--cache-speedup", "0.5"), "'0.5' is not a speed-up"),
    ],
)
def test_bad_threshold_or_speedup_exits_2(argv, words):
    out = run_cli("plan", "--model", "tiny-random", *argv)
    assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr


def test_a_cache_the_model_has_no_data_for_exits_2_naming_what_exists(demo_t2v_path):
    # MagCache on the demo, never calibrated: what exists and how to calibrate.
    out = run_cli("generate", "a cat", "--model", "tiny-random-i2v", "--image", "x.png", *SMALL, "--cache", "magcache")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    # (the image is checked first) -> plan, which has no image rule
    out = run_cli("plan", "--model", "tiny-random-i2v", "--cache", "magcache")
    assert out.returncode == 2
    for words in ("no magnitude ratios for tiny-random-i2v", "Published ratios exist for: Wan2.1 T2V-1.3B",
                  "Wan2.2 T2V-A14B", "--cache magcache --cache-calibrate"):
        assert words in out.stderr
    # TeaCache on a Wan2.2 model (known by name, not downloaded): Wan2.1's sets exist, MagCache is the way.
    out = run_cli("plan", "--model", "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "--cache", "teacache", "--cache-threshold", "0.1", "--vram", "24", "--ram", "64")
    assert out.returncode == 2 and "no coefficients for Wan2.2 T2V-A14B" in out.stderr and "--cache magcache" in out.stderr


def test_an_unreachable_target_says_the_largest_reachable():
    out = run_cli("plan", "--model", "wan2.1-t2v-1.3b", "--cache", "magcache", "--cache-speedup", "5", "--vram", "24", "--ram", "64")
    assert out.returncode == 2 and "MagCache cannot reach 5x" in out.stderr and "computes 36 of 100 calls" in out.stderr and "largest reachable speed-up is 2.77x" in out.stderr


def test_plan_prints_the_schedule_and_counts_only_computed_calls(capsys):
    from lowvram.cli import main

    base = ["plan", "--model", "wan2.1-t2v-14b", "--vram", "24", "--ram", "64", "--json"]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*base, "--cache", "magcache"]) == 0
    cached = json.loads(capsys.readouterr().out)
    stage = lambda d, name: next(s for s in d["plan"]["predicted"] if s["stage"] == name)  # noqa: E731
    cache = cached["cache"]
    assert cache["computed_calls"] < cache["total_calls"] == 100
    assert stage(cached, "denoise")["seconds"] < stage(plain, "denoise")["seconds"]
    assert main(base[:-1] + ["--cache", "magcache"]) == 0
    text = capsys.readouterr().out
    assert "MagCache: computes " in text and "Wan2.1 T2V-14B's published ratios" in text and "line 910" in text
    assert "    cond   ##########" in text and "predicted times count only the " in text


@pytest.mark.parametrize("kind", ["resident", "block_offload"])
def test_predicted_denoise_time_counts_only_computed_calls(kind):
    from lowvram.caching.estimate import CallCounts
    from lowvram.job import Job
    from planner.estimate import predict
    from lowvram.models.specs import spec_for_model
    from planner.plan import simple_plan
    from planner.probe import synthetic_probe
    from planner.timing import throughput_for

    spec, tp = spec_for_model("wan2.1-t2v-1.3b"), throughput_for(synthetic_probe(24, 64))
    plan = simple_plan("cuda", "bf16", kind)
    job = Job(prompt="x", model="wan2.1-t2v-1.3b", steps=50)

    def denoise(counts):
        stages, total = predict(plan, spec, job, tp, cache=counts)
        return next(s.seconds for s in stages if s.stage == "denoise")

    every, none = denoise(None), denoise(CallCounts({"transformer": 0}, {"transformer": 100}))
    assert denoise(CallCounts({"transformer": 100}, {"transformer": 100})) == every
    assert denoise(CallCounts({"transformer": 42}, {"transformer": 100})) == pytest.approx(none + (every - none) * 0.42)


def test_calibrate_then_run_with_the_calibrated_ratios(tmp_path, capsys):
    from lowvram.cli import main

    first = tmp_path / "cal.mp4"
    assert main(["generate", "a cat", *SMALL, "--steps", "6", "--cache-calibrate", "--out", str(first)]) == 0
    err = capsys.readouterr().err
    assert "MagCache calibration: computes all 12 calls" in err and "calibrated over 6 steps and saved to" in err
    side = json.loads(first.with_suffix(".json").read_text())
    assert side["cache"]["setting"]["calibrate"] and side["cache"]["measured"]["skipped_calls"] == 0
    second = tmp_path / "run.mp4"
    assert main(["generate", "a cat", *SMALL, "--steps", "6", "--cache", "magcache", "--cache-threshold", "5", "--out", str(second)]) == 0
    out = capsys.readouterr()
    assert "calibrated on this machine" in out.out  # the preview, before loading
    side = json.loads(second.with_suffix(".json").read_text())
    assert side["cache"]["measured"]["skipped_calls"] > 0 and side["cache"]["setting"]["method"] == "magcache"
    calls = [e for e in side["telemetry"] if e["event"] == "TransformerCall"]
    assert len(calls) == 12 and all(c["ratio"] is not None for c in calls)
