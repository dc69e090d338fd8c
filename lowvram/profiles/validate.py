"""Turn parsed TOML (plain dicts) into the frozen schema dataclasses, or fail with a clear ProfileError.

Driven by the dataclasses' type hints and field metadata, so the checks cannot drift from the schema.
Every error names the file, the line when it can be found, the key, what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import math
import types
import typing
from dataclasses import MISSING
from typing import Any, Callable, Literal, Optional, Union

from lowvram.errors import UserError

KeyPath = tuple  # of str (table keys) and int (array indices)


class ProfileError(UserError):
    """A profile that cannot be used. Nothing runs; the message says where and how to fix it."""

    def __init__(self, source: str, problem: str, key: str = "", line: Optional[int] = None):
        self.source, self.problem, self.key, self.line = source, problem, key, line
        where = f"profile {source}"
        if line is not None:
            where += f", line {line}"
        if key:
            where += f", key '{key}'"
        super().__init__(f"{where}: {problem}")


class Where:
    """The file being read: its name for messages and a way to find the line of a key."""

    def __init__(self, source: str, locate: Callable[[KeyPath], Optional[int]] = lambda path: None):
        self.source, self.locate = source, locate

    def fail(self, path: KeyPath, problem: str) -> ProfileError:
        return ProfileError(self.source, problem, key=dotted(path), line=self.locate(path) if path else None)


def dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe_value(value: Any) -> str:
    """How a TOML value is named to a person: its type and, when short, the value itself."""
    if isinstance(value, bool):
        kind = "a boolean"
    elif isinstance(value, int):
        kind = "an integer"
    elif isinstance(value, float):
        kind = "a float"
    elif isinstance(value, str):
        kind = "a string"
    elif isinstance(value, dict):
        return "a table"
    elif isinstance(value, list):
        return "an array"
    elif isinstance(value, (datetime.date, datetime.time)):
        kind = "a date/time"
    else:
        kind = type(value).__name__
    shown = repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    return f"{kind} ({shown[:60]}{'...' if len(shown) > 60 else ''})"


def _is_optional(tp: Any) -> tuple[bool, Any]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return True, args[0]
    return False, tp


def _suggest(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


def _fmt_num(x: float) -> str:
    if isinstance(x, int):  # TOML integers are unbounded: float() of a 400-digit one overflows
        text = str(x)
        return text if len(text) <= 24 else f"a {len(text.lstrip('-'))}-digit number"
    return str(int(x)) if float(x).is_integer() else str(x)


def build(cls: type, data: Any, where: Where, path: KeyPath = ()) -> Any:
    """Build dataclass `cls` from a TOML table, checking keys, types and limits."""
    if not isinstance(data, dict):
        raise where.fail(path, f"expected a table ([{dotted(path)}] with keys {', '.join(f.name for f in dataclasses.fields(cls))}); got {describe_value(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            known = list(fields)
            table = f"in [{dotted(path)}]" if path else "at the top level"
            raise where.fail(
                path + (key,),
                f"unknown key '{key}' {table}; {_suggest(key, known)}known keys here: {', '.join(known)}. "
                "Fix the spelling or remove the line",
            )
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise where.fail(
                    path + (name,),
                    f"missing required key '{name}' ({f.metadata.get('expect', 'required')}); "
                    "add it, or if the file was cut short (truncated), save or download it again",
                )
            continue
        kwargs[name] = convert(hints[name], data[name], where, path + (name,), f.metadata)
    try:
        return cls(**kwargs)
    except (UserError, ValueError, TypeError) as exc:
        # The dataclass's own cross-field checks (e.g. TeaCache threshold and speed-up both given).
        raise where.fail(path, f"{exc}".rstrip(".") + "; fix the values in this table") from None


def convert(tp: Any, value: Any, where: Where, path: KeyPath, meta: Optional[dict] = None) -> Any:
    """Check one value against its type hint and limits; return it in the schema's Python form."""
    meta = meta or {}
    _, tp = _is_optional(tp)  # TOML has no null: an absent key is the None
    expect = meta.get("expect")
    origin = typing.get_origin(tp)

    def wrong(what: str) -> ProfileError:
        said = f"{expect}, " if expect else ""
        return where.fail(path, f"expected {said}{what}; got {describe_value(value)}")

    if dataclasses.is_dataclass(tp):
        return build(tp, value, where, path)
    if origin is Literal:
        choices = typing.get_args(tp)
        if not isinstance(value, str) or value not in choices:
            hint = _suggest(value, list(choices)) if isinstance(value, str) else ""
            raise wrong(f"one of {', '.join(repr(c) for c in choices)}" + (f" ({hint.rstrip('? ')}?)" if hint else ""))
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("a whole number")
        _check_range(value, meta, where, path)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer beyond any float
            finite = False
        if not finite:
            raise where.fail(path, f"expected a finite number; got {_fmt_num(value)}")
        _check_range(value, meta, where, path)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong("a string (in quotes)")
        max_len = meta.get("max_len")
        if max_len is not None and len(value) > max_len:
            raise where.fail(path, f"expected at most {max_len} characters; got {len(value)}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise wrong("an array [...]")
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if item is None:
            if len(value) != len(args):
                raise wrong(f"an array of {len(args)} items")
            return tuple(convert(t, v, where, path + (i,)) for i, (t, v) in enumerate(zip(args, value)))
        return tuple(convert(item, v, where, path + (i,), meta) for i, v in enumerate(value))  # each item's limits
    if origin in (list,):
        if not isinstance(value, list):
            raise wrong("an array [...]")
        (item,) = typing.get_args(tp) or (Any,)
        return [convert(item, v, where, path + (i,)) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise wrong("a table")
        _, item = typing.get_args(tp) or (str, Any)
        return {k: convert(item, v, where, path + (k,)) for k, v in value.items()}
    # A type this reader does not know (a field added to Plan later): keep the data; the dataclass checks it.
    return value


def _check_range(value: float, meta: dict, where: Where, path: KeyPath) -> None:
    lo, hi, expect = meta.get("lo"), meta.get("hi"), meta.get("expect", "a value")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"between {_fmt_num(lo)} and {_fmt_num(hi)}" if lo is not None and hi is not None else (
            f"at least {_fmt_num(lo)}" if lo is not None else f"at most {_fmt_num(hi)}")
        raise where.fail(path, f"out of range: expected {expect} {bounds}; got {_fmt_num(value)}")
    multiple = meta.get("multiple_of")
    if multiple and value % multiple:
        below = max(multiple, int(value) // multiple * multiple)
        raise where.fail(path, f"expected {expect}; got {value} (use {below} or {below + multiple})")
    form = meta.get("step_form")
    if form and (value - form[1]) % form[0]:
        k = max(0, (int(value) - form[1]) // form[0])
        raise where.fail(path, f"expected {expect}; got {value} (use {form[0] * k + form[1]} or {form[0] * (k + 1) + form[1]})")
