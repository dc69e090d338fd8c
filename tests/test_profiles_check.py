"""Profiles on a machine: shipped profiles fit their machine, a big profile is re-planned on a small one,
an impossible one says what is short (exit 2), and command-line options win over the profile."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from lowvram.caching.setting import CacheSetting
from lowvram.cli import main
from lowvram.job import Job
from lowvram.profiles import (
    JobDefaults,
    MachineFingerprint,
    PlannerPrefs,
    Profile,
    load,
    save,
)
from lowvram.profiles.apply import apply_profile, probe_like
from lowvram.profiles.check import check_profile
from planner.choose import Budget, Preferences, config_key
from planner.probe import GIB, synthetic_probe

SHIPPED = sorted((Path(__file__).parent.parent / "profiles").glob("*.toml"))
REFRESH = 'for f in profiles/*.toml; do lowvram profile save "$f" --profile "$f" --saved-machine --force; done'


def test_profiles_are_shipped_for_each_card_and_model():
    names = {p.stem for p in SHIPPED}
    for card in ("rtx4090-24gb", "rtx3090-24gb", "16gb", "12gb", "8gb"):
        assert any(n.startswith(card + "-") for n in names), card
    for model in ("t2v-1.3b", "t2v-14b", "i2v-14b-480p"):
        assert any(n.endswith(model) for n in names), model


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_profile_fits_as_saved_on_its_machine(path):
    profile = load(path)
    assert profile.description and profile.saved_on is not None and profile.saved_plan is not None
    probe = probe_like(profile.saved_on)
    check = check_profile(profile, probe)
    assert check.status == "fits", f"{path.name}: {check.changes} {check.why}. The planner changed; refresh the shipped profiles: {REFRESH}"
    assert check.exit_code == 0
    assert check.plan.peak_vram_bytes <= Budget.of(probe, apply_profile(profile_job(), profile)[1]).vram


def profile_job() -> Job:
    return Job(prompt="x")


def test_24gb_profile_on_8gb_machine_is_replanned_within_its_vram(capsys):
    path = next(p for p in SHIPPED if p.stem == "rtx4090-24gb-t2v-1.3b")
    profile = load(path)
    small = synthetic_probe(8, 16, gpu_name="NVIDIA GeForce RTX 3060 8GB")
    check = check_profile(profile, small)
    assert check.status == "replanned"
    assert config_key(check.plan) != config_key(profile.saved_plan)
    budget = Budget.of(small, Preferences(min_quant="int8"))
    assert check.plan.peak_vram_bytes <= budget.vram < 8 * GIB
    assert any(line.startswith("predicted peak VRAM") for line in check.changes)
    assert check.why and "budget: VRAM" in check.why[-1]

    assert main(["profile", "check", str(path), "--vram", "8", "--ram", "16"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("re-planned for the what-if machine: RTX 4090 24 GB")
    assert "what changed:" in out and "why:" in out
    assert "what-if:      RTX 3070 (assumed) (compute 8.6), 8.0 GiB VRAM" in out and "saved on:     NVIDIA GeForce RTX 4090 (compute 8.9), 24.0 GiB VRAM" in out


def test_impossible_says_what_is_short_and_exits_2(capsys):
    path = next(p for p in SHIPPED if p.stem == "rtx4090-24gb-t2v-14b")
    check = check_profile(load(path), synthetic_probe(2, 8))
    assert check.status == "impossible" and check.plan is None and check.exit_code == 2
    assert main(["profile", "check", str(path), "--vram", "2", "--ram", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("what-if GPU: no card of 2 GB")  # the assumption behind the prediction, said first
    err = err.split("\n", 1)[1]
    assert err.startswith("impossible on the what-if machine") and "what is short" in err and "no plan fits" in err


def test_profile_without_saved_plan_is_planned(tmp_path, capsys):
    path = save(Profile(name="bare", model="wan2.1-t2v-1.3b"), tmp_path / "bare.toml")
    assert check_profile(load(path), synthetic_probe(24, 64)).status == "planned"
    assert main(["profile", "check", str(path), "--vram", "24", "--ram", "64", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "planned" and data["plan"]["device"] == "cuda"


def test_command_line_overrides_profile():
    profile = Profile(
        name="p", model="wan2.1-t2v-1.3b",
        job=JobDefaults(width=640, height=384, frames=33, steps=20, guidance=4.0, negative_prompt="blur", fps=8,
                        cache=CacheSetting("teacache", threshold=0.1, retention=False)),
        planner=PlannerPrefs(min_precision="int8", prefer="quality", vram_reserve_gib=1.5, ram_cap_gib=20.0),
    )
    given = argparse.Namespace(prompt="a cat", model=None, width=None, height=None, frames=None, steps=10, guidance=None,
                               negative_prompt=None, fps=None, teacache=None, teacache_speedup=2.0, vram_reserve=0.5)
    job, prefs = apply_profile(given, profile)
    assert (job.model, job.width, job.height, job.frames, job.steps, job.guidance, job.negative_prompt, job.fps) == (
        "wan2.1-t2v-1.3b", 640, 384, 33, 10, 4.0, "blur", 8)
    assert job.cache == CacheSetting("teacache", speedup=2.0, retention=False)  # speed-up replaces the threshold
    assert prefs == Preferences(min_quant="int8", prefer="quality", vram_reserve=GIB // 2, ram_cap=20 * GIB)
    # nothing given: the profile's values; no profile: lowvram's defaults
    job, _ = apply_profile(argparse.Namespace(prompt="x", model="tiny-random"), profile)
    assert (job.model, job.steps, job.cache.threshold) == ("tiny-random", 20, 0.1)
    job, prefs = apply_profile(argparse.Namespace(prompt="x"), None)
    assert (job.model, job.width, job.cache.enabled, prefs) == ("tiny-random", 256, False, Preferences())
    # a Job (the TUI's form): the profile replaces its settings, the prompt and seed stay
    job, _ = apply_profile(Job(prompt="keep", seed=7, steps=3), profile)
    assert (job.prompt, job.seed, job.steps, job.model) == ("keep", 7, 20, "wan2.1-t2v-1.3b")


def test_generate_with_profile_runs_profile_settings_and_options_win(tmp_path, demo_t2v_path, capsys):
    prof = save(Profile(name="tiny", model="tiny-random", job=JobDefaults(width=64, height=64, frames=5, steps=2, fps=8, negative_prompt="dark")),
                tmp_path / "tiny.toml")
    out = tmp_path / "v.mp4"
    assert main(["generate", "a cat walks", "--profile", str(prof), "--steps", "1", "--out", str(out), "--quiet"]) == 0
    settings = json.loads(out.with_suffix(".json").read_text())["settings"]
    assert (settings["width"], settings["frames"], settings["steps"], settings["fps"], settings["negative_prompt"]) == (64, 5, 1, 8, "dark")

    # the last run, saved as a profile: same settings; then a bad --profile stops generate before anything runs
    saved = tmp_path / "from-run.toml"
    assert main(["profile", "save", str(saved), "--from-sidecar", str(out.with_suffix(".json")), "--vram", "0", "--ram", "16"]) == 0
    again = load(saved)
    assert (again.model, again.job.steps, again.job.width, again.job.negative_prompt) == ("tiny-random", 1, 64, "dark")
    assert again.saved_plan is not None and again.saved_plan.device == "cpu" and again.saved_on.gpu == "none"
    bad = tmp_path / "bad.toml"
    bad.write_text(prof.read_text().replace("steps = 2", "steps = -2"))
    capsys.readouterr()
    assert main(["generate", "a cat", "--profile", str(bad), "--out", str(tmp_path / "no.mp4")]) == 2
    assert "key 'job.steps'" in capsys.readouterr().err and not (tmp_path / "no.mp4").exists()


def test_save_from_options_round_trips_and_never_overwrites(tmp_path, capsys):
    path = tmp_path / "mine.toml"
    argv = ["profile", "save", str(path), "--model", "wan2.1-t2v-14b", "--width", "640", "--height", "368", "--frames", "49",
            "--teacache", "0.2", "--min-precision", "int8", "--vram-reserve", "1.5", "--vram", "24", "--ram", "64",
            "--gpu-name", "NVIDIA GeForce RTX 4090", "--compute-capability", "8.9", "--name", "mine", "--description", "for tests"]
    assert main(argv) == 0
    profile = load(path)
    assert (profile.name, profile.description, profile.model, profile.job.width, profile.job.frames) == ("mine", "for tests", "wan2.1-t2v-14b", 640, 49)
    assert profile.job.cache.threshold == 0.2 and profile.planner.min_precision == "int8" and profile.planner.vram_reserve_gib == 1.5
    assert (profile.saved_on.gpu, profile.saved_on.vram_gib, profile.saved_on.compute_capability) == ("NVIDIA GeForce RTX 4090", 24.0, "8.9")
    assert check_profile(profile, probe_like(profile.saved_on)).status == "fits"
    assert main(argv) == 2 and "--force" in capsys.readouterr().err
    assert main(argv + ["--force"]) == 0


def test_unknown_model_names_the_profile(tmp_path, capsys):
    path = save(Profile(name="x", model="no-such-model"), tmp_path / "x.toml")
    assert main(["profile", "check", str(path), "--vram", "24", "--ram", "64"]) == 2
    err = capsys.readouterr().err
    assert f"profile {path} (model = 'no-such-model')" in err and "not a known model name" in err


def test_saved_machine_needs_a_saved_machine_and_no_what_if(tmp_path, capsys):
    bare = save(Profile(name="x", model="wan2.1-t2v-1.3b"), tmp_path / "x.toml")
    assert main(["profile", "check", str(bare), "--saved-machine"]) == 2
    assert "needs a profile with a [saved_on] machine" in capsys.readouterr().err
    assert main(["profile", "check", str(SHIPPED[0]), "--saved-machine", "--vram", "8"]) == 2
    assert "drop --vram" in capsys.readouterr().err
    bad_cc = save(Profile(name="x", model="wan2.1-t2v-1.3b", saved_on=MachineFingerprint("GPU", 12.0, 32.0, "x.y")), tmp_path / "cc.toml")
    assert main(["profile", "check", str(bad_cc), "--saved-machine"]) == 2
    assert "[saved_on] compute_capability x.y: write it as MAJOR.MINOR" in capsys.readouterr().err
