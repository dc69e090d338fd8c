"""Profiles from the form: a picker over the shipped profiles and the user's (name, description, file), or
a file path typed in; and a dialog that saves the form's settings under a name."""

from __future__ import annotations


from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from lowvram.job import Job


def first_sentence(text: str) -> str:
    head, dot, _ = text.partition(". ")
    return head + (dot.strip() if dot else "")


def entry_prompt(entry) -> Text:
    """One profile in the list, one line: its name, its model, where it comes from. The description of the
    highlighted one shows below the list."""
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(entry.name, style="bold")
    text.append(f"  {entry.model or '?'} · {entry.source}", style="dim")
    if entry.problem:
        text.append("  cannot be loaded", style="red")
    return text


class ProfilePicker(ModalScreen[str | None]):
    """Dismisses with the chosen profile's path (None: nothing chosen)."""

    BINDINGS = [Binding("escape", "cancel", "Close")]

    def __init__(self, entries: list) -> None:
        super().__init__()
        self.entries = [e for e in entries]

    def compose(self) -> ComposeResult:
        with Vertical(id="picker", classes="dialog"):
            yield Label(Text("Load a profile: shipped with lowvram, or yours", style="bold"), classes="dialog-title")
            if self.entries:
                yield OptionList(*(Option(entry_prompt(e), id=e.path, disabled=bool(e.problem)) for e in self.entries), id="profile-list")
                yield Static("", id="profile-detail")
            else:
                yield Label(Text("no profiles found (shipped ones live in profiles/, yours in the user config folder)", style="dim"))
            with Horizontal(classes="dialog-row"):
                yield Label("or a file", classes="dialog-label")
                yield Input(id="profile-path", compact=True, placeholder="path/to/profile.toml, Enter loads")
            yield Label(Text("Enter loads · Tab to the file field · Esc closes", style="dim"))

    def on_mount(self) -> None:
        target = self.query("#profile-list")
        (target.first() if target else self.query_one("#profile-path")).focus()

    @on(OptionList.OptionHighlighted)
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        entry = next((e for e in self.entries if e.path == event.option.id), None)
        if entry is not None:
            detail = Text(entry.problem, style="red") if entry.problem else Text(entry.description or "(no description)")
            detail.append(f"\n{entry.path}", style="dim")
            self.query_one("#profile-detail", Static).update(detail)

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    @on(Input.Submitted, "#profile-path")
    def _typed(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


class SaveProfile(ModalScreen[tuple | None]):
    """Asks for a file, a name and a description; dismisses with (path, name, description) or None."""

    BINDINGS = [Binding("escape", "cancel", "Close")]

    def __init__(self, job: Job) -> None:
        super().__init__()
        self.job = job

    def compose(self) -> ComposeResult:
        from lowvram.profiles.library import user_profiles_dir

        slug = f"{self.job.model.replace('/', '-')}-{self.job.width}x{self.job.height}".lower()
        with Vertical(id="saver", classes="dialog"):
            yield Label(Text("Save these settings as a profile", style="bold"), classes="dialog-title")
            with Horizontal(classes="dialog-row"):
                yield Label("file", classes="dialog-label")
                yield Input(str(user_profiles_dir() / f"{slug}.toml"), id="save-path", compact=True)
            with Horizontal(classes="dialog-row"):
                yield Label("name", classes="dialog-label")
                yield Input(f"{self.job.model} {self.job.width}x{self.job.height}", id="save-name", compact=True)
            with Horizontal(classes="dialog-row"):
                yield Label("description", classes="dialog-label")
                yield Input(id="save-description", compact=True, placeholder="what it is for (optional)")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save", id="save", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)
            yield Label(Text("never overwrites a file · Esc closes", style="dim"))

    def on_mount(self) -> None:
        self.query_one("#save-name", Input).focus()

    @on(Button.Pressed, "#save")
    @on(Input.Submitted)
    def _save(self) -> None:
        path = self.query_one("#save-path", Input).value.strip()
        if not path:
            self.notify("give the profile a file name", severity="warning")
            return
        self.dismiss((path, self.query_one("#save-name", Input).value.strip(), self.query_one("#save-description", Input).value.strip()))

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
