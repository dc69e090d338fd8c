"""Messages from the generation worker thread to the run screen (posted with post_message, thread-safe)."""

from __future__ import annotations

from textual.message import Message

from lowvram.telemetry import Event


class RuntimeEvent(Message):
    """A telemetry event from lowvram.sampling.runner, delivered on the UI thread."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event


class ModelLoading(Message):
    """The worker is loading the model (not reused from the previous run)."""

    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model


class ModelReady(Message):
    def __init__(self, model: str, seconds: float, reused: bool) -> None:
        super().__init__()
        self.model, self.seconds, self.reused = model, seconds, reused
