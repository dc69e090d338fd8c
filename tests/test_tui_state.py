"""The step-skip grid from telemetry events, its text rendering, and the memory bars."""

from __future__ import annotations

from lowvram.telemetry import StepFinished, TransformerCall
from tui.services import StepDecision
from tui.state import COMPUTED, PENDING, SKIPPED, UNKNOWN, StepGrid
from tui.widgets.memory_graph import bar_line
from tui.widgets.skip_map import render_grid


def test_transformer_calls_fill_their_own_branch_and_win_over_step_counts():
    grid = StepGrid(4)
    grid.apply(TransformerCall(step=1, branch="uncond", computed=False))
    grid.apply(TransformerCall(step=1, branch="cond", computed=True))
    grid.apply(StepFinished(step=1, total=4, computed_calls=2, skipped_calls=0))  # ignored: calls already seen
    assert [grid.cells["cond"][1], grid.cells["uncond"][1]] == [COMPUTED, SKIPPED]
    assert grid.cells["cond"][0] == PENDING and grid.counts() == (1, 1)


def test_step_counts_alone_fill_a_step_only_when_unambiguous():
    grid = StepGrid(3)
    grid.apply(StepFinished(step=0, total=3, computed_calls=2))
    grid.apply(StepFinished(step=1, total=3, skipped_calls=2))
    grid.apply(StepFinished(step=2, total=3, computed_calls=1, skipped_calls=1))  # which branch? unknown
    assert grid.cells["cond"] == [COMPUTED, SKIPPED, UNKNOWN] and grid.cells["uncond"] == [COMPUTED, SKIPPED, UNKNOWN]
    one = StepGrid(2, ("cond",))  # guidance off: one call a step
    one.apply(StepFinished(step=0, total=2, computed_calls=1))
    assert one.cells == {"cond": [COMPUTED, PENDING]}


def test_render_wraps_long_runs_and_marks_predicted_skips():
    grid = StepGrid(25)
    grid.set_prediction([StepDecision(step, branch, step < 5) for step in range(25) for branch in ("cond", "uncond")])
    grid.apply(TransformerCall(step=0, branch="cond", computed=True))
    lines = render_grid(grid, width=10).plain.splitlines()
    assert lines[1].startswith("1 ") and lines[4].startswith("11 ") and lines[7].startswith("21 ")  # 3 blocks of 10
    assert lines[2] == "cond   █····∘∘∘∘∘" and lines[3] == "uncond ·····∘∘∘∘∘"
    assert render_grid(grid, 10, predicted=True).plain.startswith("predicted: 10 computed, 40 skipped")


def test_memory_bars_are_absolute_and_never_hide_small_values():
    gib = 1024**3
    assert bar_line([0, gib, 8 * gib, 16 * gib], scale=16 * gib, width=4) == " ▁▄█"
    assert bar_line([1], scale=16 * gib, width=3) == "  ▁"  # 1 byte still shows; right-aligned history
