"""A compact Select for the job form: Enter/Space open it; Up/Down move between fields like the inputs."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import Select


class FormSelect(Select):
    BINDINGS = [
        Binding("enter,space", "show_overlay", "Choose", show=False),
        Binding("down", "app.focus_next", "Next field", show=False),
        Binding("up", "app.focus_previous", "Previous field", show=False),
    ]
