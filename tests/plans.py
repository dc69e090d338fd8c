"""Plans for tests, written the short way: `plan_with(device, precision=..., transformer=TP("partial", resident_blocks=1))`."""

from __future__ import annotations

from planner.plan import Plan, simple_plan


def TP(kind: str = "resident", resident_blocks: int = 0, blocks_per_group: int = 1, use_stream: bool = True) -> dict:  # noqa: N802
    """A denoiser placement for plan_with()."""
    return dict(placement=kind, resident_blocks=resident_blocks, blocks_per_group=blocks_per_group, use_stream=use_stream)


def plan_with(device: str = "cpu", precision: str = "", transformer: dict | None = None, text_encoder_precision: str = "",
              text_encoder: str = "", vae: str = "", source: str = "forced", **extra) -> Plan:
    """Every denoiser alike (fp32 on the CPU, bf16 on the GPU unless `precision` says), encoders and VAE as given."""
    precision = precision or ("fp32" if device == "cpu" else "bf16")
    return simple_plan(device, precision, **(transformer or TP()), text_encoder=text_encoder,
                       text_encoder_precision=text_encoder_precision, vae=vae, source=source, **extra)
