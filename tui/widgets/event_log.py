"""The run's log: the same lines the CLI prints for each telemetry event, in a scrolling panel."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from lowvram.cli.console import ConsoleReporter
from lowvram.telemetry import DecodeProgress, Event, StepFinished

STYLES = (("warning", "yellow"), ("error", "bold red"), ("failed", "bold red"), ("cancelled", "yellow"), ("wrote", "green"))


class _Lines:
    """A text stream for ConsoleReporter (not a tty: one line per event) that hands on whole lines."""

    def __init__(self, emit) -> None:
        self.emit, self.buffer = emit, ""

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            self.emit(line)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class EventLog(RichLog):
    DEFAULT_CSS = "EventLog { height: 1fr; min-height: 3; border-top: solid $panel; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(wrap=True, markup=False, highlight=False, **kwargs)
        self._reporter = ConsoleReporter(stream=_Lines(self.add_line))

    def add_event(self, event: Event) -> None:
        if isinstance(event, (StepFinished, DecodeProgress)):
            return  # steps and decoded frames have the progress bar and the skip map; the log keeps the rarer lines
        self._reporter(event)

    def add_line(self, text: str, style: str = "") -> None:
        style = style or next((s for prefix, s in STYLES if text.startswith(prefix)), "")
        self.write(Text(text, style=style))
