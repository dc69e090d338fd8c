"""What LoRAs set and where they travel: presets (file metadata, lowvram's table), options given winning,
step caches turned off under a distillation preset, profiles by name + sha256, the sidecar, the TUI form."""

from __future__ import annotations

import json

import pytest

from lora_files import make_lora
from lowvram.errors import UserError

DISTILL_META = {"lowvram.steps": "4", "lowvram.guidance": "1", "lowvram.shift": "5", "lowvram.distilled": "true"}


def cli_job(*argv):
    """The Job `lowvram plan ARGV` would plan (options parsed by the real parser, the profile applied)."""
    from lowvram.cli import build_parser
    from lowvram.cli.inputs import job_and_prefs_from_args

    args = build_parser().parse_args(["plan", *argv])
    return job_and_prefs_from_args(args)[0]


@pytest.fixture
def distill(tmp_path):
    return make_lora(tmp_path / "distill.safetensors", metadata=DISTILL_META)


def test_a_loras_metadata_sets_steps_guidance_and_shift(distill):
    job = cli_job("--lora", str(distill))
    assert (job.steps, job.guidance, job.shift) == (4, 1.0, 5.0)
    assert any("steps 4, guidance 1 (no unconditional pass), shift 5: set for LoRA distill.safetensors" in n and "metadata" in n
               for n in job.notes)
    lora = job.loras[0]
    assert len(lora.sha256) == 64 and lora.footprint.params > 0 and lora.expert == ""


def test_options_given_win_over_the_preset(distill):
    job = cli_job("--lora", str(distill), "--steps", "6")
    assert (job.steps, job.guidance, job.shift) == (6, 1.0, 5.0)
    assert any(n.startswith("--steps 6 kept (given); LoRA distill.safetensors suggests 4") for n in job.notes)


def test_a_guidance_given_over_a_preset_is_both_experts_guidance(distill):
    """Two experts, --guidance 3 over a preset's guidance 1: the low-noise expert is not left at the preset's 1
    while the note says --guidance 3 was kept; --guidance-2 still sets the low-noise expert's own."""
    job = cli_job("--model", "tiny-random-a14b", "--lora", str(distill), "--guidance", "3")
    assert (job.guidance, job.guidance_2, job.steps) == (3.0, 3.0, 4)
    assert any(n.startswith("--guidance 3 kept (given) for both experts") for n in job.notes)
    from lowvram.cli import build_parser
    from lowvram.cli.inputs import job_and_prefs_from_args

    args = build_parser().parse_args(["generate", "a fox", "--model", "tiny-random-a14b", "--lora", str(distill),
                                      "--guidance", "3", "--guidance-2", "2"])
    own = job_and_prefs_from_args(args)[0]
    assert (own.guidance, own.guidance_2) == (3.0, 2.0)
    preset = cli_job("--model", "tiny-random-a14b", "--lora", str(distill))
    assert (preset.guidance, preset.guidance_2) == (1.0, 1.0)


def test_a_distillation_preset_turns_a_profiles_cache_off_and_a_given_one_is_kept(distill, tmp_path):
    from lowvram.profiles import save
    from lowvram.profiles.apply import profile_from_job

    from lowvram.caching.setting import CacheSetting
    from lowvram.job import Job

    profile = tmp_path / "p.toml"
    save(profile_from_job(Job(prompt="", model="tiny-random", cache=CacheSetting("teacache", threshold=0.1))), profile)
    off = cli_job("--profile", str(profile), "--lora", str(distill))
    assert not off.cache.enabled and any("TeaCache turned off" in n and "step-distillation" in n for n in off.notes)
    kept = cli_job("--lora", str(distill), "--cache", "magcache")
    assert kept.cache.method == "magcache" and any(n.startswith("MagCache kept as given") for n in kept.notes)


def test_lowvrams_table_sets_the_expert_and_both_guidances(tmp_path, monkeypatch):
    from lowvram.loras import presets
    from lowvram.loras.files import sha256_of

    path = make_lora(tmp_path / "high.safetensors", model="tiny-random-a14b", layout="wan")
    monkeypatch.setitem(presets.KNOWN, sha256_of(path), ("high.safetensors", "a test high-noise LoRA", "high", "a config", "a page"))
    job = cli_job("--model", "tiny-random-a14b", "--lora", str(path))
    assert job.loras[0].expert == "high"
    assert (job.steps, job.guidance, job.guidance_2, job.shift) == (4, 1.0, 1.0, 5.0)
    assert any("on the high-noise expert only (lowvram's table: a test high-noise LoRA" in n for n in job.notes)
    both = cli_job("--model", "tiny-random-a14b", "--lora", f"{path}@both")
    assert both.loras[0].expert == "both"


def test_the_same_file_on_one_expert_and_on_both_is_refused(tmp_path):
    """FILE@high with FILE (both experts) would adapt the high-noise expert twice: refused as the same file twice."""
    path = make_lora(tmp_path / "l.safetensors")
    for second in (str(path), f"{path}@both"):
        with pytest.raises(UserError, match=r"given 2 times for the same expert \(high\)"):
            cli_job("--model", "tiny-random-a14b", "--lora", f"{path}@high", "--lora", second)
    job = cli_job("--model", "tiny-random-a14b", "--lora", f"{path}@high", "--lora", f"{path}:0.5@low")
    assert [lora.expert for lora in job.loras] == ["high", "low"]


def test_a_bare_name_with_a_colon_is_found_in_the_lora_folders(tmp_path, monkeypatch):
    """`--lora we:ird.safetensors` (a file in LOWVRAM_LORA_DIRS, not in the working folder) is a file name, not
    'we' at scale 'ird.safetensors'; with a scale after it too."""
    folder = tmp_path / "loras"
    folder.mkdir()
    path = make_lora(folder / "we:ird.safetensors")
    monkeypatch.setenv("LOWVRAM_LORA_DIRS", str(folder))
    monkeypatch.chdir(tmp_path)
    assert cli_job("--lora", "we:ird.safetensors").loras[0].path == str(path.resolve())
    job = cli_job("--lora", "we:ird.safetensors:0.5")
    assert job.loras[0].path == str(path.resolve()) and job.loras[0].scale == 0.5


def test_the_table_holds_lightx2vs_loras_with_their_sources():
    from lowvram.loras.presets import KNOWN, from_table

    assert len(KNOWN) >= 8 and all(len(sha) == 64 for sha in KNOWN)
    preset = from_table("1c918df9eaa102766d8f99104209ce55fe7a892278a667a63d721c5d1c18efb1")
    assert (preset.steps, preset.guidance, preset.shift, preset.distilled, preset.expert) == (4, 1.0, 5.0, True, "")
    assert "huggingface.co/lightx2v/Wan2.1-Distill-Loras" in preset.source and "LightX2V configs" in preset.source
    assert from_table("89003385f8a9d53ba58fd6ede647fdc90292e8568a54683fcfe6db5556a31769").expert == "high"
    assert from_table("0" * 64) is None


def test_malformed_metadata_is_ignored_and_named(tmp_path):
    path = make_lora(tmp_path / "odd.safetensors", metadata={"lowvram.steps": "four", "lowvram.shift": "7"})
    job = cli_job("--lora", str(path))
    assert job.shift == 7.0 and job.steps == 8  # the demo's default steps: "four" is not a number
    assert any("ignored malformed lowvram.steps" in n for n in job.notes)


def test_the_footprint_is_the_loras_own_size(tmp_path):
    """Adapter params, the weights they adapt and the FLOPs per token, from the header against the config."""
    from lowvram.loras.inspect import inspect_lora
    from lowvram.models.specs import transformer_config

    config = transformer_config("tiny-random")
    dim, ffn, layers, rank = config["num_attention_heads"] * config["attention_head_dim"], config["ffn_dim"], config["num_layers"], 4
    info = inspect_lora(make_lora(tmp_path / "l.safetensors", layout="musubi", rank=rank), config)
    attn, ffn_layers = 8 * rank * 2 * dim, rank * (dim + ffn) * 2  # A and B of 8 attention Linears, 2 FFN Linears
    fp = info.footprint
    assert info.layout == "musubi" and fp.rank == rank and fp.layers == 10 * layers
    assert fp.params == layers * (attn + ffn_layers)
    assert fp.target_params == layers * (8 * dim * dim + 2 * dim * ffn)
    video = 6 * 2 * rank * 2 * dim + 2 * 2 * rank * (dim + ffn)  # attn1 x4, attn2 q and out, the FFN
    assert fp.flops_per_token == layers * video and fp.max_out == max(dim, ffn)


# --- profiles ----------------------------------------------------------------------------------------------


def test_profiles_carry_loras_by_name_and_hash_and_find_them_on_another_machine(distill, tmp_path, monkeypatch):
    import shutil

    from lowvram.cli import main
    from lowvram.loras.files import sha256_of

    profile = tmp_path / "lora.toml"
    assert main(["profile", "save", str(profile), "--lora", f"{distill}:0.6", "--vram", "8", "--ram", "32"]) == 0
    text = profile.read_text()
    assert "[[job.loras]]" in text and 'name = "distill.safetensors"' in text and f'sha256 = "{sha256_of(distill)}"' in text
    assert "scale = 0.6" in text and "steps = 4" in text and str(tmp_path) not in text.split("[saved_on]")[0]
    # another machine: the file is elsewhere, in a LoRA folder
    other = tmp_path / "machine2" / "loras" / "sub"
    other.mkdir(parents=True)
    shutil.copy(distill, other / "distill.safetensors")
    distill.unlink()
    monkeypatch.setenv("LOWVRAM_LORA_DIRS", str(other.parent))
    job = cli_job("--profile", str(profile))
    assert job.loras[0].path == str((other / "distill.safetensors").resolve()) and job.loras[0].scale == 0.6
    assert job.steps == 4 and job.loras[0].sha256 == sha256_of(other / "distill.safetensors")
    # a different file of the same name: named with both hashes
    make_lora(other / "distill.safetensors", seed=5)
    with pytest.raises(UserError, match=r"different file .*has sha256 [0-9a-f]{64}") as exc:
        cli_job("--profile", str(profile))
    assert sha256_of(other.parent / "sub" / "distill.safetensors") in str(exc.value)
    (other / "distill.safetensors").unlink()
    with pytest.raises(UserError, match=r"LoRA distill\.safetensors \(sha256 [0-9a-f]{64}\) not found") as exc:
        cli_job("--profile", str(profile))
    assert "LOWVRAM_LORA_DIRS" in str(exc.value)
    # --lora none runs the profile without its LoRAs
    assert cli_job("--profile", str(profile), "--lora", "none").loras == ()


def test_a_profiles_loras_are_found_beside_the_profile_file(distill, tmp_path, monkeypatch):
    """A profile saved next to its LoRA (no LoRA folder set) loads: the profile's own folder is searched."""
    from lowvram.cli import main

    monkeypatch.delenv("LOWVRAM_LORA_DIRS", raising=False)
    monkeypatch.delenv("LOWVRAM_MODEL_DIRS", raising=False)
    profile = tmp_path / "beside.toml"
    assert main(["profile", "save", str(profile), "--lora", f"{distill}:0.6", "--vram", "8", "--ram", "32"]) == 0
    monkeypatch.chdir(tmp_path.parent)
    job = cli_job("--profile", str(profile))
    assert job.loras[0].path == str(distill.resolve()) and job.loras[0].scale == 0.6


def test_a_profiles_lora_table_is_checked(tmp_path):
    from lowvram.profiles import ProfileError, loads

    base = 'schema_version = 1\nname = "x"\nmodel = "tiny-random"\n\n[[job.loras]]\nname = "a.safetensors"\n'
    with pytest.raises(ProfileError, match="64 hexadecimal digits"):
        loads(base + 'sha256 = "abc"\n')
    with pytest.raises(ProfileError, match="expert"):
        loads(base + f'sha256 = "{"a" * 64}"\nexpert = "middle"\n')
    profile = loads(base + f'sha256 = "{"a" * 64}"\nscale = 0.5\nexpert = "low"\n')
    assert profile.job.loras[0].scale == 0.5 and profile.job.loras[0].expert == "low"


# --- the sidecar and the TUI form --------------------------------------------------------------------------


def test_the_sidecar_records_each_lora_and_a_profile_can_be_saved_from_it(small_job, tmp_path):
    from lowvram.loras.files import sha256_of
    from lowvram.loras.spec import LoraSpec
    from lowvram.profiles.apply import job_from_sidecar, profile_from_job
    from lowvram.sampling.runner import generate
    from plans import plan_with

    path = make_lora(tmp_path / "l.safetensors")
    result = generate(small_job(loras=(LoraSpec(str(path), 0.5),)), plan=plan_with("cpu"))
    data = json.loads(result.sidecar_path.read_text())
    assert data["loras"] == [{"name": "l.safetensors", "sha256": sha256_of(path), "scale": 0.5, "expert": "both",
                              "fused": False, "components": ["transformer"], "path": str(path.resolve())}]
    assert data["plan"]["loras"][0]["fused"] is False and "peft" in data["libraries"]
    job, _ = job_from_sidecar(str(result.sidecar_path))
    assert job.loras[0].sha256 == sha256_of(path) and job.loras[0].scale == 0.5
    saved = profile_from_job(job).job.loras
    assert saved[0].name == "l.safetensors" and saved[0].sha256 == sha256_of(path)


def test_the_tui_form_has_a_lora_field(tmp_path):
    from lowvram.job import Job
    from tui.form import FormErrors, job_from_values, values_from_job

    path, other = make_lora(tmp_path / "l.safetensors"), make_lora(tmp_path / "m.safetensors", seed=3)
    base = Job(prompt="a cat", model="tiny-random", width=256, height=144, frames=17, steps=8)
    values = dict(values_from_job(base), loras=f"{path}:0.5; {other}@both")
    job = job_from_values(values, base)
    assert [(lora.path, lora.scale, lora.expert) for lora in job.loras] == [(str(path), 0.5, ""), (str(other), 1.0, "both")]
    with pytest.raises(FormErrors, match="given 2 times"):
        job_from_values(dict(values, loras=f"{path}; {path}@both"), base)
    with pytest.raises(FormErrors) as exc:
        job_from_values(dict(values, loras=f"{path}:strong"), base)
    assert "loras" in exc.value.errors and "not a number" in exc.value.errors["loras"]
    # planned once (checked, presets applied), the same text keeps the planned LoRAs and their notes
    from lowvram.loras.resolve import resolve_job_loras

    planned = resolve_job_loras(job)
    again = job_from_values(values_from_job(planned), planned)
    assert again.loras == planned.loras and again.loras[0].resolved
