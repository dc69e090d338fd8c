"""GPU benchmark: lowvram's plans against the upstream offload recipes, with random weights in the real
Wan2.1 shapes, under VRAM budgets simulated with `torch.cuda.set_per_process_memory_fraction`.

Run `lowvram bench --help` (or `python -m lowvram.bench --help`) on any CUDA machine.
"""
