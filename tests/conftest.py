"""Shared fixtures: one demo model cache per test session, small jobs that run in a second on CPU."""

from __future__ import annotations

import os

import pytest

# Before lowvram is imported anywhere: keep every cache inside the test session.
_SESSION_CACHE = None


def pytest_configure(config):
    global _SESSION_CACHE
    import tempfile

    if not os.environ.get("LOWVRAM_CACHE_DIR"):
        _SESSION_CACHE = tempfile.mkdtemp(prefix="lowvram-test-cache-")
        os.environ["LOWVRAM_CACHE_DIR"] = _SESSION_CACHE
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_unconfigure(config):
    # The session's demo cache is ours alone: remove it, or every run leaves a folder in /tmp.
    if _SESSION_CACHE:
        import shutil

        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_t2v_path():
    from lowvram.models.demo import ensure_demo

    return ensure_demo("tiny-random")


@pytest.fixture(scope="session")
def demo_i2v_path():
    from lowvram.models.demo import ensure_demo

    return ensure_demo("tiny-random-i2v")


@pytest.fixture
def small_job(tmp_path):
    """A factory of tiny jobs writing into tmp_path: 64x64, 5 frames, 2 steps."""
    from lowvram.job import Job

    def make(**changes):
        base = dict(prompt="a cat walks in the city", model="tiny-random", width=64, height=64, frames=5, steps=2, seed=3, out=str(tmp_path / "out.mp4"))
        base.update(changes)
        return Job(**base)

    return make


@pytest.fixture
def image_file(tmp_path):
    from PIL import Image

    path = tmp_path / "first.png"
    Image.new("RGB", (64, 48), (200, 30, 40)).save(path)
    return path


@pytest.fixture
def cpu_plan():
    """Everything on the CPU in float32 (the runner fits it to each model's components)."""
    from plans import plan_with

    return plan_with("cpu")
