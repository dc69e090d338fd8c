"""Measure memory: snapshots of VRAM and RAM, and a sampler thread that tracks peaks and emits samples."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import psutil

from lowvram.telemetry import MemorySample


def _cuda():
    try:
        import torch

        return torch.cuda if torch.cuda.is_available() else None
    except Exception:  # torch without CUDA support
        return None


def allocator_retries() -> int:
    """How often torch's CUDA caching allocator has hit its limit, freed its cache (a device-wide sync) and tried
    again, on this process's GPU (one per process); 0 without CUDA or before the first CUDA use."""
    cuda = _cuda()
    if cuda is None or not cuda.is_initialized():
        return 0
    return cuda.memory_stats().get("num_alloc_retries", 0)


def process_ram() -> tuple[int, int]:
    """(resident set, of which file-backed pages) of this process. The file-backed part is memory-mapped
    weights in the page cache, which the kernel can drop and read again; the rest (heap, page-locked
    buffers) is what the planner's RAM budget counts. Linux reports both; elsewhere all is counted."""
    rss = psutil.Process().memory_info().rss
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssFile:"):
                    return rss, int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, 0


@dataclass(frozen=True)
class MemorySnapshot:
    vram_allocated: int = 0
    vram_reserved: int = 0
    vram_free: int = 0
    vram_total: int = 0
    ram_used: int = 0  # the process's RAM that cannot be dropped: RSS minus memory-mapped file pages
    ram_available: int = 0
    ram_mapped: int = 0  # memory-mapped file pages (weights in the page cache)

    device: str = ""

    @classmethod
    def take(cls, device: str = "") -> "MemorySnapshot":
        """Now: `device`'s VRAM ("" the current GPU) and this process's RAM."""
        cuda = _cuda()
        alloc = reserved = free = total = 0
        if cuda is not None:
            index = device or None
            alloc = cuda.memory_allocated(index)
            reserved = cuda.memory_reserved(index)
            free, total = cuda.mem_get_info(index)
        vm = psutil.virtual_memory()
        rss, mapped = process_ram()
        return cls(alloc, reserved, free, total, rss - mapped, vm.available, mapped, device)


class MemorySampler:
    """Samples memory every `interval` seconds on a daemon thread; tracks the RAM peak per window.

    VRAM peaks come from torch's own counters (exact); RAM has no peak counter, so it is sampled.
    `devices`: the GPUs a plan on several cards uses ("cuda:0", "cuda:1"): one MemorySample per GPU each time,
    and peaks per GPU; () samples the current GPU alone.
    """

    def __init__(self, emit: Callable[[MemorySample], None], interval: float = 0.25, clock: Optional[Callable[[], float]] = None,
                 devices: tuple[str, ...] = ()):
        self._devices = tuple(devices) or ("",)
        self._emit = emit
        self._interval = interval
        self._clock = clock or time.perf_counter
        self._t0 = self._clock()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._ram_peak = 0
        self._thread = threading.Thread(target=self._loop, name="lowvram-memory", daemon=True)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def sample(self) -> MemorySnapshot:
        """One snapshot per GPU (all emitted); returns the first."""
        snaps = [MemorySnapshot.take(d) for d in self._devices]
        with self._lock:
            self._ram_peak = max([self._ram_peak] + [s.ram_used for s in snaps])
        t = self._clock() - self._t0
        for snap in snaps:
            self._emit(MemorySample(t=t, **snap.__dict__))
        return snaps[0]

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sample()
            except Exception:  # a failed sample must never kill a run
                pass

    def start_window(self) -> None:
        """Start a new peak window (one per stage)."""
        cuda = _cuda()
        if cuda is not None:
            for d in self._devices:
                cuda.reset_peak_memory_stats(d or None)
        with self._lock:
            rss, mapped = process_ram()
            self._ram_peak = rss - mapped

    def window_peaks(self) -> tuple[int, int]:
        """(peak VRAM allocated on the fullest GPU, peak RAM: RSS minus memory-mapped pages) since start_window."""
        self.sample()
        vram = max(self.vram_peaks().values(), default=0)
        with self._lock:
            return vram, self._ram_peak

    def vram_peaks(self) -> dict[str, int]:
        """Peak VRAM allocated per sampled GPU since start_window ({} without CUDA)."""
        cuda = _cuda()
        if cuda is None:
            return {}
        return {d or "cuda": cuda.max_memory_allocated(d or None) for d in self._devices}
