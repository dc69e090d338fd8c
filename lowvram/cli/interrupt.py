"""Stopping a long run from outside: Ctrl-C (SIGINT), `kill` (SIGTERM) and a closed terminal (SIGHUP).

The first of any of them asks the run to stop at the next safe point (a step boundary, or before the write):
the latents are kept for --resume and the command exits with 130. A second one aborts at once, except while the
latents or the result are being written (lowvram.io.critical): that write is short and finishes first. After a
SIGHUP the terminal is gone: output meant for it goes nowhere instead of failing the run.
A signal ignored when lowvram started (`nohup` ignores SIGHUP) stays ignored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator, TextIO

from lowvram.io import critical

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
if hasattr(signal, "SIGHUP"):
    NAMES[signal.SIGHUP] = "SIGHUP (terminal closed)"


def _is_hangup(signum: int) -> bool:
    return hasattr(signal, "SIGHUP") and signum == signal.SIGHUP


@contextlib.contextmanager
def stop_like_ctrl_c() -> Iterator[None]:
    """While a command runs outside a generation (parsing, planning): SIGTERM and SIGHUP end it as Ctrl-C does
    (exit 130, no traceback) instead of killing it without a word. Ignored signals stay ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    terminal = _terminal_fds()

    def on_signal(signum, frame):
        if _is_hangup(signum):
            _detach_from_terminal(terminal)
        raise KeyboardInterrupt

    previous = {}
    for signum in STOP_SIGNALS:
        if signum != signal.SIGINT and signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _terminal_fds() -> tuple[int, ...]:
    """stdout/stderr that are on a terminal, found while it is there (after a hang-up isatty() says no)."""
    out = []
    for fd in (1, 2):
        try:
            if os.isatty(fd):
                out.append(fd)
        except OSError:
            pass
    return tuple(out)


def _detach_from_terminal(fds: tuple[int, ...]) -> None:
    """The terminal hung up: writing to it now fails (EIO). Point the fds that were on it at /dev/null."""
    if not fds:
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            os.dup2(devnull, fd)
    finally:
        os.close(devnull)


@contextlib.contextmanager
def cancel_on_interrupt(stream: TextIO | None = None) -> Iterator[threading.Event]:
    """Yield the cancel event the first stop signal sets. Outside the main thread no handler can be installed."""
    cancel = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield cancel
        return
    out = stream or sys.stderr
    terminal = _terminal_fds()

    def say(text: str) -> None:
        try:
            out.write(text)
            out.flush()
        except (OSError, ValueError):  # the terminal is gone (or the stream closed): the run goes on
            pass

    def on_signal(signum, frame):
        name = NAMES.get(signum, f"signal {signum}")
        if _is_hangup(signum):
            _detach_from_terminal(terminal)
        if not cancel.is_set():
            cancel.set()
            say(f"\n{name}: stopping at the next step (the latents are kept for --resume); press Ctrl-C again to stop at once\n")
            return
        if critical.active():
            critical.defer_abort()
            say(f"\n{name}: finishing the write in progress first (a moment)\n")
            return
        raise KeyboardInterrupt

    previous = {}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue  # nohup and friends: the user asked for this signal to be ignored
        previous[signum] = signal.signal(signum, on_signal)
    try:
        yield cancel
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
