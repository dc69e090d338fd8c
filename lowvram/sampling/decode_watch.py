"""Progress and cancellation inside the VAE decode.

diffusers' AutoencoderKLWan decodes latent frame by latent frame (and, tiled, tile by tile), calling
`vae.decoder` once per chunk. Hooks on that module count the chunks (a DecodeProgress event after each)
and check the cancel event before each, so a cancel stops the decode within one chunk. A decode that
finishes is never thrown away: the check runs only before a chunk.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Callable, Iterator, Optional

from lowvram.errors import CancelledError
from lowvram.telemetry import DecodeProgress, EventSink


def decoder_calls(vae: Any, latent_shape: tuple[int, ...]) -> int:
    """How many times `vae.decode` calls `vae.decoder` for latents of this shape (B, C, F, H, W), as
    AutoencoderKLWan._decode / tiled_decode loop (batch 1: slicing never applies)."""
    _, _, frames, height, width = latent_shape
    scale = vae.spatial_compression_ratio
    tile_h, tile_w = vae.tile_sample_min_height // scale, vae.tile_sample_min_width // scale
    if vae.use_tiling and (width > tile_w or height > tile_h):
        stride_h, stride_w = vae.tile_sample_stride_height // scale, vae.tile_sample_stride_width // scale
        return len(range(0, height, stride_h)) * len(range(0, width, stride_w)) * frames
    return frames


class DecodeWatch:
    """Attach to one decode with `watching(vae, latents)`; emits DecodeProgress, raises CancelledError."""

    def __init__(self, sink: EventSink, clock: Callable[[], float], cancel: Optional[threading.Event] = None):
        self.sink, self.clock, self.cancel = sink, clock, cancel
        self.done = self.total = 0
        self.started = 0.0

    def _before(self, module, args) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError("cancelled during decode")

    def _after(self, module, args, output) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.done * max(0, self.total - self.done)
        self.sink(DecodeProgress(t=self.clock(), done=self.done, total=max(self.total, self.done), seconds=elapsed, eta_seconds=eta))

    @contextlib.contextmanager
    def watching(self, vae: Any, latent_shape: tuple[int, ...]) -> Iterator["DecodeWatch"]:
        self.done, self.total, self.started = 0, decoder_calls(vae, latent_shape), time.perf_counter()
        handles = (vae.decoder.register_forward_pre_hook(self._before), vae.decoder.register_forward_hook(self._after))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
