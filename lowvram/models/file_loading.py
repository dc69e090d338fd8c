"""Load a single-file Wan transformer into diffusers' WanTransformer3DModel, keeping how it is stored.

- GGUF files: diffusers' `from_single_file` (its Wan key converter) with its `GGUFQuantizationConfig`:
  the weights stay quantized and each layer dequantizes when it computes.
- safetensors files (bf16/fp16/fp32, fp8_e4m3fn/e5m2, "fp8 scaled"): the keys go through the same
  diffusers converter, the model is built on the meta device and the tensors are assigned in the run's
  dtype, except fp8 weights, which stay fp8 and are upcast one layer at a time when it computes
  (lowvram.models.fp8_layers), and the modules diffusers keeps in float32 (`_keep_in_fp32_modules`),
  as `from_pretrained` does for a folder. (`from_single_file` would cast every fp8 weight to the run's
  dtype first, twice the RAM of the file, and keeps float32 modules only for fp16.)

The config comes from the base pipeline's folder (`<base>/transformer/config.json`); the file's shapes
were checked against it already (lowvram.models.single_file.resolve_files).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lowvram.errors import UserError
from lowvram.models.single_file import TransformerFile, inspect_file
from lowvram.models.weights_header import SCALE_SUFFIXES, strip_prefix

log = logging.getLogger(__name__)

# What loading leaves on the module: the file it came from (the quantized cache must not key it by
# the base folder), and for fp8/GGUF files how it is stored (it must not be quantized again).
SOURCE_FILE_ATTR = "_lowvram_source_file"
STORED_ATTR = "_lowvram_stored"


def load_transformer_file(path: Path, base_folder: Path, subfolder: str, dtype: Any) -> Any:
    """The transformer in `path`, with its config from `base_folder/subfolder`, computing in `dtype`."""
    tf = inspect_file(Path(path))
    _check_complete(tf, base_folder, subfolder)
    try:
        if tf.is_gguf:
            model = _load_gguf(tf, base_folder, subfolder, dtype)
        else:
            model = _load_safetensors(tf, base_folder, subfolder, dtype)
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        raise UserError(f"{tf.path}: could not load it as the {subfolder} of {base_folder} ({type(exc).__name__}: {exc}).") from exc
    setattr(model, SOURCE_FILE_ATTR, str(tf.path))
    if tf.is_gguf or tf.is_fp8:
        setattr(model, STORED_ATTR, tf.stored)
    return model


def _meta_model(base_folder: Path, subfolder: str):
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    config = WanTransformer3DModel.load_config(str(base_folder), subfolder=subfolder, local_files_only=True)
    with init_empty_weights():
        return WanTransformer3DModel.from_config(config)


def _check_complete(tf: TransformerFile, base_folder: Path, subfolder: str) -> None:
    """Every tensor the model needs, with the shape it needs, before any weight is read."""
    expected = {k: tuple(v.shape) for k, v in _meta_model(base_folder, subfolder).state_dict().items()}
    missing = sorted(set(expected) - set(tf.tensors))
    if missing:
        raise UserError(
            f"{tf.path}: incomplete: {len(missing)} of the transformer's {len(expected)} tensors are missing "
            f"(e.g. {', '.join(missing[:3])}). The file is damaged or not a whole transformer: download it again."
        )
    wrong = [(k, tf.tensors[k].shape, s) for k, s in expected.items() if tuple(tf.tensors[k].shape) != s]
    if wrong:
        k, got, want = wrong[0]
        raise UserError(f"{tf.path}: {k} has shape {list(got)} where the base's transformer needs {list(want)}; the file and --base are different models.")
    extra = sorted(set(tf.tensors) - set(expected))
    if extra:
        log.warning("%s: %d tensors the transformer does not use (e.g. %s)", tf.path, len(extra), ", ".join(extra[:3]))


def _load_gguf(tf: TransformerFile, base_folder: Path, subfolder: str, dtype: Any):
    from diffusers import GGUFQuantizationConfig, WanTransformer3DModel
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    state = load_gguf_checkpoint(str(tf.path))
    return WanTransformer3DModel.from_single_file(
        state, config=str(base_folder), subfolder=subfolder, torch_dtype=dtype, local_files_only=True,
        quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
    )


def _load_safetensors(tf: TransformerFile, base_folder: Path, subfolder: str, dtype: Any):
    import torch
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
    from safetensors.torch import load_file

    from lowvram.models.fp8_layers import FP8_DTYPES, apply_stored_fp8, shaped_scale

    raw = load_file(str(tf.path))
    scale_by_weight = {}
    state = {}
    for key, tensor in raw.items():
        if key.endswith(SCALE_SUFFIXES):
            layer = key[: -len(".scale_weight")] if key.endswith(".scale_weight") else key[: -len(".weight_scale")]
            scale_by_weight[f"{layer}.weight"] = tensor
        elif not (strip_prefix(key) == "scaled_fp8" or key.endswith((".scale_input", ".input_scale", ".comfy_quant"))):
            state[key] = tensor  # input scales are for fp8 matmuls; lowvram computes in the run's dtype
    if tf.layout == "diffusers":
        state = {strip_prefix(k): v for k, v in state.items()}
        scale_by_weight = {strip_prefix(k): v for k, v in scale_by_weight.items()}
    else:
        state = convert_wan_transformer_to_diffusers(state)
        scale_by_weight = convert_wan_transformer_to_diffusers(scale_by_weight)

    model = _meta_model(base_folder, subfolder)
    modules = dict(model.named_modules())
    keep_fp32 = tuple(model._keep_in_fp32_modules or ())
    scales = {}
    for key, tensor in list(state.items()):
        layer, _, leaf = key.rpartition(".")
        if any(m in key.split(".") for m in keep_fp32):  # as from_pretrained keeps them (time embedder, norms, modulation)
            state[key] = tensor.to(torch.float32)
            continue
        keep_fp8 = tensor.dtype in FP8_DTYPES and leaf == "weight" and isinstance(modules.get(layer), (torch.nn.Linear, torch.nn.Conv3d))
        if not keep_fp8:
            state[key] = tensor.to(dtype)  # biases, norms, embeddings: small, upcast once (exact for fp8 values)
            continue
        scale = scale_by_weight.get(key)
        if scale is not None:
            shaped = shaped_scale(scale, tensor.shape)
            if shaped is None:
                raise UserError(f"{tf.path}: the scale of {key} has {scale.numel()} values; expected 1 or one per output channel ({tensor.shape[0]}).")
            scales[layer] = shaped
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False)
    model.eval()
    apply_stored_fp8(model, dtype, scales)
    return model
