"""F1 / ?: what the current screen shows and its keys, on top of it."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from tui.help import FIELD_HELP, GLOBAL_KEYS, SCREEN_HELP


def help_text(screen_name: str, with_fields: bool) -> list:
    about, keys = SCREEN_HELP.get(screen_name, ("", ()))
    parts: list = [Text(f"lowvram — {screen_name or 'help'}", style="bold"), Text(""), Text(about), Text("")]
    table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for key, what in (*keys, *GLOBAL_KEYS):
        table.add_row(key, what)
    parts.append(table)
    if with_fields:
        parts += [Text(""), Text("Fields", style="bold")]
        fields = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
        fields.add_column(style="bold", no_wrap=True)
        fields.add_column()
        for key, label in (("model", "Model"), ("prompt", "Prompt"), ("negative", "Negative"), ("image", "Image"),
                           ("loras", "LoRAs"), ("preset", "Resolution"), ("frames", "Frames"), ("steps", "Steps"), ("guidance", "Guidance"),
                           ("seed", "Seed"), ("teacache_mode", "TeaCache"), ("out", "Output"), ("profile", "Profile")):
            fields.add_row(label, FIELD_HELP[key])
        parts.append(fields)
    parts += [Text(""), Text("Esc, F1 or ? closes this help", style="dim")]
    return parts


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,question_mark,q", "close", "Close")]

    def __init__(self, screen_name: str) -> None:
        super().__init__()
        self.screen_name = screen_name

    def compose(self) -> ComposeResult:
        from rich.console import Group

        with VerticalScroll(id="help", classes="dialog"):
            yield Static(Group(*help_text(self.screen_name, self.screen_name == "new job")), id="help-text")

    def action_close(self) -> None:
        self.dismiss(None)
