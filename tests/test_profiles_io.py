"""Profiles on disk: exact round trip, atomic save, and a clear error for every kind of bad file."""

from __future__ import annotations

import dataclasses

import re
import tomllib

import pytest

from lowvram.caching.setting import CacheSetting
from lowvram.cli import main
from lowvram.errors import UserError
from lowvram.profiles import (
    JobDefaults,
    MachineFingerprint,
    PlannerPrefs,
    Profile,
    ProfileError,
    dumps,
    load,
    loads,
    save,
)
from lowvram.profiles.toml_io import dumps_data, locate
from planner.plan import StagePeak
from plans import TP, plan_with


def full_profile() -> Profile:
    return Profile(
        name='RTX 4090 "24 GB" test',
        model="wan2.1-t2v-14b",
        description="Two lines\nwith a backslash \\ and a tab\t.",
        job=JobDefaults(width=832, height=480, frames=81, steps=30, guidance=5.0, negative_prompt="blurry, \"low\" quality", fps=16,
                        cache=CacheSetting("teacache", threshold=0.2, retention=True)),
        planner=PlannerPrefs(min_precision="int8", prefer="speed", vram_reserve_gib=1.0, ram_reserve_gib=4.0, vram_cap_gib=20.0),
        saved_on=MachineFingerprint(gpu="NVIDIA GeForce RTX 4090", vram_gib=23.99, ram_gib=62.7, compute_capability="8.9"),
        saved_plan=dataclasses.replace(
            plan_with("cuda", precision="fp8", transformer=TP("partial", resident_blocks=12, use_stream=True),
                      text_encoder="cpu", vae="gpu_tiled", source="planner"),
            predicted=(StagePeak("load", 1 << 30, 3 << 30, 1.5), StagePeak("denoise", 20 << 30, 40 << 30, 600.25)),
            predicted_seconds=612.5,
            reasons=("fits with 1.0 GiB reserve", "fp8 is fast at compute 8.9"),
        ),
    )


def test_round_trip_save_load_equal(tmp_path):
    profile = full_profile()
    path = save(profile, tmp_path / "p.toml")
    assert load(path) == profile
    # the text is what tomllib reads, and saving what was loaded gives the same bytes
    components = tomllib.loads(path.read_text())["saved_plan"]["components"]
    assert [c["resident_blocks"] for c in components if c["name"] == "transformer"] == [12]
    assert dumps(load(path)) == path.read_text()


def test_minimal_profile_round_trip():
    profile = Profile(name="m", model="tiny-random")
    assert loads(dumps(profile)) == profile
    assert loads('schema_version = 1\nname = "m"\nmodel = "tiny-random"\n') == profile


def test_save_is_atomic_and_refuses_to_overwrite(tmp_path):
    path = save(full_profile(), tmp_path / "p.toml")
    with pytest.raises(UserError, match="already exists.*--force"):
        save(Profile(name="other", model="tiny-random"), path)
    assert load(path).name == full_profile().name
    save(Profile(name="other", model="tiny-random"), path, overwrite=True)
    assert load(path).name == "other"
    assert [p.name for p in tmp_path.iterdir()] == ["p.toml"]  # no temp file left behind


def test_writer_handles_awkward_strings_and_keys():
    data = {"a b": "x\u0001y\u007f", "k": ["q\"", 1, 2.5, True, {"x": "\n"}], "t": {"u": [{"v": 1}, {"v": -0.0}]}, "e": [], "big": 1e300, "tiny": 5e-324}
    assert tomllib.loads(dumps_data(data)) == data


def test_locate_finds_keys_tables_and_array_items():
    text = dumps(full_profile())
    lines = text.splitlines()
    assert lines[locate(text, ("job", "width")) - 1] == "width = 832"
    assert lines[locate(text, ("job", "cache")) - 1] == "[job.cache]"
    assert lines[locate(text, ("saved_plan", "predicted", 1, "seconds")) - 1] == "seconds = 600.25"
    assert lines[locate(text, ("saved_plan", "predicted", 0, "seconds")) - 1] == "seconds = 1.5"


GOOD = dumps(full_profile())

# (what is wrong, the bad text, text on the line the message must name (or None), words the message must contain)
BAD_FILES = [
    ("invalid TOML", GOOD.replace("width = 832", "width = = 832"), "width = = 832", ["invalid TOML", "column"]),
    ("truncated file", GOOD[: GOOD.index("\n[saved_on]") + 6], None, ["truncated", "save or download it again"]),
    ("truncated in the header", GOOD[:100], None, ["missing schema_version", "truncated"]),
    ("truncated string", GOOD[: GOOD.index('model = "wan') + 12], None, ["truncated"]),
    ("empty file", "", None, ["empty"]),
    ("unknown key", GOOD.replace("height = 480", "hieght = 480"), "hieght", ["unknown key 'hieght'", "did you mean 'height'", "[job]"]),
    ("unknown top-level key", GOOD.replace("model = ", "modle = "), "modle", ["unknown key 'modle'", "did you mean 'model'"]),
    ("unknown table", GOOD.replace("[planner]", "[planer]"), "[planer]", ["unknown key 'planer'", "did you mean 'planner'"]),
    ("wrong type", GOOD.replace("steps = 30", 'steps = "30"'), 'steps = "30"', ["key 'job.steps'", "whole number", "a string ('30')"]),
    ("wrong type bool", GOOD.replace("use_stream = true", "use_stream = 1", 1), "use_stream = 1", ["saved_plan.components[0].use_stream", "true or false"]),
    ("wrong table type", GOOD.replace("[job.cache]", "[job.cache.x]"), None, ["unknown key 'x'"]),
    ("bad cache method", GOOD.replace('method = "teacache"', 'method = "tea"'), "[job.cache]", ["job.cache", "use one of none, teacache, magcache"]),
    ("old and new cache tables", GOOD.replace("[job.cache]", "[job.teacache]\nenabled = false\n\n[job.cache]"), "[job]", ["[job.teacache]", "keep [job.cache]"]),
    ("out of range", GOOD.replace("steps = 30", "steps = 0"), "steps = 0", ["out of range", "between 1 and 1000", "got 0"]),
    ("not a multiple of 16", GOOD.replace("width = 832", "width = 830"), "width = 830", ["multiple of 16", "use 816 or 832"]),
    ("frames form", GOOD.replace("frames = 81", "frames = 80"), "frames = 80", ["4k+1", "use 77 or 81"]),
    ("bad choice", GOOD.replace('min_precision = "int8"', 'min_precision = "int9"'), "int9", ["'bf16', 'fp8', 'int8', 'int4'", "did you mean 'int8'"]),
    ("bad plan choice", GOOD.replace('placement = "gpu_tiled"', 'placement = "tiled"'), None, ["saved_plan.components", "vae: placement 'tiled'", "gpu_tiled"]),
    ("cross-field", GOOD.replace("threshold = 0.2", "threshold = 0.2\nspeedup = 2.0"), "[job.cache]", ["job.cache", "either a threshold or a target speed-up"]),
    ("nan", GOOD.replace("guidance = 5.0", "guidance = nan"), "guidance = nan", ["finite number"]),
    ("newer schema", GOOD.replace("schema_version = 1", "schema_version = 2\nnew_thing = 1"), "schema_version = 2", ["newer lowvram", "upgrade"]),
    ("no schema version", GOOD.replace("schema_version = 1\n", ""), None, ["missing schema_version"]),
    ("missing required", GOOD.replace('model = "wan2.1-t2v-14b"\n', ""), None, ["missing required key 'model'", "truncated"]),
    ("duplicate key", GOOD.replace("steps = 30", "steps = 30\nsteps = 31"), "steps = 31", ["invalid TOML", "column"]),
    ("code is not run", 'schema_version = 1\nname = "x"\nmodel = __import__("os").system("touch pwned")\n', "__import__", ["invalid TOML"]),
]


@pytest.mark.parametrize("case, text, line, words", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_file_gives_clear_error(case, text, line, words):
    with pytest.raises(ProfileError) as info:
        loads(text, source="bad.toml")
    message = str(info.value)
    assert message.startswith("profile bad.toml")
    if line is not None:
        number = next(i for i, text_line in enumerate(text.splitlines(), 1) if line in text_line)
        assert re.search(rf"line {number}\b", message), message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("case, text, line, words", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_file_exit_code_2_through_cli(case, text, line, words, tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["profile", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: profile {path}")
    assert words[0] in err
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("content, words", [(b"\xff\xfe\x00binary", "not UTF-8"), (None, "no such file")])
def test_unreadable_files(tmp_path, capsys, content, words):
    path = tmp_path / "p.toml"
    if content is not None:
        path.write_bytes(content)
    assert main(["profile", "show", str(path)]) == 2
    assert words in capsys.readouterr().err


def test_a_folder_is_refused(tmp_path, capsys):
    assert main(["profile", "show", str(tmp_path)]) == 2
    assert "not a file" in capsys.readouterr().err


def test_show_prints_what_a_person_needs(tmp_path, capsys):
    path = save(full_profile(), tmp_path / "p.toml")
    assert main(["profile", "show", str(path)]) == 0
    out = capsys.readouterr().out
    for words in ("RTX 4090", "wan2.1-t2v-14b", "832x480", "81 frames", "TeaCache threshold 0.2", "lowest precision int8", "information only"):
        assert words in out, out
