"""Placement: how each component's weights are held (precision, streaming, which device, when).

`apply` puts a Plan on a loaded pipeline and moves components between stages; one module per
technique beside it (quantize, quant_cache, offload, quanto_offload, transfer_meter, devices: activations
between GPUs).
"""

from lowvram.placement.apply import (
    PlacementState,
    component_device,
    compute_device,
    describe_device_state,
    encode_device,
    enter_stage,
    image_encoder_device,
    leave_all,
    load_cached_components,
    prepare,
    reapply,
    reset,
    state,
    use_sdpa,
    vae_device,
)

__all__ = [
    "PlacementState", "component_device", "compute_device", "describe_device_state", "encode_device", "enter_stage", "image_encoder_device", "leave_all",
    "load_cached_components", "prepare", "reapply", "reset", "state", "use_sdpa", "vae_device",
]
