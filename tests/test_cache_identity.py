"""Which model a checkpoint is: from its configs and the job's size, never from its path."""

from __future__ import annotations

import shutil

from lowvram.caching.identity import ModelFacts, identify, resolution_of

WAN14 = dict(num_layers=40, num_attention_heads=40, in_channels=16)
WAN22_I2V = dict(num_layers=40, num_attention_heads=40, in_channels=36)
WAN21_I2V = dict(WAN22_I2V, image_dim=1280)
TI2V = dict(num_layers=30, num_attention_heads=24, in_channels=48)


def key(facts: ModelFacts, w: int = 832, h: int = 480) -> str:
    return identify(facts, w, h).key


def test_released_models_from_their_configs():
    assert key(ModelFacts(dict(num_layers=30, num_attention_heads=12, in_channels=16))) == "wan2.1-t2v-1.3b"
    assert key(ModelFacts(WAN14)) == "wan2.1-t2v-14b"
    assert key(ModelFacts(WAN21_I2V), 832, 480) == "wan2.1-i2v-14b-480p"
    assert key(ModelFacts(WAN21_I2V), 1280, 720) == "wan2.1-i2v-14b-720p"
    a14b = identify(ModelFacts(WAN14, transformer_2=WAN14, boundary_ratio=0.875), 832, 480)
    assert a14b.key == "wan2.2-t2v-a14b" and a14b.components == ("transformer", "transformer_2") and not a14b.image_to_video
    i2v = identify(ModelFacts(WAN22_I2V, transformer_2=WAN22_I2V, boundary_ratio=0.9), 832, 480)
    assert i2v.key == "wan2.2-i2v-a14b" and i2v.image_to_video
    ti2v = identify(ModelFacts(TI2V, expand_timesteps=True), 1280, 704)
    assert ti2v.key == "wan2.2-ti2v-5b" and ti2v.expand_timesteps and ti2v.components == ("transformer",)
    # Two experts of different shapes are not a released A14B.
    assert key(ModelFacts(WAN14, transformer_2=dict(WAN14, num_layers=39), boundary_ratio=0.9)).startswith("custom-")


def test_released_names_identify_models_not_downloaded_yet():
    assert key(ModelFacts(name="Wan-AI/Wan2.2-T2V-A14B-Diffusers")) == "wan2.2-t2v-a14b"
    assert key(ModelFacts(name="wan2.1-i2v-14b-720p"), 832, 480) == "wan2.1-i2v-14b-480p"  # the job's size decides
    assert identify(ModelFacts(name="someone/my-wan"), 832, 480) is None


def test_resolution_by_pixel_count():
    assert [resolution_of(w, h) for w, h in ((832, 480), (480, 832), (1024, 576), (1088, 608), (1280, 720), (720, 1280))] == \
        ["480p", "480p", "480p", "720p", "720p", "720p"]


def test_custom_models_by_config_digest_never_by_path(demo_t2v_path, demo_i2v_path, tmp_path):
    renamed = tmp_path / "Wan2.1-I2V-14B-720P-Diffusers"  # a name that says something it is not
    shutil.copytree(demo_t2v_path, renamed)
    here = identify(ModelFacts.from_folder(demo_t2v_path), 832, 480)
    there = identify(ModelFacts.from_folder(renamed), 1280, 720)
    assert here.key == there.key and here.key.startswith("custom-") and not here.released
    assert identify(ModelFacts.from_folder(demo_i2v_path), 832, 480).key != here.key
    demo = identify(ModelFacts.from_folder(demo_t2v_path, name="tiny-random", is_demo=True), 832, 480)
    assert demo.is_demo and demo.label == "tiny-random" and "the demo model" in demo.reason
