"""What this machine has: GPUs, VRAM (free, live), RAM, swap, disk. The planner's only view of the hardware.

`probe_hardware()` is the one function here with side effects; everything else builds probes from
numbers (what-if planning with `--vram/--ram/--gpus`, and the tests' typical machines).

A probe lists every CUDA device (`gpus`); its top-level GPU fields are the first GPU's, as they were
before probes knew more than one, so single-GPU code reads a probe as it always did.
"""

from __future__ import annotations

import platform
import shutil
from dataclasses import asdict, dataclass, replace
from typing import Optional

GIB = 1024**3


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device: its index (cuda:N), name, compute capability and VRAM in bytes."""

    index: int
    name: Optional[str]
    compute_capability: Optional[tuple[int, int]]
    vram_total: int
    vram_free: int

    def __post_init__(self) -> None:
        if self.index < 0 or self.vram_total < 0 or self.vram_free < 0:
            raise ValueError(f"GPU {self.index}: index and VRAM must be >= 0")
        if self.compute_capability is not None:
            object.__setattr__(self, "compute_capability", tuple(self.compute_capability))

    @property
    def device(self) -> str:
        return f"cuda:{self.index}"


@dataclass(frozen=True)
class HardwareProbe:
    """One look at the machine. All sizes in bytes. Without CUDA the GPU fields are None / 0.

    `gpus`: every CUDA device; the top-level gpu_name / compute_capability / vram_* fields are GPU 0's and
    win over gpus[0] (so `replace(probe, vram_free=...)` changes GPU 0). Left empty, it is GPU 0 alone.
    """

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
    gpus: tuple[GpuInfo, ...] = ()

    def __post_init__(self) -> None:
        for name in ("vram_total", "vram_free", "ram_total", "ram_available", "swap_total", "swap_free", "disk_free"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.compute_capability is not None:
            object.__setattr__(self, "compute_capability", tuple(self.compute_capability))
        gpus = tuple(g if isinstance(g, GpuInfo) else GpuInfo(**g) for g in self.gpus)
        if not self.has_gpu:
            gpus = ()
        else:  # GPU 0 is the top-level fields; the others as given, numbered in order
            first = GpuInfo(0, self.gpu_name, self.compute_capability, self.vram_total, self.vram_free)
            gpus = (first,) + tuple(replace(g, index=i) for i, g in enumerate(gpus[1:], 1))
        object.__setattr__(self, "gpus", gpus)

    @property
    def has_gpu(self) -> bool:
        return self.gpu_name is not None and self.vram_total > 0

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    def first_gpus(self, count: int) -> "HardwareProbe":
        """The probe as if only its first `count` GPUs were there (a one-GPU fallback, `--gpus 1`)."""
        return replace(self, gpus=self.gpus[:max(1, count)])

    def only_gpu(self, index: int) -> "HardwareProbe":
        """The probe as if cuda:index were its one GPU (that card's name, compute capability and VRAM on top)."""
        g = self.gpus[index]
        return replace(self, gpu_name=g.name, compute_capability=g.compute_capability, vram_total=g.vram_total,
                       vram_free=g.vram_free, gpus=())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HardwareProbe":
        data = dict(data)
        if data.get("compute_capability") is not None:
            data["compute_capability"] = tuple(data["compute_capability"])
        data["gpus"] = tuple(GpuInfo(**g) for g in data.get("gpus") or ())
        return cls(**data)


def probe_hardware() -> HardwareProbe:
    """Measure this machine now. Never raises for a missing or broken GPU: that gives a CPU-only probe."""
    import psutil

    from lowvram.paths import cache_dir

    vm = psutil.virtual_memory()
    swap = psutil.swap_memory()
    gpus = _probe_cuda()
    first = gpus[0] if gpus else GpuInfo(0, None, None, 0, 0)
    return HardwareProbe(
        gpu_name=first.name,
        compute_capability=first.compute_capability,
        vram_total=first.vram_total,
        vram_free=first.vram_free,
        gpus=gpus,
        ram_total=int(vm.total),
        ram_available=int(vm.available),
        swap_total=int(swap.total),
        swap_free=int(swap.free),
        disk_free=_disk_free(cache_dir()),
        os=f"{platform.system()} {platform.release()}".strip(),
    )


def _probe_cuda() -> tuple[GpuInfo, ...]:
    """Every visible CUDA device with its free memory now (other programs' use counts)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return ()
        out = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            out.append(GpuInfo(index, torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index)),
                               int(total), int(free)))
        return tuple(out)
    except Exception:  # a broken driver must not stop planning: plan for the CPU instead
        return ()


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


def with_gpus(probe: HardwareProbe, sizes_gib: tuple[float, ...],
              cards: tuple[tuple[Optional[str], Optional[tuple[int, int]]], ...] = ()) -> HardwareProbe:
    """What-if GPUs: one per size (GiB, all of it free). `cards`: each GPU's (name, compute capability), one per
    size; left out, every GPU is the probe's first card: `with_gpus(p, (24, 24))` is two of p's card."""
    if not sizes_gib or any(s <= 0 for s in sizes_gib):
        raise ValueError(f"what-if GPUs need sizes > 0 GiB, got {sizes_gib}")
    if cards and len(cards) != len(sizes_gib):
        raise ValueError(f"what-if GPUs: {len(cards)} cards named for {len(sizes_gib)} sizes; give one card per size")
    first = override_probe(probe, vram_gib=sizes_gib[0])
    cards = cards or ((first.gpu_name, first.compute_capability),) * len(sizes_gib)
    first = replace(first, gpu_name=cards[0][0], compute_capability=cards[0][1])
    extra = tuple(GpuInfo(i, name, cc, int(s * GIB), int(s * GIB))
                  for i, (s, (name, cc)) in enumerate(zip(sizes_gib[1:], cards[1:]), 1))
    return replace(first, gpus=(first.gpus[0],) + extra, source="synthetic")


def capped_gpus(probe: HardwareProbe, sizes_gib: tuple[float, ...]) -> HardwareProbe:
    """This machine's first len(sizes_gib) GPUs, each with at most that much free VRAM (what generate may use)."""
    if len(sizes_gib) > probe.gpu_count:
        raise ValueError(f"this machine has {probe.gpu_count} GPU(s), {len(sizes_gib)} asked for")
    gpus = tuple(replace(g, vram_free=min(g.vram_free, int(s * GIB))) if s else g for g, s in zip(probe.gpus, sizes_gib))
    return replace(probe, vram_free=gpus[0].vram_free, gpus=gpus)


def override_probe(probe: HardwareProbe, vram_gib: Optional[float] = None, ram_gib: Optional[float] = None) -> HardwareProbe:
    """What-if on top of a real probe: keep the GPU's identity (name, compute capability), replace the sizes."""
    changes: dict = {"source": "synthetic"}
    if vram_gib is not None:
        changes["gpus"] = ()  # a what-if GPU: one (`with_gpus` gives several)
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
    if probe.gpu_count > 1:
        lines.append(f"GPUs: {probe.gpu_count}")
        for g in probe.gpus:
            cc = ".".join(map(str, g.compute_capability)) if g.compute_capability else "?"
            lines.append(f"  {g.device}: {g.name} (compute capability {cc}), VRAM {g.vram_free / GIB:.1f} GiB free "
                         f"of {g.vram_total / GIB:.1f} GiB")
    elif probe.has_gpu:
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
