"""Profiles as TOML text and files: read with tomllib (data only, never code), write with a small serializer.

The serializer covers what the schema needs (strings, numbers, booleans, arrays, tables, arrays of tables)
and is exact: `tomllib.loads(dumps_data(d)) == d` for those types (tested, also with hypothesis).
Files are written to a temp file in the same folder and renamed, so a reader never sees half a profile.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any, Optional

from lowvram.profiles.schema import SCHEMA_VERSION, TOP_LEVEL_ORDER, Profile
from lowvram.profiles.validate import (
    KeyPath,
    ProfileError,
    Where,
    build,
    describe_value,
)

MAX_BYTES = 1 << 20  # a profile is a few KiB; anything near this is not a profile
# A profile nests three levels ([saved_plan.transformer]); tomllib recurses per level of [ or { and a 1 KiB
# file of brackets exhausts Python's stack: the depth is checked first, without recursion.
MAX_DEPTH = 16

HEADER = (
    "lowvram profile: data only, read with `lowvram profile show FILE`.",
    "Shared between machines: [saved_on] and [saved_plan] are for information; lowvram re-plans on every load",
    "(`lowvram profile check FILE` shows what changes on this machine) and never exceeds this machine's VRAM.",
)
TABLE_COMMENTS = {
    ("job",): "Job defaults: options given on the command line win over these.",
    ("job", "cache"): "Step skipping: method none, teacache or magcache, with a threshold or a target speedup (docs/caching.md).",
    ("job", "loras"): "A LoRA: found by file name in the LoRA folders (LOWVRAM_LORA_DIRS) and checked by sha256 (docs/loras.md).",
    ("planner",): "Planner preferences: what the planner may trade away on the machine that loads this profile.",
    ("saved_on",): "For information only: the machine this profile was saved on.",
    ("saved_plan",): "For information only: the plan chosen on that machine. lowvram re-plans on every load.",
}

# ---------------------------------------------------------------------------------------------- writing

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}


def _escape(s: str, keep_newlines: bool = False) -> str:
    out = []
    for ch in s:
        if keep_newlines and ch == "\n":
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


def _key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else f'"{_escape(k)}"'


def _inline(v: Any) -> str:
    """A value on one line (inside arrays and inline tables)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)  # shortest exact repr; always has '.', 'e', or is nan/inf
    if isinstance(v, str):
        return f'"{_escape(v)}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_inline(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_inline(x)}" for k, x in v.items()) + " }" if v else "{}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _value(v: Any) -> str:
    """A value after `key = `: long text with newlines becomes a readable multi-line string."""
    if isinstance(v, str) and "\n" in v:
        return '"""\n' + _escape(v, keep_newlines=True) + '"""'
    return _inline(v)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, dict) for x in v)


def _emit(lines: list[str], path: tuple[str, ...], table: dict, comments: dict) -> None:
    for k, v in table.items():
        if not isinstance(v, dict) and not _is_table_array(v):
            lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in table.items():
        sub = path + (k,)
        header = ".".join(_key(p) for p in sub)
        if isinstance(v, dict):
            lines.append("")
            if sub in comments:
                lines.append(f"# {comments[sub]}")
            lines.append(f"[{header}]")
            _emit(lines, sub, v, comments)
        elif _is_table_array(v):
            for item in v:
                lines.append("")
                if sub in comments:
                    lines.append(f"# {comments[sub]}")
                lines.append(f"[[{header}]]")
                _emit(lines, sub, item, comments)


def dumps_data(data: dict, header: tuple[str, ...] = (), comments: Optional[dict] = None) -> str:
    """Serialize a dict of TOML-representable values (no None) to TOML text."""
    lines = [f"# {line}" for line in header]
    if header:
        lines.append("")
    _emit(lines, (), data, comments or {})
    return "\n".join(lines).lstrip("\n") + "\n"


def to_data(obj: Any) -> Any:
    """A schema object as plain TOML data: dataclasses become tables, None fields are left out."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is not None:
                out[f.name] = to_data(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_data(x) for x in obj]
    return obj


def dumps(profile: Profile) -> str:
    data = to_data(profile)
    ordered = {k: data[k] for k in TOP_LEVEL_ORDER if k in data}
    ordered.update({k: v for k, v in data.items() if k not in ordered})
    return dumps_data(ordered, HEADER, TABLE_COMMENTS)


def save(profile: Profile, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write atomically (temp file + rename). Refuses to replace an existing file unless `overwrite`."""
    from lowvram.errors import UserError

    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; choose another name or pass --force to replace it.")
    if not path.parent.is_dir():
        raise UserError(f"cannot save the profile to {path}: the folder {path.parent} does not exist; create it first.")
    try:
        text = dumps(profile).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(f"cannot save the profile: a text value is not valid Unicode ({exc.reason}); retype it.") from None
    from lowvram.io import scratch
    from lowvram.io.output import publish_file

    scratch.sweep(path.parent)
    try:
        with scratch.scratch_file(path.parent, "toml") as tmp:
            with open(tmp, "wb") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            if overwrite:
                os.replace(tmp, path)
            else:
                publish_file(tmp, path)  # no-clobber: a file that appeared since the check above stays
    except FileExistsError:
        raise UserError(f"{path} already exists; choose another name or pass --force to replace it.") from None
    except OSError as exc:
        raise UserError(f"cannot save the profile to {path}: {exc.strerror or exc}; choose another folder or free some space.") from None
    return path


# ---------------------------------------------------------------------------------------------- reading

_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([^\]#]+?)\s*\]\]?")
_KEY_RE = re.compile(r"^\s*([A-Za-z0-9_\-\"'. ]+?)\s*=")


def _split_dotted(text: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in text.split("."))


def locate(text: str, path: KeyPath) -> Optional[int]:
    """1-based line where `path` (keys and array indices) is defined, best effort; None if not found."""
    want = tuple(p for p in path if not isinstance(p, int))
    want_index = [p for p in path if isinstance(p, int)]
    table: tuple[str, ...] = ()
    index: list[int] = []
    counts: dict[tuple[str, ...], int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _HEADER_RE.match(line)
        if m:
            table = _split_dotted(m.group(2))
            if m.group(1) == "[[":
                counts[table] = counts.get(table, -1) + 1
            index = [counts[table[:i]] for i in range(1, len(table) + 1) if table[:i] in counts]
            if table == want and index == want_index[: len(index)]:
                return lineno
            continue
        m = _KEY_RE.match(line)
        if m and table + _split_dotted(m.group(1)) == want and index == want_index[: len(index)]:
            return lineno
    return None


def _toml_error(source: str, text: str, exc: Exception) -> ProfileError:
    msg = str(exc)
    m = re.search(r"\(at line (\d+), column (\d+)\)$", msg)
    if m:
        line = int(m.group(1))
        core = msg[: m.start()].strip()
        fix = "each key and table may appear only once" if core.startswith("Cannot") else "fix the syntax on this line"
        return ProfileError(source, f"invalid TOML at column {m.group(2)}: {core}; {fix}", line=line)
    core = msg.replace("(at end of document)", "").strip()
    last = len(text.splitlines()) or 1
    if core.startswith("Cannot"):
        return ProfileError(source, f"invalid TOML: {core}; each key and table may appear only once", line=last)
    return ProfileError(
        source,
        f"invalid TOML: {core} at the end of the file. The file ends before the value is complete: it looks "
        "truncated; save or download it again",
        line=last,
    )


def _too_deep(text: str, limit: int = MAX_DEPTH) -> Optional[int]:
    """The 1-based line where arrays/inline tables nest deeper than `limit`, or None. Strings and comments
    are skipped (a bracket inside them does not count); invalid TOML is left for tomllib to report."""
    depth, line, i, n = 0, 1, 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
        elif ch == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif ch in "\"'":
            triple = text.startswith(ch * 3, i)
            close, i = (ch * 3, i + 3) if triple else (ch, i + 1)
            while i < n and not text.startswith(close, i):
                if text[i] == "\\" and ch == '"':
                    i += 1
                elif text[i] == "\n":
                    line += 1
                    if not triple:
                        break
                i += 1
            i += len(close)
            continue
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return line
        elif ch in "]}":
            depth = max(0, depth - 1)
        i += 1
    return None


def _data_depth_over(data: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether parsed data nests deeper than `limit` (dotted keys nest without brackets). No recursion."""
    stack = [(data, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))  # tables, arrays
    return False


def loads(text: str, source: str = "<text>") -> Profile:
    """Parse and check a profile. Raises ProfileError (a UserError, exit code 2) on any problem."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomllib arrived in 3.11
        raise ProfileError(source, "reading profiles needs Python 3.11 or newer (the standard tomllib); upgrade Python") from None
    if not text.strip():
        raise ProfileError(source, "the file is empty; a profile needs at least schema_version, name and model (see `lowvram profile save`)")
    too_deep = f"nested more than {MAX_DEPTH} levels deep (a profile nests 3); this is not a profile"
    line = _too_deep(text)
    if line is not None:
        raise ProfileError(source, too_deep, line=line)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(source, text, exc) from None
    except ValueError as exc:  # an integer of more digits than Python converts (4300)
        raise ProfileError(source, f"not a valid profile ({str(exc)[:120]})") from None
    except RecursionError:  # a nesting the scan above did not see
        raise ProfileError(source, too_deep) from None
    if _data_depth_over(data):
        raise ProfileError(source, too_deep)
    where = Where(source, lambda path: locate(text, path))
    check_version(data, where)
    saved = data.get("saved_plan")
    if isinstance(saved, dict) and "transformer_quant" in saved:
        # A plan from lowvram before plans had one entry per component. It is information only (every load
        # re-plans), so an old profile still loads; saving it again writes the current form.
        del data["saved_plan"]
    return build(Profile, data, where)


def check_version(data: dict, where: Where) -> None:
    """Refuse newer schemas before reading anything else: their keys may mean something else."""
    if "schema_version" not in data:
        raise where.fail(
            ("schema_version",),
            "missing schema_version: this is not a lowvram profile, or the file was cut short (truncated). "
            f"Add `schema_version = {SCHEMA_VERSION}` at the top, or save or download the profile again",
        )
    version = data["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise where.fail(("schema_version",), f"expected a whole number (this lowvram writes {SCHEMA_VERSION}); got {describe_value(version)}")
    if version > SCHEMA_VERSION:
        raise where.fail(
            ("schema_version",),
            f"schema_version {version}: made by a newer lowvram (this one reads versions up to {SCHEMA_VERSION}); "
            "upgrade lowvram (pip install -U lowvram) to use this profile",
        )
    if version < 1:
        raise where.fail(("schema_version",), f"out of range: expected 1 to {SCHEMA_VERSION}; got {version}")


def read_text(path: str | os.PathLike) -> str:
    p = Path(path).expanduser()
    if not p.exists():
        raise ProfileError(str(path), "no such file; check the path (shipped profiles are in the profiles/ folder)")
    if not p.is_file():
        raise ProfileError(str(path), "not a file; give the path of a .toml profile")
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise ProfileError(str(path), f"{size} bytes is too large for a profile (at most {MAX_BYTES}); is this the right file?")
        raw = p.read_bytes()
    except OSError as exc:
        raise ProfileError(str(path), f"cannot read it ({exc.strerror}); check its permissions") from None
    try:
        return raw.decode("utf-8-sig")  # tolerate a BOM from Windows editors
    except UnicodeDecodeError as exc:
        raise ProfileError(str(path), f"not UTF-8 text (bad byte at offset {exc.start}); a profile is a TOML text file") from None


def load(path: str | os.PathLike) -> Profile:
    return loads(read_text(path), source=str(path))
