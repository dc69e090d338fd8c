"""The Plan: what the planner decides and the runtime applies. Plain frozen data, no torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

Quant = Literal["bf16", "fp8", "int8", "int4"]
TextQuant = Literal["bf16", "int8"]
TransformerPlacementKind = Literal["resident", "partial", "block_offload", "leaf_offload", "disk_offload"]
TextEncoderPlacement = Literal["gpu", "offload", "cpu"]
VaePlacement = Literal["gpu", "gpu_tiled", "cpu"]
Stage = Literal["load", "encode", "denoise", "decode"]

STAGES: tuple[str, ...] = ("load", "encode", "denoise", "decode")


@dataclass(frozen=True)
class TransformerPlacement:
    """Where the transformer's weights live during denoising.

    resident: all on the compute device. partial: the first `resident_blocks` blocks stay on the
    device and the rest are streamed. block_offload / leaf_offload: diffusers-style group offload at
    block (`blocks_per_group` blocks a group) or leaf granularity. disk_offload: streamed from disk.
    """

    kind: TransformerPlacementKind = "resident"
    resident_blocks: int = 0
    blocks_per_group: int = 1
    use_stream: bool = True

    def __post_init__(self) -> None:
        if self.resident_blocks < 0:
            raise ValueError(f"resident_blocks must be >= 0, got {self.resident_blocks}")
        if self.blocks_per_group < 1:
            raise ValueError(f"blocks_per_group must be >= 1, got {self.blocks_per_group}")
        if self.kind != "partial" and self.resident_blocks:
            raise ValueError("resident_blocks is only meaningful for kind='partial'")

    def describe(self) -> str:
        if self.kind == "resident":
            return "resident on the GPU"
        stream = "with streams" if self.use_stream else "without streams"
        if self.kind == "partial":
            return f"{self.resident_blocks} blocks resident, the rest streamed {stream}"
        if self.kind == "block_offload":
            return f"block-level group offload ({self.blocks_per_group} block/group) {stream}"
        if self.kind == "leaf_offload":
            return f"leaf-level group offload {stream}"
        return "streamed from disk"


@dataclass(frozen=True)
class StagePeak:
    """Predicted (or measured) peaks of one stage, in bytes; time in seconds."""

    stage: str
    vram_bytes: int
    ram_bytes: int
    seconds: float = 0.0


@dataclass(frozen=True)
class Plan:
    """A complete placement decision for one job on one machine.

    `device` is "cuda" or "cpu"; on "cpu" every placement collapses to the CPU.
    `predicted` holds one StagePeak per stage; the plan's peak is the max over stages because
    stages run one after another and components leave the GPU when their stage ends.
    """

    device: str = "cpu"
    dtype: str = "bfloat16"
    transformer_quant: Quant = "bf16"
    transformer: TransformerPlacement = field(default_factory=TransformerPlacement)
    text_encoder_quant: TextQuant = "bf16"
    text_encoder: TextEncoderPlacement = "gpu"
    vae: VaePlacement = "gpu"
    predicted: tuple[StagePeak, ...] = ()
    predicted_seconds: float = 0.0
    reasons: tuple[str, ...] = ()
    source: str = "planner"  # "planner", "placeholder", "forced", "profile"

    @property
    def peak_vram_bytes(self) -> int:
        return max((s.vram_bytes for s in self.predicted), default=0)

    @property
    def peak_ram_bytes(self) -> int:
        return max((s.ram_bytes for s in self.predicted), default=0)

    def summary(self) -> str:
        if self.device == "cpu":
            return f"everything on the CPU ({self.dtype})"
        return (
            f"transformer {self.transformer_quant}, {self.transformer.describe()}; "
            f"text encoder {self.text_encoder_quant} on {self.text_encoder}; VAE {self.vae}"
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        data = dict(data)
        data["transformer"] = TransformerPlacement(**data.get("transformer", {}))
        data["predicted"] = tuple(StagePeak(**s) for s in data.get("predicted", ()))
        data["reasons"] = tuple(data.get("reasons", ()))
        return cls(**data)
