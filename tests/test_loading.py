"""Real loading: a saved tiny checkpoint from a folder, task detection, safetensors only."""

from __future__ import annotations

import json
import shutil

import pytest

from lowvram.cli import main
from lowvram.errors import UserError
from lowvram.models.loading import load_pipeline, read_checkpoint_info
from lowvram.models.names import SHORT_NAMES, resolve_model


def test_load_saved_checkpoint_from_folder(demo_t2v_path, tmp_path):
    folder = tmp_path / "my-wan"
    shutil.copytree(demo_t2v_path, folder)
    ref = resolve_model(str(folder))
    assert ref.kind == "local"
    pipe, info = load_pipeline(ref, dtypes={"default": "float32"})
    assert type(pipe).__name__ == "WanPipeline"
    assert info.task == "t2v"
    assert pipe.transformer.config.num_layers == 2


def test_task_read_from_checkpoint_not_name(demo_i2v_path, tmp_path):
    # A folder whose name says t2v but whose checkpoint is I2V is I2V.
    folder = tmp_path / "wan-t2v-looking-name"
    shutil.copytree(demo_i2v_path, folder)
    assert read_checkpoint_info(folder).task == "i2v"


def test_pickle_only_checkpoint_refused(demo_t2v_path, tmp_path, capsys):
    folder = tmp_path / "pickled"
    shutil.copytree(demo_t2v_path, folder)
    for st in (folder / "transformer").glob("*.safetensors"):
        st.rename(st.with_name("diffusion_pytorch_model.bin"))
    with pytest.raises(UserError, match="only pickle weights .*safetensors only"):
        read_checkpoint_info(folder)
    code = main(["generate", "a cat", "--model", str(folder), "--width", "64", "--height", "64", "--frames", "5", "--steps", "1", "--out", str(tmp_path / "x.mp4")])
    assert code == 2
    assert "pickle" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_folder_without_model_index(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no model_index.json"):
        resolve_model(str(tmp_path / "empty"))


def test_damaged_transformer_config_is_a_user_error(demo_t2v_path, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(demo_t2v_path, folder)
    (folder / "transformer" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json: cannot read it as JSON.*download or save it again"):
        read_checkpoint_info(folder)


def test_short_names_map_to_hub_ids():
    for short, hub in SHORT_NAMES.items():
        ref = resolve_model(short)
        assert ref.kind == "hub" and ref.location == hub
    assert resolve_model("Wan-AI/Wan2.1-T2V-1.3B-Diffusers").kind == "hub"


def test_demo_is_deterministic(tmp_path, monkeypatch):
    from lowvram.models.demo import build_demo_pipeline

    a = build_demo_pipeline().transformer.state_dict()
    b = build_demo_pipeline().transformer.state_dict()
    assert all((a[k] == b[k]).all() for k in a)


def test_demo_saved_as_safetensors_and_labelled(demo_t2v_path):
    assert list((demo_t2v_path / "transformer").glob("*.safetensors"))
    assert not list(demo_t2v_path.rglob("*.bin"))
    meta = json.loads((demo_t2v_path / "lowvram_demo.json").read_text())
    assert "random weights" in meta["label"]
