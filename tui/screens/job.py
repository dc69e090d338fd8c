"""Job screen: what to make. Every field is checked by the same rules as the CLI, all at once, in the form's
own words; after a first attempt to plan, errors update as fields change and vanish when fixed."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.events import DescendantFocus
from textual.screen import Screen
from textual.suggester import SuggestFromList
from textual.widgets import Button, Footer, Input, Label, Select, Static

from lowvram.errors import UserError
from lowvram.job import Job
from tui.form import (
    CUSTOM,
    FIELDS,
    KNOWN_MODELS,
    PRESETS,
    FormCheck,
    check_values,
    preset_for,
    values_from_job,
)
from tui.help import FIELD_HELP, job_summary
from tui.layout import WideLayout
from tui.screens.profiles import ProfilePicker, SaveProfile
from tui.widgets.form_select import FormSelect
from tui.widgets.title_bar import TitleBar

PRESET_OPTIONS = [(f"{name} {w}x{h}", name) for name, (w, h) in PRESETS.items()] + [("custom W x H", CUSTOM)]
TEACACHE_OPTIONS = [("off", "off"), ("threshold", "threshold"), ("target speed-up", "speedup")]
KEPT_ON_PROFILE_LOAD = ("prompt", "image", "seed", "out")
# Which row shows a field's message (width/height share the resolution row, etc.).
ROW_OF = {"width": "preset", "height": "preset", "steps": "frames", "seed": "guidance", "teacache_value": "teacache_mode"}
ROWS = ("model", "prompt", "negative", "image", "preset", "frames", "guidance", "teacache_mode", "out", "profile")


class JobScreen(WideLayout, Screen):
    SUB_TITLE = "new job"
    BINDINGS = [
        Binding("ctrl+r", "plan", "Plan", priority=True),
        Binding("ctrl+l", "pick_profile", "Profiles", priority=True),
        Binding("ctrl+s", "save_profile", "Save profile", priority=True),
        # Up/down move between fields like a form (FormSelect does the same; Enter opens its list).
        Binding("down", "app.focus_next", "Next field", show=False),
        Binding("up", "app.focus_previous", "Previous field", show=False),
    ]

    def __init__(self, job: Job, profile: str = "", profile_name: str = "") -> None:
        super().__init__()
        self.initial = job
        self.profile = profile  # the path of the loaded profile, "" for none
        self.profile_name = profile_name or (Path(profile).stem if profile else "")
        self.base = job  # keeps the settings the form does not show
        self.touched = False  # after a first attempt to plan, errors follow every change

    def compose(self) -> ComposeResult:
        v = values_from_job(self.initial)
        yield TitleBar()
        with Horizontal(id="job-layout"):
            with VerticalScroll(id="form"):
                yield from self._row("model", "Model", Input(v["model"], id="model", compact=True, suggester=SuggestFromList(KNOWN_MODELS, case_sensitive=False), placeholder="tiny-random, wan2.1-t2v-1.3b, folder or hub id"))
                yield from self._row("prompt", "Prompt", Input(v["prompt"], id="prompt", compact=True, placeholder="what the video should show"))
                yield from self._row("negative", "Negative", Input(v["negative"], id="negative", compact=True, placeholder="what to avoid (empty: nothing)"))
                yield from self._row("image", "Image (I2V)", Input(v["image"], id="image", compact=True, placeholder="first frame, for image-to-video models"))
                yield from self._row("loras", "LoRAs", Input(v["loras"], id="loras", compact=True, placeholder="FILE[:SCALE][@high|@low]; ... (optional)"))
                yield from self._row(
                    "preset",
                    "Resolution",
                    FormSelect(PRESET_OPTIONS, value=v["preset"], allow_blank=False, compact=True, id="preset"),
                    Input(v["width"], id="width", compact=True, classes="num"),
                    Label("x", classes="sep"),
                    Input(v["height"], id="height", compact=True, classes="num"),
                )
                yield from self._pair("frames", "Frames", "steps", "Steps", v)
                yield from self._pair("guidance", "Guidance", "seed", "Seed", v, placeholder2="random")
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
                    Label(self._profile_text(), id="profile-name"),
                    Button("Choose… ^l", id="pick-profile", compact=True),
                    Button("Save… ^s", id="save-profile", compact=True),
                )
                yield Label("", id="form-error", classes="field-error")
                with Horizontal(id="form-buttons"):
                    yield Button("Plan ▸ ^r", id="plan", variant="primary", compact=True)
            with Vertical(id="side"):
                yield Static("", id="side-help")
                yield Static("", id="side-job")
        yield Static("", id="field-help")
        yield Footer()

    def _pair(self, key: str, label: str, key2: str, label2: str, values: dict[str, str], placeholder2: str = ""):
        """Two short number fields on one row; messages of either show under the row."""
        yield from self._row(
            key,
            label,
            Input(values[key], id=key, compact=True, classes="num"),
            Label(label2, classes="label2"),
            Input(values[key2], id=key2, compact=True, classes="num", placeholder=placeholder2),
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
        self.refresh_checks()

    # -- form values -----------------------------------------------------------------------------

    def values(self) -> dict[str, str]:
        out = {}
        for key in FIELDS:
            widget = self.query_one(f"#{key}")
            out[key] = str(widget.value) if widget.value is not Select.NULL else ""
        return out

    def fill(self, job: Job) -> None:
        self.base = job
        with self.prevent(Input.Changed, Select.Changed):
            for key, value in values_from_job(job).items():
                self.query_one(f"#{key}").value = value
        self._sync_teacache()
        self.refresh_checks()

    def check(self, seed: int | None = None) -> FormCheck:
        return check_values(self.values(), base=self.base, seed=seed)

    def show_messages(self, check: FormCheck) -> None:
        """Errors (after a first attempt) and warnings under their rows; rows without any are hidden."""
        by_row: dict[str, list[Text]] = {}
        errors = check.errors if self.touched else {}
        for key, message in errors.items():
            row = ROW_OF.get(key, key)
            by_row.setdefault(row if row in ROWS else "form", []).append(Text(message, style="bold red"))
        for key, message in check.warnings.items():
            if key not in errors:
                by_row.setdefault(ROW_OF.get(key, key), []).append(Text("⚠ " + message, style="yellow"))
        for row in (*ROWS, "form"):
            label = self.query_one("#form-error" if row == "form" else f"#error-{row}", Label)
            lines = by_row.get(row, [])
            label.update(Text("\n").join(lines))
            label.display = bool(lines)

    def refresh_checks(self) -> FormCheck:
        check = self.check()
        if not self.touched:  # before the first attempt only the image path is checked while typing
            image = self.values()["image"].strip()
            if image and not Path(image).expanduser().is_file():
                check.warnings["image"] = f"no such file: {image}"
        self.show_messages(check)
        self._update_side()
        return check

    def read_job(self) -> Job | None:
        """The job of the form (an empty seed draws a random one), or None with every problem shown."""
        from lowvram.models.defaults import random_seed

        self.touched = True
        check = self.check(seed=random_seed())
        self.show_messages(check)
        if check.job is None:
            first = min(check.errors, key=lambda k: FIELDS.index(k) if k in FIELDS else len(FIELDS))  # in reading order
            focus = self.query(f"#{first}")
            if focus:
                focus.first().focus()
            count = len(check.errors)
            self.notify(f"{count} field{'s' if count > 1 else ''} to fix: see the red lines", title="Not yet", severity="error")
            return None
        return check.job

    # -- the help for the focused field, and the job in words -------------------------------------

    @on(DescendantFocus)
    def _focused(self, event: DescendantFocus) -> None:
        self._update_side()

    def _update_side(self) -> None:
        focused = self.focused
        key = getattr(focused, "id", None) or ""
        if key in ("pick-profile", "save-profile"):
            key = "profile"
        text = FIELD_HELP.get(key, "")
        self.query_one("#field-help", Static).update(Text(text, style="dim", no_wrap=True, overflow="ellipsis"))
        side = Text()
        if text:
            side.append("About this field\n", style="bold underline")
            side.append(text + "\n\n")
        self.query_one("#side-help", Static).update(side)
        summary = Text("This job\n", style="bold underline")
        summary.append("\n".join(job_summary(self.values())))
        self.query_one("#side-job", Static).update(summary)

    # -- reactions ------------------------------------------------------------------------------

    @on(Input.Changed)
    @on(Select.Changed)
    def _changed(self) -> None:
        self.refresh_checks()

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

    @on(Input.Blurred, "#image")
    def _image_left(self) -> None:
        self.follow_image()

    def follow_image(self) -> None:
        """A readable image sets the video size to its shape, at the current size's area (as the CLI does)."""
        from lowvram.models.advice import image_size, size_for_image, size_multiple

        values = self.values()
        size = image_size(values["image"].strip()) if values["image"].strip() else None
        if size is None:
            return
        try:
            area = int(values["width"]) * int(values["height"])
        except ValueError:
            return
        width, height = size_for_image(*size, area, size_multiple(values["model"].strip(), values.get("base") or None))
        if (str(width), str(height)) != (values["width"], values["height"]):
            self.query_one("#width", Input).value, self.query_one("#height", Input).value = str(width), str(height)
            self.notify(f"video size {width}x{height}: the shape of the image ({size[0]}x{size[1]})", title="Resolution")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "image":
            self.follow_image()
        self.action_plan()

    @on(Button.Pressed, "#plan")
    def action_plan(self) -> None:
        job = self.read_job()
        if job is not None:
            self.app.show_plan(job, random_seed=not self.values()["seed"].strip())

    # -- profiles -------------------------------------------------------------------------------

    def _profile_text(self) -> Text:
        if not self.profile:
            return Text("none: ^l picks one", style="dim")
        return Text(self.profile_name, style="bold")

    @on(Button.Pressed, "#pick-profile")
    def action_pick_profile(self) -> None:
        def picked(path: str | None) -> None:
            if path:
                self.load_profile(path)

        self.app.push_screen(ProfilePicker(self.app.services.profiles()), picked)

    def load_profile(self, path: str) -> None:
        typed = self.values()
        try:
            job, prefs = self.app.services.load_profile(path, self.base)
        except UserError as exc:
            self.notify(str(exc), title="Profile not loaded", severity="error", timeout=10)
            return
        from lowvram.profiles.library import list_profiles

        self.app.planner_prefs = prefs
        self.fill(job)
        with self.prevent(Input.Changed):
            for key in KEPT_ON_PROFILE_LOAD:  # a profile holds no prompt, image, seed or output
                self.query_one(f"#{key}", Input).value = typed[key]
        self.profile = path
        entry = next((e for e in list_profiles([("", Path(path).expanduser().parent)]) if Path(e.path) == Path(path).expanduser()), None)
        self.profile_name = entry.name if entry else Path(path).stem
        self.query_one("#profile-name", Label).update(self._profile_text())
        self.refresh_checks()
        self.notify(f"{self.profile_name} ({path})", title="Profile loaded")

    @on(Button.Pressed, "#save-profile")
    def action_save_profile(self) -> None:
        job = self.read_job()
        if job is None:
            return

        def chosen(answer: tuple[str, str, str] | None) -> None:
            if not answer:
                return
            path, name, description = answer
            try:
                saved = self.app.services.save_profile(path, job, self.app.last_plan, self.app.last_probe, self.app.planner_prefs, name=name, description=description)
            except UserError as exc:
                self.notify(str(exc), title="Profile not saved", severity="error", timeout=10)
                return
            self.profile, self.profile_name = saved, name or Path(saved).stem
            self.query_one("#profile-name", Label).update(self._profile_text())
            self.notify(f"saved {saved}", title="Profile saved")

        self.app.push_screen(SaveProfile(job), chosen)
