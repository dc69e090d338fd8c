"""Known models, model references, loading (safetensors only) and the built-in demo models."""
