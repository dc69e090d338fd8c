"""TeaCache in real runs of the demo model: the precomputed schedule is what happens, telemetry, cleanup, CLI."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from teacache_reference import reference_decisions

from lowvram.caching.teacache import (
    COEFFICIENTS,
    TEACACHE_BLOCK_HOOK,
    TimeEmbedderWeights,
    get_teacache,
    preview,
)
from lowvram.errors import CancelledError, UserError
from lowvram.job import TeaCacheSetting
from lowvram.telemetry import EventLog, StepFinished, TeaCacheScheduled, TransformerCall
from plans import plan_with

STEPS = 10


@pytest.fixture(scope="module")
def smooth_demo(demo_t2v_path):
    """The demo T2V model with its time embedder's high-frequency inputs zeroed.

    With random weights every step changes the embedding by 50-150%, so every schedule is
    all-compute or all-skip; damped, the relative changes are 1-4% as in real models, and schedules
    mix computed and skipped steps.
    """
    from lowvram.models.names import resolve_model
    from lowvram.sampling.runner import load_model

    loaded = load_model(resolve_model("tiny-random"), plan_with("cpu"))
    freq_index = torch.arange(256) % 128  # cos half then sin half; index 0 is the highest frequency
    with torch.no_grad():
        loaded.pipe.transformer.condition_embedder.time_embedder.linear_1.weight[:, freq_index < 96] = 0
    return loaded


class LiveCapture:
    """What the model itself sees and does per call: its fp32 time signals and how many blocks ran."""

    def __init__(self, tr):
        self.signals, self.forwards, self.handles = [], [], []
        self.handles.append(tr.condition_embedder.register_forward_hook(self._embedded))
        for b in tr.blocks:
            self.handles.append(b.ffn.register_forward_pre_hook(self._block))

    def _embedded(self, module, args, output):
        self.signals.append((output[0].detach().clone(), output[1].detach().clone()))
        self.forwards.append(0)

    def _block(self, module, args):
        self.forwards[-1] += 1

    def close(self):
        for h in self.handles:
            h.remove()


def run_job(loaded, job, cancel=None, on_event=None):
    from lowvram.sampling.runner import generate

    log = EventLog(forward=on_event or (lambda e: None))
    live = LiveCapture(loaded.pipe.transformer)
    try:
        result = generate(job, on_event=log, cancel=cancel, loaded=loaded)
    finally:
        live.close()
    return result, log, live


@pytest.mark.parametrize(
    "retention, threshold, guidance",
    [(False, 0.2, 5.0), (True, 0.05, 5.0), (False, 0.1, 1.0)],
)
def test_precomputed_schedule_is_what_the_run_does(smooth_demo, small_job, retention, threshold, guidance):
    tr = smooth_demo.pipe.transformer
    setting = TeaCacheSetting(enabled=True, threshold=threshold, retention=retention)
    job = small_job(steps=STEPS, guidance=guidance, teacache=setting)
    before = preview(smooth_demo.info.transformer_config, job, smooth_demo.pipe.scheduler, TimeEmbedderWeights.from_transformer(tr))
    branches = ("cond", "uncond") if guidance > 1 else ("cond",)
    assert before.branches == branches
    non_forced = {c.computed for c in before.calls if not c.forced}
    assert non_forced == {True, False}, before.summary()

    result, log, live = run_job(smooth_demo, job)

    (announced,) = log.of(TeaCacheScheduled)
    assert announced.summary == before.summary() and announced.step_computed == before.step_computed
    calls = log.of(TransformerCall)
    assert [(c.step, c.branch, c.computed) for c in calls] == [(d.step, d.branch, d.computed) for d in before.calls]
    assert [(c.rel_l1, c.rescaled, c.accumulated) for c in calls] == [(d.rel_l1, d.rescaled, d.accumulated) for d in before.calls]
    layers = len(tr.blocks)
    assert live.forwards == [layers if d.computed else 0 for d in before.calls]
    steps = log.of(StepFinished)
    assert [(s.computed_calls, s.skipped_calls) for s in steps] == [
        (sum(before.decision(i, b).computed for b in branches), sum(not before.decision(i, b).computed for b in branches))
        for i in range(STEPS)
    ]

    # The live computation: the reference loop over the signals the model produced during the run.
    signal_of_call = [s[1] if retention else s[0] for s in live.signals]
    per_step = signal_of_call[:: len(branches)]
    for k, b in enumerate(branches[1:], start=1):
        assert all(torch.equal(a, c) for a, c in zip(per_step, signal_of_call[k :: len(branches)]))
    coeffs = COEFFICIENTS[before.coefficients].for_mode(retention)
    ref = reference_decisions(per_step, coeffs, threshold, retention, STEPS, len(branches))
    assert [computed for computed, _ in ref] == [d.computed for d in before.calls]
    assert [acc for _, acc in ref] == pytest.approx([d.accumulated for d in before.calls], rel=1e-4, abs=1e-6)

    sidecar = json.loads(result.sidecar_path.read_text())
    kinds = [e["event"] for e in sidecar["telemetry"]]
    assert kinds.count("TransformerCall") == len(before.calls) and "TeaCacheScheduled" in kinds
    assert get_teacache(tr) is None  # the run removed its hooks


def test_speedup_target_searches_the_threshold(smooth_demo, small_job):
    job = small_job(steps=STEPS, teacache=TeaCacheSetting(enabled=True, speedup=2.0, retention=False))
    result, log, live = run_job(smooth_demo, job)
    (announced,) = log.of(TeaCacheScheduled)
    assert announced.computed_steps <= STEPS / 2 and announced.predicted_speedup >= 2.0
    assert sum(1 for f in live.forwards if f) == 2 * announced.computed_steps


def test_cancelled_run_leaves_no_hooks_and_no_state(smooth_demo, small_job):
    tr = smooth_demo.pipe.transformer
    cancel = threading.Event()

    def cancel_after_step_3(event):
        if isinstance(event, StepFinished) and event.step == 3:
            cancel.set()

    job = small_job(steps=STEPS, teacache=TeaCacheSetting(enabled=True, threshold=0.2, retention=False))
    with pytest.raises(CancelledError):
        run_job(smooth_demo, job, cancel=cancel, on_event=cancel_after_step_3)
    assert get_teacache(tr) is None
    assert all(b._diffusers_hook.get_hook(TEACACHE_BLOCK_HOOK) is None for b in tr.blocks if hasattr(b, "_diffusers_hook"))
    assert tr.blocks[0]._diffusers_hook is not None  # the run did register block hooks
    # A run without TeaCache after the cancelled one computes every call.
    _, log, live = run_job(smooth_demo, small_job(steps=3))
    assert live.forwards == [len(tr.blocks)] * 6 and not log.of(TransformerCall)
    assert [(s.computed_calls, s.skipped_calls) for s in log.of(StepFinished)] == [(2, 0)] * 3


def _args(*argv):
    from lowvram.cli import build_parser

    return build_parser().parse_args(["generate", "a cat", *argv])


def test_cli_flags_make_the_setting():
    from lowvram.profiles.apply import job_from_args

    assert job_from_args(_args()).teacache == TeaCacheSetting()
    assert job_from_args(_args("--teacache", "0.08")).teacache == TeaCacheSetting(enabled=True, threshold=0.08)
    t = job_from_args(_args("--teacache-speedup", "1.8", "--no-teacache-retention", "--teacache-coefficients", "t2v-14b")).teacache
    assert t == TeaCacheSetting(enabled=True, speedup=1.8, retention=False, coefficients="t2v-14b")
    assert job_from_args(_args("--no-teacache")).teacache == TeaCacheSetting(enabled=False)
    with pytest.raises(UserError, match="contradicts"):
        job_from_args(_args("--no-teacache", "--teacache", "0.1"))
    with pytest.raises(UserError, match="not both"):
        job_from_args(_args("--teacache", "0.1", "--teacache-speedup", "2"))


def test_generate_prints_the_schedule_before_sampling(demo_t2v_path, tmp_path, capsys):
    from lowvram.cli import main

    out = tmp_path / "v.mp4"
    code = main(["generate", "a cat", "--width", "64", "--height", "64", "--frames", "5", "--steps", "4", "--teacache", "0.2", "--out", str(out)])
    assert code == 0
    err = capsys.readouterr().err
    line = next(l for l in err.splitlines() if "TeaCache: computes" in l)
    first_step = next(i for i, l in enumerate(err.splitlines()) if "step 1/4" in l)
    assert err.splitlines().index(line) < first_step
    assert "computes 4 of 4 steps" in line  # retention on: 5 forced steps cover all 4
