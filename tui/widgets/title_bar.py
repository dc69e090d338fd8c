"""One line at the top: the app and the screen's name.

Textual's Header watches the title reactively; on a screen replaced with switch_screen that watcher
can fire after its children are gone (NoMatches at exit), so this bar renders once and watches nothing.
"""

from __future__ import annotations

from textual.widgets import Static


class TitleBar(Static):
    DEFAULT_CSS = """
    TitleBar { dock: top; height: 1; width: 1fr; background: $panel; color: $foreground; text-style: bold; content-align: center middle; }
    """

    def on_mount(self) -> None:
        name = self.screen.SUB_TITLE
        self.update(f"{self.app.title} — {name}" if name else self.app.title)
