"""Peak RAM while loading a real-shape Wan2.1 transformer: bf16 from a checkpoint, quantizing, cached int8.

    python -m lowvram.bench.load_rss --shape 1.3b [--folder DIR] [--level int8]

Builds random weights of the real shape once (bf16 safetensors, as a diffusers folder, in DIR or a
temporary folder), then measures each way of loading in a fresh subprocess: the kernel's high-water
mark of the process (ru_maxrss) minus the RSS after imports. Every number printed is measured.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

GIB = 1024**3


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def rss_parts() -> dict[str, int]:
    """Anonymous (heap: what loading really holds) and file-backed (mapped safetensors: page cache the
    kernel can drop) resident bytes, from /proc/self/status."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


class AnonPeak:
    """Samples RssAnon every few milliseconds on a thread (the kernel keeps no anonymous high-water mark)."""

    def __init__(self, interval: float = 0.005):
        import threading

        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_parts()["RssAnon"])
            self._stop.wait(self.interval)

    def __enter__(self) -> "AnonPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_parts()["RssAnon"])


def build(shape: str, folder: Path) -> None:
    """Random real-shape weights saved like a checkpoint (transformer only: that is what is measured)."""
    import torch

    from lowvram.bench.build import build_transformer

    if (folder / "transformer" / "config.json").is_file():
        return
    if shape == "1.3b":
        model = build_transformer(shape, device="cpu", dtype=torch.bfloat16)
        model.save_pretrained(folder / "transformer", safe_serialization=True)
    else:
        save_streamed(shape, folder / "transformer")
    (folder / "model_index.json").write_text(
        json.dumps({"_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"]}, indent=1)
    )


SHARD_BYTES = 5 * GIB  # diffusers' default max_shard_size


def save_streamed(shape: str, folder: Path) -> None:
    """Write a sharded diffusers checkpoint tensor by tensor, never holding the model in RAM.

    The 14B shape in bf16 (26.6 GiB) is larger than a 24 GiB machine's RAM; the meta-device model gives the
    names, shapes and dtypes, and each tensor is made, written with its shard and dropped.
    """
    import torch
    from safetensors.torch import save_file

    from lowvram.bench.build import init_random_, transformer_on_meta

    meta = transformer_on_meta(shape)
    folder.mkdir(parents=True, exist_ok=True)
    meta.save_config(folder)
    shard_names: list[list[str]] = []  # names only: each shard's tensors are dropped once written
    current, size, nbytes = {}, 0, 0

    def flush() -> None:
        nonlocal current, size
        shard_names.append(list(current))
        save_file(current, str(folder / f"shard-{len(shard_names):05d}.safetensors"))
        current, size = {}, 0

    for name, param in meta.named_parameters():
        t = torch.empty(param.shape, dtype=param.dtype)
        holder = torch.nn.Module()
        holder.register_parameter(name.rsplit(".", 1)[-1], torch.nn.Parameter(t, requires_grad=False))
        init_random_(holder, seed=len(shard_names) * 100_000 + len(current))
        current[name] = t
        size += t.numel() * t.element_size()
        nbytes += t.numel() * t.element_size()
        if size >= SHARD_BYTES:
            flush()
    if current:
        flush()
    total = len(shard_names)
    weight_map = {}
    for i, names in enumerate(shard_names, 1):
        final = f"diffusion_pytorch_model-{i:05d}-of-{total:05d}.safetensors"
        (folder / f"shard-{i:05d}.safetensors").rename(folder / final)
        weight_map.update({name: final for name in names})
    index = {"metadata": {"total_size": nbytes}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index, indent=1))


def measure(how: str, folder: Path, level: str) -> dict:
    """Runs in the child: load one way, report the RSS high-water mark above the post-import baseline."""
    import torch

    torch.set_grad_enabled(False)
    baseline, anon_baseline = rss_bytes(), rss_parts()["RssAnon"]
    from lowvram.placement.quanto_offload import leaf_tensors, storage_bytes

    with AnonPeak() as anon:
        module = _load(how, folder, level)
        loaded_total, loaded_anon = rss_bytes() - baseline, rss_parts()["RssAnon"] - anon_baseline
        # Read every weight once, as the first use (a copy to the GPU, a pinned copy) would: mapped pages
        # of the checkpoint become resident now.
        for t in list(module.parameters()) + list(module.buffers()):
            for _, leaf in leaf_tensors(t):
                leaf.sum()

    weights = sum(storage_bytes(t) for t in list(module.parameters()) + list(module.buffers()))
    return dict(
        how=how, weights_bytes=weights, baseline_rss=baseline, loaded_total=loaded_total, loaded_anon=loaded_anon, peak_rss=peak_rss_bytes(), end_rss=rss_bytes(),
        anon_peak=anon.peak - anon_baseline, anon_end=rss_parts()["RssAnon"] - anon_baseline,
    )


def _load(how: str, folder: Path, level: str):
    import torch
    from diffusers import WanTransformer3DModel

    from lowvram.placement import quant_cache
    from lowvram.placement.quantize import quantize_weights

    if how == "bf16":
        module = WanTransformer3DModel.from_pretrained(folder / "transformer", torch_dtype=torch.bfloat16)
    elif how == "quantize":
        module = WanTransformer3DModel.from_pretrained(folder / "transformer", torch_dtype=torch.bfloat16)
        quantize_weights(module, level)
        quant_cache.save(module, folder, "transformer", level, "bfloat16")
    elif how == "cached":
        module = quant_cache.load(folder, "transformer", level, "bfloat16")
        if module is None:
            raise SystemExit("no cache entry: run the 'quantize' case first")
    else:
        raise ValueError(how)
    return module


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lowvram.bench.load_rss", description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="1.3b", choices=("1.3b", "14b"))
    p.add_argument("--folder", default=None, help="where the random checkpoint is (built there if absent)")
    p.add_argument("--level", default="int8", choices=("fp8", "int8", "int4"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix=f"lowvram-rss-{args.shape}-"))
    if args.child:
        print(json.dumps(measure(args.child, folder, args.level)))
        return 0
    build(args.shape, folder)
    print(f"checkpoint: {folder} ({args.shape}, random bf16 weights)")
    print("GiB above the RSS after imports. anon = heap; total = anon + resident pages of the mapped checkpoint")
    print("(page cache the kernel may drop). 'loaded' = right after loading; 'peak'/'after touch' = after reading every weight once.")
    print(f"{'load':<10} {'weights':>8} {'loaded anon':>12} {'loaded total':>13} {'peak anon':>10} {'peak total':>11} {'after touch':>12}")
    for how in ("bf16", "quantize", "cached"):
        out = subprocess.run(
            [sys.executable, "-m", "lowvram.bench.load_rss", "--shape", args.shape, "--folder", str(folder), "--level", args.level, "--child", how],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(
            f"{how:<10} {r['weights_bytes'] / GIB:>8.2f} {r['loaded_anon'] / GIB:>12.2f} {r['loaded_total'] / GIB:>13.2f} "
            f"{r['anon_peak'] / GIB:>10.2f} {(r['peak_rss'] - r['baseline_rss']) / GIB:>11.2f} {(r['end_rss'] - r['baseline_rss']) / GIB:>12.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
