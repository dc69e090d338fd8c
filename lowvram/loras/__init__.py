"""LoRAs (docs/loras.md): `--lora FILE[:SCALE][@high|@low]`, checked against the model from the file's header,
fused into the weights or kept as adapters as the plan says, with the sampling settings a distillation LoRA
calls for. `spec` is plain data (no torch); `apply` is the runtime."""
