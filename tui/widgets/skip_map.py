"""The step-skip map: one cell per denoising step and guidance branch, computed vs skipped."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.state import COMPUTED, PENDING, SKIPPED, StepGrid

LABEL_WIDTH = 7
CELLS = {COMPUTED: ("█", "green"), SKIPPED: ("░", "yellow"), PENDING: ("·", "dim")}
PREDICTED_SKIP = ("∘", "dim yellow")
UNKNOWN_CELL = ("?", "red")


class SkipMap(Static):
    """Fills in as TransformerCall / StepFinished events arrive; pending calls that the cache's schedule
    (TeaCache or MagCache) predicts to skip are marked so the preview and the run can be compared at a
    glance. With two experts, a ^ under the ruler marks the step where the second one takes over."""

    DEFAULT_CSS = "SkipMap { height: auto; }"

    def __init__(self, grid: StepGrid | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.grid = grid or StepGrid(0)

    def on_resize(self) -> None:
        self.refresh_map()

    def refresh_map(self) -> None:
        self.update(render_grid(self.grid, max(10, (self.size.width or 80) - LABEL_WIDTH)))


def render_grid(grid: StepGrid, width: int, predicted: bool = False) -> Text:
    """The grid as text, `width` cells a line. predicted=True: a preview, nothing has run yet."""
    text = Text(no_wrap=True, overflow="crop")
    if predicted:
        flat = [c for row in grid.predicted.values() for c in row if c is not None]
        computed, skipped, prefix = flat.count(True), flat.count(False), "predicted: "
        legend = "   · to compute ∘ to skip"
    else:
        (computed, skipped), prefix = grid.counts(), ""
        legend = "   █ computed ░ skipped · pending ∘ to skip"
    text.append(prefix)
    text.append(f"{computed} computed", style="green")
    text.append(", ")
    text.append(f"{skipped} skipped", style="yellow")
    text.append(legend, style="dim")
    for step, component in sorted(grid.expert_starts.items()):
        text.append(f"   ^ {component} from step {step + 1}", style="dim")
    for start in range(0, grid.total, width):
        end = min(grid.total, start + width)
        text.append("\n" + f"{start + 1}".ljust(LABEL_WIDTH), style="dim")
        ruler = "".join("^" if i in grid.expert_starts else "|" if (i + 1) % 10 == 0 else " " for i in range(start, end))
        text.append(ruler, style="dim")
        for branch in grid.branches:
            text.append("\n" + branch.ljust(LABEL_WIDTH), style="bold")
            for i in range(start, end):
                state = grid.cells[branch][i]
                if state == PENDING and grid.predicted[branch][i] is False:
                    char, style = PREDICTED_SKIP
                else:
                    char, style = CELLS.get(state, UNKNOWN_CELL)
                text.append(char, style=style)
    return text
