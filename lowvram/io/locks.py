"""One lock per cache entry, between processes: two runs that need the same missing entry fill it once.

A file lock (`<entry>.lock` beside the entry, through the filelock library) that the system releases when its
process dies, so a killed filler never blocks the next one. A cache is an optimisation: when the lock cannot be
taken (a read-only or full cache folder) or the wait times out, the caller goes on without it.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

log = logging.getLogger(__name__)

FILL_WAIT_S = 30 * 60  # longer than quantizing or converting a 14B transformer on a slow machine


def lock_entry(entry: Path, wait_s: float = FILL_WAIT_S) -> Optional[Any]:
    """Take the entry's lock, waiting for a process that holds it; None when that is not possible."""
    from filelock import FileLock, Timeout

    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(entry.parent / f"{entry.name}.lock"), timeout=wait_s, thread_local=False)
        lock.acquire()
    except Timeout:
        log.warning("waited %d s for another process to fill %s; filling it here too", wait_s, entry)
        return None
    except OSError as exc:
        log.warning("cannot lock the cache entry %s: %s", entry, exc)
        return None
    return lock


def unlock(lock: Optional[Any]) -> None:
    if lock is not None:
        lock.release()


@contextmanager
def entry_locked(entry: Path, wait_s: float = FILL_WAIT_S) -> Iterator[None]:
    lock = lock_entry(entry, wait_s)
    try:
        yield
    finally:
        unlock(lock)
