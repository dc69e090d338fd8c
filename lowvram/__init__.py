"""lowvram: a low-VRAM runner for the Wan2.1 video diffusion models."""

__all__ = ["__version__"]
__version__ = "0.1.0"
