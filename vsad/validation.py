"""One typed validation for every configuration dataclass: the field annotations say the type,
a class-level BOUNDS table says the range, and every error names the key, the value and what
was expected. The API, `key=value` overrides and `--config` files all end up in the dataclass
constructor, so they are all checked here, before any other check can trip over a string where
a number belongs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Union


@dataclass(frozen=True)
class Bound:
    """lo <= value <= hi (strict where lo_open / hi_open); None = unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def holds(self, value: float) -> bool:
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def describe(self) -> str:
        lo = None if self.lo is None else f"{'>' if self.lo_open else '>='} {self.lo:g}"
        hi = None if self.hi is None else f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return " and ".join(x for x in (lo, hi) if x)


@dataclass(frozen=True)
class Pattern:
    """A string field that must match `regex` in full; `expected` says what in words."""

    regex: str
    expected: str

    def holds(self, value: str) -> bool:
        return re.fullmatch(self.regex, value) is not None


def check_patterns(config: Any, patterns: dict[str, Pattern], *, prefix: str = "") -> None:
    """Raises ValueError naming `prefix + key` for the first string field that does not match
    its pattern (types are checked by check_fields first)."""
    for name, pattern in patterns.items():
        value = getattr(config, name)
        if isinstance(value, str) and not pattern.holds(value):
            raise ValueError(f"{prefix}{name}: got {value!r}, expected {pattern.expected}")


def at_least(lo: float) -> Bound:
    return Bound(lo=lo)


def above(lo: float) -> Bound:
    return Bound(lo=lo, lo_open=True)


def between(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Bound:
    return Bound(lo, hi, lo_open, hi_open)


def check_fields(config: Any, bounds: dict[str, Bound], *, prefix: str = "") -> None:
    """Raises ValueError naming `prefix + key` for the first field whose value does not have
    its annotated type (bool is not an int; an int is a fine float; floats must be finite) or
    lies outside its bound (every element, for lists of numbers)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        if f.name not in hints:
            continue
        value, expected = getattr(config, f.name), hints[f.name]
        key = prefix + f.name
        if not matches(value, expected):
            raise ValueError(f"{key}: got {value!r}, expected {describe(expected)}")
        bound = bounds.get(f.name)
        if bound is not None:
            for number in _numbers(value):
                if not bound.holds(number):
                    raise ValueError(f"{key}: got {value!r}, expected {bound.describe()}")


def _numbers(value) -> list:
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def matches(value, tp) -> bool:
    """Whether `value` (as parsed from JSON or given in Python) has type `tp`."""
    if tp is Any:
        return True
    if _is_union(tp):
        return any(matches(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
    if tp is str:
        return isinstance(value, str)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and all(
            matches(v, args[0] if args else Any) for v in value
        )
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def describe(tp) -> str:
    if _is_union(tp):
        args = typing.get_args(tp)
        named = [describe(a) for a in args if a is not type(None)]
        text = " or ".join(named)
        return f"{text} or null" if type(None) in args else text
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a finite number"
    if tp is str:
        return "a string"
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return "a list of " + (_plural(describe(args[0])) if args else "values")
    if origin is dict or tp is dict:
        return "an object (key: value mapping)"
    if dataclasses.is_dataclass(tp):
        return f"an object of {tp.__name__} keys"
    return getattr(tp, "__name__", str(tp))


def _plural(text: str) -> str:
    for article in ("an ", "a "):
        if text.startswith(article):
            text = text[len(article) :]
            break
    if text.startswith("list of "):
        return "lists of " + text[len("list of ") :]
    return text.replace(" or null", "s or nulls") if " or null" in text else text + "s"


__all__ = [
    "Bound",
    "Pattern",
    "above",
    "at_least",
    "between",
    "check_fields",
    "check_patterns",
    "describe",
    "matches",
]
