"""Ctrl-C for long runs: the first one asks the run to stop at the next step boundary (latents kept
for --resume), the second one aborts at once. SIGTERM aborts like a second Ctrl-C, so the cleanup in
`finally` blocks (temporary video files, GPU memory) still runs."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator, TextIO


@contextlib.contextmanager
def cancel_on_interrupt(stream: TextIO | None = None) -> Iterator[threading.Event]:
    """Yield the cancel event a Ctrl-C sets. Outside the main thread no handler can be installed."""
    cancel = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield cancel
        return
    out = stream or sys.stderr

    def on_sigint(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        out.write("\ncancelling at the next step boundary (latents are kept for --resume); Ctrl-C again to abort now\n")
        out.flush()

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint), signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield cancel
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
