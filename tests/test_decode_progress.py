"""The decode reports its progress chunk by chunk and stops between chunks on a cancel (a finished decode is
written); the ETA follows the known TeaCache schedule and includes the plan's predicted decode."""

from __future__ import annotations

import threading
from dataclasses import replace
from types import SimpleNamespace

import pytest

from lowvram.errors import CancelledError
from lowvram.models.names import resolve_model
from lowvram.sampling.decode_watch import DecodeWatch, decoder_calls
from lowvram.sampling.eta import Eta
from lowvram.sampling.runner import decode, generate, load_model
from lowvram.telemetry import DecodeProgress, EventLog, RunCancelled, StepFinished
from planner.plan import StagePeak


@pytest.fixture(scope="module")
def loaded_demo(demo_t2v_path):
    from plans import plan_with

    return load_model(resolve_model("tiny-random"), plan_with("cpu"))


def count_decoder_calls(vae):
    calls = []
    handle = vae.decoder.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("tiled", [False, True])
def test_decoder_calls_predicts_the_chunks_and_progress_counts_them(loaded_demo, tiled):
    import torch

    vae = loaded_demo.pipe.vae
    if tiled:  # small tiles so the 64x64 test video is cut into 4x4 tiles
        vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=16, tile_sample_stride_width=16)
    latents = torch.randn(1, vae.config.z_dim, 3, 8, 8)
    calls = []
    handle = vae.decoder.register_forward_hook(lambda *_: calls.append(1))
    log = EventLog()
    try:
        predicted = decoder_calls(vae, tuple(latents.shape))
        frames = decode(loaded_demo, loaded_demo.plan, latents, DecodeWatch(log, lambda: 0.0))
    finally:
        handle.remove()
        vae.disable_tiling()
    assert predicted == len(calls) == 3 * (16 if tiled else 1)
    progress = log.of(DecodeProgress)
    assert [p.done for p in progress] == list(range(1, predicted + 1)) and {p.total for p in progress} == {predicted}
    assert progress[-1].eta_seconds == 0.0 and frames.shape[0] == 9
    assert not vae.decoder._forward_hooks and not vae.decoder._forward_pre_hooks  # the watch left nothing behind


def cancel_at_decode_chunk(chunk: int):
    """The real runner; the cancel event is set when `chunk` chunks are decoded (a user pressing c then)."""
    cancel = threading.Event()
    log = EventLog()

    def sink(event):
        log(event)
        if isinstance(event, DecodeProgress) and event.done == (event.total if chunk < 0 else chunk):
            cancel.set()

    return cancel, log, sink


def test_a_cancel_during_decode_stops_it_and_keeps_the_latents(small_job, cpu_plan, tmp_path):
    cancel, log, sink = cancel_at_decode_chunk(1)
    job = small_job(frames=9, steps=2)  # 3 latent frames: 3 chunks
    with pytest.raises(CancelledError):
        generate(job, plan=cpu_plan, on_event=sink, cancel=cancel)
    progress = log.of(DecodeProgress)
    assert [p.done for p in progress] == [1] and progress[0].total == 3  # stopped before the second chunk
    cancelled = log.of(RunCancelled)[0]
    assert cancelled.stage == "decode" and cancelled.step == 2
    assert cancelled.latents_path.endswith(".latents.safetensors") and (tmp_path / "out.latents.safetensors").is_file()
    assert not (tmp_path / "out.mp4").exists()


def test_a_decode_that_finishes_is_written_even_if_cancelled_during_it(small_job, cpu_plan, tmp_path):
    cancel, log, sink = cancel_at_decode_chunk(-1)  # cancel right after the last chunk
    result = generate(small_job(frames=9, steps=2), plan=cpu_plan, on_event=sink, cancel=cancel)
    assert cancel.is_set() and result.video_path.stat().st_size > 0
    assert not log.of(RunCancelled)


def test_eta_is_the_mean_computed_call_times_the_computed_calls_left_plus_decode():
    plan = SimpleNamespace(predicted=(StagePeak("denoise", 0, 0, 50.0), StagePeak("decode", 0, 0, 10.0)))
    eta = Eta.for_plan(plan)
    eta.step_done(1.0, 2)  # step 0: two computed calls in 1 s
    assert eta.seconds_left(4) == pytest.approx(0.5 * 4 + 10.0)  # the schedule says 4 computed calls are left
    eta.step_done(0.01, 0)  # skipped steps cost next to nothing and add no calls
    eta.step_done(0.01, 0)
    assert eta.seconds_left(4) == pytest.approx(1.02 / 2 * 4 + 10.0)
    assert Eta.for_plan(SimpleNamespace(predicted=())).seconds_left(3) == 0.0  # nothing measured, nothing predicted


def test_step_eta_follows_the_cache_schedule(small_job, cpu_plan, demo_t2v_path, tmp_path_factory):
    from cache_support import smooth_copy

    from lowvram.caching.setting import CacheSetting

    smooth = smooth_copy(demo_t2v_path, tmp_path_factory.mktemp("smooth") / "tiny-smooth")  # a demo TeaCache can skip on
    log = EventLog()
    generate(small_job(model=str(smooth), steps=8, cache=CacheSetting("teacache", speedup=2.0, retention=False)), plan=cpu_plan, on_event=log)
    steps = log.of(StepFinished)
    for step in steps:  # the time left is the measured time per computed call times the computed calls left
        done = [s for s in steps if s.step <= step.step]
        per_call = sum(s.seconds for s in done) / sum(s.computed_calls for s in done)
        assert step.eta_seconds == pytest.approx(per_call * step.remaining_computed_calls)
    assert sum(s.skipped_calls for s in steps) > 0 and steps[-1].eta_seconds == 0.0


def test_step_eta_includes_the_plans_predicted_decode(small_job, cpu_plan):
    plan = replace(cpu_plan, predicted=(StagePeak("decode", 0, 0, 100.0),))
    log = EventLog()
    generate(small_job(steps=3), plan=plan, on_event=log)
    etas = [e.eta_seconds for e in log.of(StepFinished)]
    assert etas[-1] == pytest.approx(100.0) and all(e >= 100.0 for e in etas) and etas[0] > etas[1] > etas[2]
