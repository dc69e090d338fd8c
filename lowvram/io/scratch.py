"""Temporary files and folders that a crash cannot leave behind for ever.

Every scratch entry lowvram makes is named `.lowvram-<host>-<pid>-<start>-<random>.<label>`: hidden, with an
unpredictable part, created exclusively (an existing name or a planted link is never written through), and
naming the process that owns it (host hash, pid and the process's start time, so a reused pid is told apart).
`sweep(folder)` removes the entries of processes that are gone (kill -9, the OOM killer, a power cut): each
writer sweeps its folder before it writes, so the next start cleans up after a crash. Entries of other hosts
(a shared network folder) are left alone: their owners cannot be checked from here.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

PREFIX = ".lowvram-"
_NAME = re.compile(r"^\.lowvram-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]{12}\.")
# Start times are compared in centiseconds; psutil derives them from boot time + ticks (stable, but allow rounding).
_START_SLACK = 2


@functools.lru_cache(maxsize=1)
def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _start_time(pid: int) -> Optional[int]:
    """The process's start time in centiseconds, or None when there is no such process (or it is a zombie)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return round(proc.create_time() * 100)
    except psutil.NoSuchProcess:  # ZombieProcess is one too
        return None
    except psutil.AccessDenied:  # exists, not ours to inspect: treat as alive
        return -1


@functools.lru_cache(maxsize=1)
def _own_start() -> int:
    return _start_time(os.getpid()) or 0


def owner_tag() -> str:
    """This process, as scratch names and claim files record it."""
    return f"{_host()}-{os.getpid()}-{_own_start()}"


def owner_alive(tag: str) -> bool:
    """Whether the process a tag names still runs. Tags of other hosts count as alive (cannot be checked)."""
    parts = tag.split("-")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return True  # not a tag we wrote: never treat it as stale
    host, pid, start = parts[0], int(parts[1]), int(parts[2])
    if host != _host():
        return True
    now = _start_time(pid)
    return now is not None and (now == -1 or abs(now - start) <= _START_SLACK)


def scratch_name(label: str) -> str:
    return f"{PREFIX}{owner_tag()}-{secrets.token_hex(6)}.{label}"


def owner_of(name: str) -> Optional[str]:
    """The owner tag in a scratch name, or None when the name is not one of ours."""
    m = _NAME.match(name)
    return f"{m['host']}-{m['pid']}-{m['start']}" if m else None


def new_file(folder: Path, label: str) -> Path:
    """Create an empty scratch file in `folder`: exclusively, never following a link (the mode follows the umask,
    so a file later published under its final name has ordinary permissions)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        path = Path(folder) / scratch_name(label)
        try:
            os.close(os.open(path, flags, 0o666))
            return path
        except FileExistsError:  # 48 random bits: only a planted name collides
            continue


def new_dir(folder: Path, label: str) -> Path:
    """Create a scratch folder in `folder` (mkdir is exclusive and does not follow a link at the name)."""
    while True:
        path = Path(folder) / scratch_name(label)
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue


def remove(path: Path) -> None:
    """Remove a file, a link (not its target) or a folder tree; nothing if it is gone already."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


@contextmanager
def scratch_file(folder: Path, label: str) -> Iterator[Path]:
    """A scratch file that is removed when the block ends, unless it was renamed away (published) inside it."""
    path = new_file(folder, label)
    try:
        yield path
    finally:
        remove(path)


def sweep(folder: Path) -> list[Path]:
    """Remove the scratch entries in `folder` whose owner process is gone. Returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no such folder, or not readable: nothing of ours can be in it
        return removed
    for entry in entries:
        tag = owner_of(entry.name)
        if tag is None or owner_alive(tag):
            continue
        remove(Path(entry.path))
        removed.append(Path(entry.path))
    return removed
