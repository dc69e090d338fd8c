"""Screens that use a wide terminal: at WIDE columns or more the screen gets the `-wide` class, and the
stylesheet lays it out in columns instead of one above the other."""

from __future__ import annotations

from textual import events

WIDE = 120


class WideLayout:
    """Mixin for a Screen: keeps the `-wide` class in step with the terminal's width."""

    def on_resize(self, event: events.Resize) -> None:
        self.set_class(event.size.width >= WIDE, "-wide")  # type: ignore[attr-defined]
