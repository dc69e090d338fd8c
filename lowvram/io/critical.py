"""Short writes that an abort must not cut in half: keeping the latents, publishing a video with its sidecar.

The command line's signal handlers (lowvram.cli.interrupt) ask `shielded()` before they abort a run: inside a
shielded block a second Ctrl-C / SIGTERM / SIGHUP is only recorded, and the block finishes. Shielded blocks are
the last writes of a run (the run ends right after them), so the recorded abort needs no delivery afterwards.
Signal handlers run in the main thread between bytecodes: a plain counter is enough.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

_depth = 0
_deferred = 0


@contextmanager
def shielded() -> Iterator[None]:
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1


def active() -> bool:
    """Whether a shielded write is running now."""
    return _depth > 0


def defer_abort() -> None:
    """Called by a signal handler instead of aborting, while `active()`."""
    global _deferred
    _deferred += 1


def deferred_aborts() -> int:
    """How many aborts were held back so far (for tests and messages)."""
    return _deferred
