"""ModelRef: what --model (and --base) resolved to, before anything loads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ModelRef:
    """What the user asked for, resolved. `kind` is 'demo', 'local' or 'hub'."""

    name: str  # as the user wrote it
    kind: str
    location: str  # folder path (demo/local) or hub id
    # Single-file transformer(s) replacing the pipeline's (a high,low pair for Wan2.2 A14B); the rest of the
    # pipeline comes from `location`, the base (named `base`). See lowvram.models.single_file.
    files: tuple[str, ...] = ()
    base: Optional[str] = None
    stored: tuple = ()  # the files' StoredWeights (lowvram.models.weights_header), read from their headers

    @property
    def is_demo(self) -> bool:
        return self.kind == "demo"
