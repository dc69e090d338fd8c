"""Abort a run's worker thread at once: what a second Ctrl-C does to the CLI's main thread.

A thread cannot be killed, but it can be handed an exception: CPython raises it in that thread at its next
bytecode (after the torch operation under way). The runner already treats KeyboardInterrupt as "abort
now": it keeps the latents of the last finished step and cleans up in its `finally` blocks. The race with
a worker that is just returning is closed by a lock: the exception is only sent while the worker is inside
`armed()`, and leaving it clears one still pending.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from typing import Iterator, Optional


def _set_async_exc(thread_id: int, exc: Optional[type]) -> int:
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else ctypes.c_void_p(0))


class Interrupter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread_id: Optional[int] = None
        self.sent = False

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        """Around the work to abort, in the worker thread. A KeyboardInterrupt that arrives after the work is
        done is cleared here, so it can never escape into the thread pool."""
        with self._lock:
            self._thread_id = threading.get_ident()
        try:
            yield
        finally:
            with self._lock:
                if self.sent:
                    _set_async_exc(self._thread_id, None)  # clear it if it is still pending
                self._thread_id = None

    def interrupt(self) -> bool:
        """Raise KeyboardInterrupt in the armed worker; False when no work is under way."""
        with self._lock:
            if self._thread_id is None or self.sent:
                return False
            self.sent = _set_async_exc(self._thread_id, KeyboardInterrupt) == 1
            return self.sent
