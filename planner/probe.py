"""What this machine has: GPU, VRAM (free, live), RAM, swap, disk. The planner's only view of the hardware.

`probe_hardware()` is the one function here with side effects; everything else builds probes from
numbers (what-if planning with `--vram/--ram`, and the tests' typical machines).
"""

from __future__ import annotations

import platform
import shutil
from dataclasses import asdict, dataclass, replace
from typing import Optional

GIB = 1024**3


@dataclass(frozen=True)
class HardwareProbe:
    """One look at the machine. All sizes in bytes. Without CUDA the GPU fields are None / 0."""

    gpu_name: Optional[str]
    compute_capability: Optional[tuple[int, int]]
    vram_total: int
    vram_free: int  # live: other programs' use counts (torch.cuda.mem_get_info)
    ram_total: int
    ram_available: int
    swap_total: int = 0
    swap_free: int = 0
    disk_free: int = 0  # of the lowvram cache folder, where disk offload writes
    os: str = ""
    source: str = "probe"  # "probe" (measured here) or "synthetic" (what-if / tests)

    def __post_init__(self) -> None:
        for name in ("vram_total", "vram_free", "ram_total", "ram_available", "swap_total", "swap_free", "disk_free"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.compute_capability is not None:
            object.__setattr__(self, "compute_capability", tuple(self.compute_capability))

    @property
    def has_gpu(self) -> bool:
        return self.gpu_name is not None and self.vram_total > 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HardwareProbe":
        data = dict(data)
        if data.get("compute_capability") is not None:
            data["compute_capability"] = tuple(data["compute_capability"])
        return cls(**data)


def probe_hardware() -> HardwareProbe:
    """Measure this machine now. Never raises for a missing or broken GPU: that gives a CPU-only probe."""
    import psutil

    from lowvram.paths import cache_dir

    vm = psutil.virtual_memory()
    swap = psutil.swap_memory()
    gpu_name, cc, vram_total, vram_free = _probe_cuda()
    return HardwareProbe(
        gpu_name=gpu_name,
        compute_capability=cc,
        vram_total=vram_total,
        vram_free=vram_free,
        ram_total=int(vm.total),
        ram_available=int(vm.available),
        swap_total=int(swap.total),
        swap_free=int(swap.free),
        disk_free=_disk_free(cache_dir()),
        os=f"{platform.system()} {platform.release()}".strip(),
    )


def _probe_cuda() -> tuple[Optional[str], Optional[tuple[int, int]], int, int]:
    try:
        import torch

        if not torch.cuda.is_available():
            return None, None, 0, 0
        index = torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        return torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index)), int(total), int(free)
    except Exception:  # a broken driver must not stop planning: plan for the CPU instead
        return None, None, 0, 0


def _disk_free(path) -> int:
    """Free bytes on the file system of `path` (or of its nearest existing parent)."""
    for candidate in (path, *path.parents):
        try:
            return int(shutil.disk_usage(candidate).free)
        except OSError:
            continue
    return 0


def synthetic_probe(
    vram_gib: float,
    ram_gib: float,
    gpu_name: Optional[str] = "what-if GPU",
    compute_capability: Optional[tuple[int, int]] = (8, 6),
    disk_free_gib: float = 500.0,
    os: str = "what-if",
) -> HardwareProbe:
    """A probe from numbers: all of the card's VRAM and all RAM free. vram_gib=0 gives a CPU-only probe.

    The default compute capability 8.6 (Ampere) does not promise fast fp8: a what-if plan never
    assumes hardware features it was not told about.
    """
    if vram_gib < 0 or ram_gib <= 0:
        raise ValueError(f"a probe needs vram_gib >= 0 and ram_gib > 0, got {vram_gib} and {ram_gib}")
    vram = int(vram_gib * GIB)
    ram = int(ram_gib * GIB)
    no_gpu = vram == 0
    return HardwareProbe(
        gpu_name=None if no_gpu else gpu_name,
        compute_capability=None if no_gpu else compute_capability,
        vram_total=vram,
        vram_free=vram,
        ram_total=ram,
        ram_available=ram,
        disk_free=int(disk_free_gib * GIB),
        os=os,
        source="synthetic",
    )


def override_probe(probe: HardwareProbe, vram_gib: Optional[float] = None, ram_gib: Optional[float] = None) -> HardwareProbe:
    """What-if on top of a real probe: keep the GPU's identity (name, compute capability), replace the sizes."""
    changes: dict = {"source": "synthetic"}
    if vram_gib is not None:
        if vram_gib == 0:
            changes.update(gpu_name=None, compute_capability=None, vram_total=0, vram_free=0)
        else:
            vram = int(vram_gib * GIB)
            changes.update(vram_total=vram, vram_free=vram, gpu_name=probe.gpu_name or "what-if GPU")
            if probe.compute_capability is None:
                changes["compute_capability"] = (8, 6)
    if ram_gib is not None:
        ram = int(ram_gib * GIB)
        changes.update(ram_total=ram, ram_available=ram)
    return replace(probe, **changes)


# Typical machines, for tests and for `lowvram plan --machine NAME`-style what-ifs.
# Consumer cards report a little less than their nominal size; the nominal size is used on purpose
# (the reserve in Preferences covers the driver's share).
TYPICAL_MACHINES: dict[str, HardwareProbe] = {
    "rtx4090-64g": synthetic_probe(24, 64, gpu_name="NVIDIA GeForce RTX 4090", compute_capability=(8, 9)),
    "rtx3090-32g": synthetic_probe(24, 32, gpu_name="NVIDIA GeForce RTX 3090", compute_capability=(8, 6)),
    "rtx4070-32g": synthetic_probe(12, 32, gpu_name="NVIDIA GeForce RTX 4070", compute_capability=(8, 9)),
    "rtx3060-16g": synthetic_probe(8, 16, gpu_name="NVIDIA GeForce RTX 3060", compute_capability=(8, 6)),
    "cpu-only-32g": synthetic_probe(0, 32),
}


def describe_probe(probe: HardwareProbe) -> list[str]:
    """Human lines for `lowvram probe` and plan explanations."""
    lines = []
    if probe.has_gpu:
        cc = ".".join(map(str, probe.compute_capability)) if probe.compute_capability else "?"
        lines.append(
            f"GPU: {probe.gpu_name} (compute capability {cc}), VRAM {probe.vram_free / GIB:.1f} GiB free "
            f"of {probe.vram_total / GIB:.1f} GiB"
        )
    else:
        lines.append("GPU: none (no CUDA device): plans run on the CPU")
    lines.append(f"RAM: {probe.ram_available / GIB:.1f} GiB available of {probe.ram_total / GIB:.1f} GiB")
    if probe.swap_total:
        lines.append(f"swap: {probe.swap_free / GIB:.1f} GiB free of {probe.swap_total / GIB:.1f} GiB (not planned on)")
    lines.append(f"disk free in the cache folder: {probe.disk_free / GIB:.1f} GiB")
    if probe.os:
        lines.append(f"OS: {probe.os}")
    if probe.source == "synthetic":
        lines.append("(what-if numbers, not measured on this machine)")
    return lines
