"""`lowvram download` and downloads during `generate`, against a stand-in hub on 127.0.0.1 (HF_ENDPOINT):
progress, the disk check, an interrupted download that resumes, a dropped connection, an unknown hub id planned
from its fetched configs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_hub import COMMIT, FakeHub

REPO = "test-org/tiny-wan"
BIG = "text_encoder/model.safetensors"


@pytest.fixture
def hub(demo_t2v_path):
    with FakeHub({REPO: demo_t2v_path}) as h:
        yield h


@pytest.fixture
def env(hub, tmp_path):
    cache = tmp_path / "hf-cache"
    return dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HUB_CACHE=str(cache), HF_HUB_DISABLE_XET="1",
                HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="120")


def lowvram(env, *args, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lowvram", *args], env=env, capture_output=True, text=True, timeout=timeout)


def snapshot(env) -> Path:
    return Path(env["HF_HUB_CACHE"]) / "models--test-org--tiny-wan" / "snapshots" / COMMIT


def blobs(env) -> list[Path]:
    folder = Path(env["HF_HUB_CACHE"]) / "models--test-org--tiny-wan" / "blobs"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def assert_complete(hub, env):
    for name in hub.files(REPO):
        assert (snapshot(env) / name).read_bytes() == (hub.repos[REPO] / name).read_bytes(), name


def test_download_shows_progress_and_is_complete(hub, env):
    r = lowvram(env, "download", REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(str(snapshot(env)))
    assert f"downloading {REPO}:" in r.stdout and "to download in 11 files" in r.stdout and "free)" in r.stdout
    assert "downloading: " in r.stderr and "(100%)" in r.stderr and ", done" in r.stderr
    assert_complete(hub, env)
    again = lowvram(env, "download", REPO)
    assert again.returncode == 0 and "already downloaded" in again.stdout


def test_interrupted_download_resumes(hub, env):
    hub.stall[BIG] = 4096  # this file stops half-way; the others finish
    proc = subprocess.Popen([sys.executable, "-m", "lowvram", "download", REPO], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    others = [n for n in hub.files(REPO) if n != BIG]
    deadline = time.monotonic() + 120
    while not (hub.gets(BIG) and all((snapshot(env) / n).exists() for n in others)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not (snapshot(env) / BIG).exists()
    assert not [b for b in blobs(env) if b.name.endswith(".incomplete")]  # nothing half-written left behind

    hub.stall.clear()
    r = lowvram(env, "download", REPO)
    assert r.returncode == 0, r.stderr
    assert "to download in 1 files" in r.stdout and "already here" in r.stdout
    assert_complete(hub, env)
    assert [len(hub.gets(n)) for n in others] == [1] * len(others)  # finished files were not fetched again
    assert len(hub.gets(BIG)) == 2


def test_dropped_connection_resumes_where_it_stopped(demo_t2v_path, tmp_path, env):
    # huggingface_hub writes (and resumes from) 10 MB chunks: a repo with a 24 MB file, cut after 15 MB.
    import shutil

    repo = tmp_path / "big-repo"
    shutil.copytree(demo_t2v_path, repo)
    (repo / BIG).write_bytes(os.urandom(24 * 1024**2))
    with FakeHub({REPO: repo}) as hub:
        hub.drop_once[BIG] = 15 * 1024**2
        r = lowvram(dict(env, HF_ENDPOINT=hub.url), "download", REPO)
        assert r.returncode == 0, r.stderr
        assert hub.gets(BIG) == ["", f"bytes={10 * 1024**2}-"]
        assert_complete(hub, env)


def test_not_enough_disk_is_refused_before_writing(hub, env):
    hub.sizes[BIG] = 10**16  # 10 PB: no disk has that
    r = lowvram(env, "download", REPO)
    assert r.returncode == 2
    assert "needs 9313225.7 GiB of disk" in r.stderr and "HF_HOME=" in r.stderr and "Nothing was downloaded" in r.stderr
    assert blobs(env) == []
    assert not any(g for m, p, g in hub.requests if m == "GET" and not p.startswith("/api/"))


@pytest.mark.slow
def test_unknown_hub_id_is_planned_from_its_configs_then_generated_with_progress(hub, env, tmp_path):
    plan = lowvram(env, "plan", "--model", REPO, "--vram", "8", "--ram", "16")
    assert plan.returncode == 0, plan.stderr
    assert not [p for m, p, _ in hub.requests if m == "GET" and p.endswith(".safetensors")]  # configs only
    out = tmp_path / "v.mp4"
    r = lowvram(env, "generate", "a cat", "--model", REPO, "--width", "64", "--height", "64", "--frames", "5", "--steps", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "downloading: " in r.stderr and ", done" in r.stderr
    assert out.is_file()


def test_dry_run_and_bad_names(hub, env):
    r = lowvram(env, "download", REPO, "--dry-run", "--without-transformer")
    assert r.returncode == 0 and "would download" in r.stdout and "in 10 files" in r.stdout
    assert blobs(env) == []
    assert lowvram(env, "download", "test-org/missing").returncode == 2
    assert "tiny-random" in lowvram(env, "download", "tiny-random").stdout
