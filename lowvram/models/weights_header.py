"""What a weights file holds, read from its header alone: tensor names, dtypes, shapes and bytes.

A safetensors file starts with an 8-byte length and a JSON header; a GGUF file with its tensor
infos. Nothing here reads tensor data, so a 30 GB file is sized in milliseconds. `stored_weights`
turns a header into the planner's view of a transformer as stored: the bytes of one repeated block
(`blocks.N.`) and of everything else, and what computing with it costs in transient memory.
"""

from __future__ import annotations

import json
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lowvram.errors import UserError
from planner.spec import StoredWeights  # the planner's form of a file's sizes

GGUF_MAGIC = b"GGUF"
# The official Wan layout as ComfyUI repackages it puts every key under this prefix.
COMFY_PREFIX = "model.diffusion_model."
BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")
# safetensors dtype -> (bytes per element, the label lowvram prints)
SAFETENSORS_DTYPES: dict[str, tuple[float, str]] = {
    "F64": (8, "fp64"), "F32": (4, "fp32"), "F16": (2, "fp16"), "BF16": (2, "bf16"),
    "F8_E4M3": (1, "fp8_e4m3fn"), "F8_E5M2": (1, "fp8_e5m2"),
    "I64": (8, "int64"), "I32": (4, "int32"), "I16": (2, "int16"), "I8": (1, "int8"), "U8": (1, "uint8"), "BOOL": (1, "bool"),
}
FP8_DTYPES = ("F8_E4M3", "F8_E5M2")
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16") + FP8_DTYPES
MAX_HEADER_BYTES = 100 * 1024**2  # safetensors' own limit


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors dtype ("BF16", "F8_E4M3", ...) or GGUF type name ("Q8_0", "F32", ...)
    shape: tuple[int, ...]  # logical shape, torch order (a GGUF quantized tensor: its dequantized shape)
    nbytes: int  # as stored


@dataclass(frozen=True)
class FileHeader:
    path: Path
    format: str  # "safetensors" | "gguf"
    tensors: tuple[TensorInfo, ...]
    metadata: dict = field(default_factory=dict)  # safetensors __metadata__, or GGUF key/values (scalars, strings)
    file_bytes: int = 0

    def names(self) -> set[str]:
        return {t.name for t in self.tensors}

    def by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def read_header(path: Path) -> FileHeader:
    """The header of a .safetensors or .gguf file. UserError for anything else or a truncated file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc}).") from exc
    if head[:4] == GGUF_MAGIC:
        return _gguf_header(path, size)
    if len(head) == 8:
        (n,) = struct.unpack("<Q", head)
        if 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
            with path.open("rb") as f:
                f.seek(8)
                first = f.read(1)
            if first == b"{":
                return _safetensors_header(path, size, n)
    raise UserError(
        f"{path}: neither a safetensors nor a GGUF file (its first bytes are {head[:8]!r}). lowvram reads transformer "
        "weights from .safetensors and .gguf files only (pickle files such as .ckpt/.pt/.bin can run code when opened): "
        "give a .safetensors or .gguf file, or a diffusers folder."
    )


def _truncated(path: Path, size: int, needed: int) -> UserError:
    return UserError(
        f"{path}: truncated: its header describes {needed:,} bytes but the file has {size:,}. The download or copy did "
        "not finish: download the file again (or copy it again) and retry."
    )


def _safetensors_header(path: Path, size: int, n: int) -> FileHeader:
    with path.open("rb") as f:
        f.seek(8)
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: its safetensors header is not valid JSON ({exc}); the file is damaged: download it again.") from exc
    metadata = header.pop("__metadata__", None) or {}
    tensors = []
    end = 0
    for name, entry in header.items():
        try:
            dtype, shape, (start, stop) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path}: tensor {name!r} has a malformed safetensors entry; the file is damaged: download it again.") from exc
        tensors.append(TensorInfo(name, dtype, shape, int(stop) - int(start)))
        end = max(end, int(stop))
    if 8 + n + end > size:
        raise _truncated(path, size, 8 + n + end)
    return FileHeader(path, "safetensors", tuple(tensors), dict(metadata), size)


def _gguf_header(path: Path, size: int) -> FileHeader:
    try:
        import gguf
    except ImportError as exc:  # a dependency of lowvram; only a broken install lacks it
        raise UserError(f"{path}: reading GGUF files needs the `gguf` package: pip install 'gguf>=0.10'.") from exc
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, IndexError, struct.error, OSError) as exc:
        # numpy's memmap refuses a file shorter than the tensor infos say (ValueError)
        raise UserError(
            f"{path}: cannot read it as GGUF ({exc}). It is truncated or damaged: download it again."
        ) from exc
    tensors = []
    end = 0
    for t in reader.tensors:
        qtype = gguf.GGMLQuantizationType(t.tensor_type)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        dims = [int(d) for d in t.shape]  # GGUF order: the fastest-varying dimension first
        logical = tuple(reversed(dims))
        nbytes = int(t.n_bytes)
        if block > 1 and dims and dims[0] % block:
            raise UserError(f"{path}: tensor {t.name} ({qtype.name}) has a row of {dims[0]} values, not a multiple of {block}: the file is damaged.")
        tensors.append(TensorInfo(t.name, qtype.name, logical, nbytes))
        end = max(end, int(t.data_offset) + nbytes)
    if end > size:
        raise _truncated(path, size, end)
    metadata = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            metadata[key] = f.contents()
        except Exception:  # an exotic value type: not needed for sizing
            continue
    return FileHeader(path, "gguf", tuple(tensors), metadata, size)


# --- The planner's view -----------------------------------------------------------------------------------


def strip_prefix(name: str) -> str:
    return name[len(COMFY_PREFIX):] if name.startswith(COMFY_PREFIX) else name


def block_index(name: str) -> Optional[int]:
    m = BLOCK_KEY.match(strip_prefix(name))
    return int(m.group(1)) if m else None


def storage_label(header: FileHeader) -> str:
    """What the repeated blocks' large weights are stored as: "bf16", "fp8_e4m3fn", "fp8_e4m3fn scaled", "Q8_0 GGUF"..."""
    weights = [t for t in header.tensors if block_index(t.name) is not None and len(t.shape) >= 2 and t.name.endswith(".weight")]
    if header.format == "gguf":
        file_type = _gguf_file_type(header)
        if file_type:
            return f"{file_type} GGUF"
        by_type = Counter()
        for t in weights:
            by_type[t.dtype] += t.nbytes
        return f"{by_type.most_common(1)[0][0] if by_type else 'F32'} GGUF"
    by_dtype = Counter()
    for t in weights or header.tensors:
        by_dtype[t.dtype] += t.nbytes
    dtype = by_dtype.most_common(1)[0][0] if by_dtype else "F32"
    label = SAFETENSORS_DTYPES.get(dtype, (0, dtype.lower()))[1]
    if dtype in FP8_DTYPES and is_scaled_fp8(header):
        label += " scaled"
    return label


def _gguf_file_type(header: FileHeader) -> Optional[str]:
    """llama.cpp's quantize tool records the mix it made (Q4_K_M, Q5_K_S ...) in general.file_type."""
    value = header.metadata.get("general.file_type")
    if value is None:
        return None
    try:
        from gguf import LlamaFileType

        name = LlamaFileType(int(value)).name
    except (ImportError, ValueError, TypeError):
        return None
    return name.removeprefix("MOSTLY_") if name != "ALL_F32" else "F32"


SCALE_SUFFIXES = (".scale_weight", ".weight_scale")


def is_scaled_fp8(header: FileHeader) -> bool:
    """ComfyUI's "fp8 scaled" files: a `scaled_fp8` marker and a `.scale_weight` per layer, or (newer)
    `.weight_scale` tensors / `.comfy_quant` markers with `_quantization_metadata` in the header."""
    names = header.names()
    return (
        any(strip_prefix(n) == "scaled_fp8" for n in names)
        or any(n.endswith(SCALE_SUFFIXES) for n in names)
        or "_quantization_metadata" in header.metadata
    )


def stored_weights(header: FileHeader, compute_bytes: int = 2) -> StoredWeights:
    """The file's transformer as stored: its largest `blocks.N.` block and the rest, in bytes.

    `compute_bytes`: bytes per value of the compute dtype (2 for bf16). fp8 weights are upcast one
    layer at a time (one compute-dtype copy of the layer); GGUF weights are dequantized into an
    intermediate and then cast (two copies); weights already in a float dtype cost nothing extra.
    """
    blocks: dict[int, int] = {}
    rest = 0
    for t in header.tensors:
        if strip_prefix(t.name) == "scaled_fp8":  # a marker, not a weight
            continue
        i = block_index(t.name)
        if i is None:
            rest += t.nbytes
        else:
            blocks[i] = blocks.get(i, 0) + t.nbytes
    label = storage_label(header)
    if header.format == "gguf" and not label.startswith(("F32", "F16", "BF16")):
        dequant = 2.0 * compute_bytes
    elif label.startswith("fp8"):
        dequant = float(compute_bytes)
    else:
        dequant = 0.0
    return StoredWeights(label=label, block_bytes=max(blocks.values(), default=0), rest_bytes=rest, dequant_bytes_per_param=dequant)


def describe_stored(stored: StoredWeights, num_blocks: int) -> str:
    """"Q5_K_M GGUF, 9.8 GiB": the label and the bytes the planner counts (an upper bound when blocks differ)."""
    total = stored.rest_bytes + num_blocks * stored.block_bytes
    return f"{stored.label}, {total / 1024**3:.1f} GiB"
