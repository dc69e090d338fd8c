"""Memory over time: VRAM allocated / reserved / free and this process's RAM, one bar line each. A run on several
GPUs gets an allocated line per GPU (each scaled to its own card) instead of the three lines of one GPU."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.widgets import Static

from lowvram.cli.console import fmt_bytes
from lowvram.telemetry import MemorySample

BARS = " ▁▂▃▄▅▆▇█"
LABEL_WIDTH = 11
VALUE_WIDTH = 11
SCALE_WIDTH = 16  # "  █=12.00G total"


def bar_line(values: list[int], scale: int, width: int) -> str:
    """The last `width` values as bar characters, scaled against `scale` (absolute, not min..max)."""
    values = values[-width:]
    if scale <= 0:
        return " " * width
    top = len(BARS) - 1
    # Any non-zero value shows at least the lowest bar, so "small" never reads as "nothing".
    chars = [BARS[min(top, max(1 if v > 0 else 0, round(v / scale * top)))] for v in values]
    return "".join(chars).rjust(width)


class MemoryGraph(Static):
    """Scrolls right to left, one column per sample. Each row ends with its value now and its scale: a full
    bar (█) is the GPU's total memory for the VRAM rows, this process's peak so far for the RAM row (so its
    shape shows where memory grows)."""

    DEFAULT_CSS = "MemoryGraph { height: auto; }"

    def __init__(self, history: int = 240, **kwargs) -> None:
        super().__init__(**kwargs)
        self.samples: deque[MemorySample] = deque(maxlen=history * 4)  # several GPUs: a sample each per tick

    def add_sample(self, sample: MemorySample) -> None:
        self.samples.append(sample)
        self.refresh_graph()

    def on_resize(self) -> None:
        self.refresh_graph()

    def refresh_graph(self) -> None:
        self.update(self.render_text(max(8, self.size.width - LABEL_WIDTH - VALUE_WIDTH - SCALE_WIDTH)))

    def render_text(self, width: int) -> Text:
        text = Text(no_wrap=True, overflow="crop")
        if not self.samples:
            text.append("memory: waiting for the first sample", style="dim")
            return text
        last = self.samples[-1]
        rows = []
        devices = sorted({s.device for s in self.samples if s.device})
        ram_samples = list(self.samples) if not devices else [s for s in self.samples if s.device == devices[0]]
        if len(devices) > 1:
            for d in devices:
                mine = [s for s in self.samples if s.device == d]
                now = mine[-1]
                rows.append((f"GPU{d.rpartition(':')[2]} alloc", [s.vram_allocated for s in mine], now.vram_total,
                             now.vram_allocated, "green", "total"))
        elif last.vram_total:
            total = last.vram_total
            rows += [
                ("VRAM alloc", [s.vram_allocated for s in self.samples], total, last.vram_allocated, "green", "total"),
                ("VRAM resv", [s.vram_reserved for s in self.samples], total, last.vram_reserved, "yellow", "total"),
                ("VRAM free", [s.vram_free for s in self.samples], total, last.vram_free, "blue", "total"),
            ]
        ram_scale = max(s.ram_used for s in ram_samples)
        rows.append(("RAM (RSS)", [s.ram_used for s in ram_samples], ram_scale, ram_samples[-1].ram_used, "magenta", "peak"))
        for i, (label, values, scale, now, style, what) in enumerate(rows):
            if i:
                text.append("\n")
            text.append(label.ljust(LABEL_WIDTH), style="bold")
            text.append(bar_line(values, scale, width), style=style)
            text.append(fmt_bytes(now).rjust(VALUE_WIDTH))
            text.append(f"  █={fmt_bytes(scale).replace(' GiB', 'G')} {what}", style="dim")
        if not last.vram_total:
            text.append("\nVRAM       no GPU: everything runs on the CPU", style="dim")
        return text
