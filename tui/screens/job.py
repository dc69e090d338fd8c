"""Job screen: what to make. Every field is validated by the same rules as the CLI before planning."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.suggester import SuggestFromList
from textual.widgets import Button, Footer, Input, Label, Select

from lowvram.errors import UserError
from lowvram.job import Job
from tui.form import (
    CUSTOM,
    FIELDS,
    KNOWN_MODELS,
    PRESETS,
    FormErrors,
    job_from_values,
    preset_for,
    values_from_job,
)
from tui.widgets.form_select import FormSelect
from tui.widgets.title_bar import TitleBar

PRESET_OPTIONS = [(f"{name} {w}x{h}", name) for name, (w, h) in PRESETS.items()] + [("custom W x H", CUSTOM)]
TEACACHE_OPTIONS = [("off", "off"), ("threshold", "threshold"), ("target speed-up", "speedup")]
KEPT_ON_PROFILE_LOAD = ("prompt", "image", "seed", "out")
# Which row shows a field's error (width/height share the resolution row, etc.).
ROW_OF = {"width": "preset", "height": "preset", "steps": "frames", "seed": "guidance", "teacache_value": "teacache_mode"}


class JobScreen(Screen):
    BINDINGS = [
        Binding("ctrl+r", "plan", "Plan", priority=True),
        Binding("ctrl+l", "load_profile", "Load profile", priority=True),
        Binding("ctrl+s", "save_profile", "Save profile", priority=True),
        # Up/down move between fields like a form (FormSelect does the same; Enter opens its list).
        Binding("down", "app.focus_next", "Next field", show=False),
        Binding("up", "app.focus_previous", "Previous field", show=False),
    ]

    def __init__(self, job: Job, profile: str = "") -> None:
        super().__init__()
        self.initial = job
        self.profile = profile
        self.base = job  # keeps the settings the form does not show

    def compose(self) -> ComposeResult:
        v = values_from_job(self.initial)
        yield TitleBar()
        with VerticalScroll(id="form"):
            yield from self._row("model", "Model", Input(v["model"], id="model", compact=True, suggester=SuggestFromList(KNOWN_MODELS), placeholder="tiny-random, wan2.1-t2v-1.3b, folder or hub id"))
            yield from self._row("prompt", "Prompt", Input(v["prompt"], id="prompt", compact=True, placeholder="what the video should show"))
            yield from self._row("negative", "Negative", Input(v["negative"], id="negative", compact=True, placeholder="what to avoid (optional)"))
            yield from self._row("image", "Image (I2V)", Input(v["image"], id="image", compact=True, placeholder="first frame, for image-to-video models"))
            yield from self._row(
                "preset",
                "Resolution",
                FormSelect(PRESET_OPTIONS, value=v["preset"], allow_blank=False, compact=True, id="preset"),
                Input(v["width"], id="width", compact=True, classes="num"),
                Label("x", classes="sep"),
                Input(v["height"], id="height", compact=True, classes="num"),
            )
            yield from self._pair("frames", "Frames", "steps", "Steps", v)
            yield from self._pair("guidance", "Guidance", "seed", "Seed", v)
            yield from self._row(
                "teacache_mode",
                "TeaCache",
                FormSelect(TEACACHE_OPTIONS, value=v["teacache_mode"], allow_blank=False, compact=True, id="teacache_mode"),
                Input(v["teacache_value"], id="teacache_value", compact=True, classes="num", placeholder="value"),
            )
            yield from self._row("out", "Output", Input(v["out"], id="out", compact=True, placeholder="default: outputs/<prompt>-seed<N>.mp4"))
            yield from self._row(
                "profile",
                "Profile",
                Input(self.profile, id="profile", compact=True, placeholder="profile.toml"),
                Button("Load", id="load-profile", compact=True),
                Button("Save", id="save-profile", compact=True),
            )
            yield Label("", id="form-error", classes="field-error")
            with Horizontal(id="form-buttons"):
                yield Button("Plan ▸", id="plan", variant="primary", compact=True)
        yield Footer()

    def _pair(self, key: str, label: str, key2: str, label2: str, values: dict[str, str]):
        """Two short number fields on one row; errors of either show under the row."""
        yield from self._row(
            key,
            label,
            Input(values[key], id=key, compact=True, classes="num"),
            Label(label2, classes="label2"),
            Input(values[key2], id=key2, compact=True, classes="num"),
        )

    def _row(self, key: str, label: str, *widgets):
        with Vertical(classes="field", id=f"row-{key}"):
            with Horizontal(classes="field-row"):
                yield Label(label, classes="field-label")
                yield from widgets
            yield Label("", classes="field-error", id=f"error-{key}")

    def on_mount(self) -> None:
        self.query_one("#prompt", Input).focus()
        self._sync_teacache()

    # -- form values -----------------------------------------------------------------------------

    def values(self) -> dict[str, str]:
        out = {}
        for key in FIELDS:
            widget = self.query_one(f"#{key}")
            out[key] = str(widget.value) if widget.value is not Select.NULL else ""
        return out

    def fill(self, job: Job) -> None:
        self.base = job
        for key, value in values_from_job(job).items():
            widget = self.query_one(f"#{key}")
            widget.value = value
        self.clear_errors()

    def clear_errors(self) -> None:
        for label in self.query(".field-error").results(Label):
            label.update("")
            label.display = False

    def show_errors(self, errors: dict[str, str]) -> None:
        self.clear_errors()
        by_row: dict[str, list[str]] = {}
        for key, message in errors.items():
            row = ROW_OF.get(key, key)
            by_row.setdefault(row if self.query(f"#error-{row}") else "form", []).append(message)
        for row, messages in by_row.items():
            label = self.query_one(f"#error-{row}" if row != "form" else "#form-error", Label)
            label.update("\n".join(messages))
            label.display = True
        first = next(iter(errors))
        focus = self.query(f"#{first}")
        if focus:
            focus.first().focus()

    def read_job(self) -> Job | None:
        try:
            job = job_from_values(self.values(), base=self.base)
        except FormErrors as exc:
            self.show_errors(exc.errors)
            self.notify(next(iter(exc.errors.values())), title="Invalid job", severity="error")
            return None
        self.clear_errors()
        return job

    # -- reactions ------------------------------------------------------------------------------

    @on(Select.Changed, "#preset")
    def _preset_changed(self, event: Select.Changed) -> None:
        if event.value in PRESETS:
            w, h = PRESETS[event.value]
            self.query_one("#width", Input).value = str(w)
            self.query_one("#height", Input).value = str(h)

    @on(Input.Changed, "#width, #height")
    def _size_changed(self) -> None:
        try:
            preset = preset_for(int(self.query_one("#width", Input).value), int(self.query_one("#height", Input).value))
        except ValueError:
            preset = CUSTOM
        select = self.query_one("#preset", Select)
        if select.value != preset:
            select.value = preset

    @on(Select.Changed, "#teacache_mode")
    def _sync_teacache(self) -> None:
        mode = self.query_one("#teacache_mode", Select).value
        value = self.query_one("#teacache_value", Input)
        value.disabled = mode == "off"
        value.placeholder = {"threshold": "e.g. 0.08", "speedup": "e.g. 1.5"}.get(mode, "")

    @on(Input.Changed, "#image")
    def _image_changed(self, event: Input.Changed) -> None:
        text = event.value.strip()
        label = self.query_one("#error-image", Label)
        missing = bool(text) and not Path(text).expanduser().is_file()
        label.update(f"no such file: {text}" if missing else "")
        label.display = missing

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "profile":
            self.action_load_profile()
        else:
            self.action_plan()

    @on(Button.Pressed, "#plan")
    def action_plan(self) -> None:
        job = self.read_job()
        if job is not None:
            self.app.show_plan(job)

    @on(Button.Pressed, "#load-profile")
    def action_load_profile(self) -> None:
        path = self.query_one("#profile", Input).value.strip()
        if not path:
            self.notify("type the profile's file name in the Profile field first", severity="warning")
            return
        typed = self.values()
        try:
            job, prefs = self.app.services.load_profile(path, self.base)
        except UserError as exc:
            self.notify(str(exc), title="Profile not loaded", severity="error")
            return
        self.app.planner_prefs = prefs
        self.fill(job)
        for key in KEPT_ON_PROFILE_LOAD:  # a profile holds no prompt, image, seed or output
            self.query_one(f"#{key}", Input).value = typed[key]
        self.notify(f"loaded {path}")

    @on(Button.Pressed, "#save-profile")
    def action_save_profile(self) -> None:
        path = self.query_one("#profile", Input).value.strip()
        if not path:
            self.notify("type a file name in the Profile field first, e.g. my-16gb.toml", severity="warning")
            return
        job = self.read_job()
        if job is None:
            return
        try:
            saved = self.app.services.save_profile(path, job, self.app.last_plan, self.app.last_probe, self.app.planner_prefs)
        except UserError as exc:
            self.notify(str(exc), title="Profile not saved", severity="error")
            return
        self.notify(f"saved {saved}")
