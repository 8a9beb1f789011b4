"""Parsing of what users type: ``HxW`` sizes and typed ``key=value`` settings, with one error style.

Every command (``neurmap export --shape``, ``run --tile``, ``models --size``, ``train key=value``,
``run --adapt-opts k=v``) goes through these, so a bad value always reads the same: one line naming the
option, what was given, and an example of what works (a :class:`ConfigError`).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

from .errors import ConfigError


def parse_hw(text: str, what: str = "--size", example: str = "720x1280") -> tuple[int, int]:
    """'720x1280' -> (720, 1280): height x width in pixels, both positive integers."""
    try:
        h, w = (int(v) for v in str(text).lower().replace(" ", "").split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not HxW with positive integers, e.g. {example}") from None
    return h, w


def _members(hint: Any) -> tuple:
    origin = typing.get_origin(hint)
    if origin is Union or (hasattr(types, "UnionType") and isinstance(hint, types.UnionType)):
        return typing.get_args(hint)
    return (hint,)


def _one(value: Any, t: Any) -> Any:
    """``value`` as type ``t`` or raise ValueError; strings are parsed (YAML reads ``5e-05`` as a string)."""
    if t is Any or t is object:
        return value
    if t is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            return None
        raise ValueError
    if t is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ValueError
    if t is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        raise ValueError
    if t is float:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise ValueError
    if t is str:
        if isinstance(value, str):
            return value
        raise ValueError
    origin = typing.get_origin(t) or t
    if isinstance(origin, type) and isinstance(value, origin):
        return value
    raise ValueError


def _type_name(hint: Any) -> str:
    names = [getattr(m, "__name__", str(m)).replace("NoneType", "null") for m in _members(hint)]
    return " or ".join(names)


def coerce(value: Any, hint: Any, key: str, what: str) -> Any:
    """``value`` converted to the annotated type ``hint`` (int, float, bool, str, dict, Optional/unions)."""
    # str last: in `float | str` a number stays a number
    members = sorted(_members(hint), key=lambda m: m is str)
    for t in members:
        try:
            return _one(value, t)
        except (ValueError, TypeError):
            continue
    raise ConfigError(f"{key}={value!r} is not {_type_name(hint)} (in {what}); give e.g. {key}={_example(hint)}")


def _example(hint: Any) -> str:
    first = _members(hint)[0]
    return {int: "10", float: "0.5", bool: "true", str: "name", dict: "{}"}.get(first, "...")


def typed_fields(cls, d: dict, what: str) -> dict:
    """``d`` with every value converted to ``cls``'s dataclass field type; :class:`ConfigError` on a mismatch."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in d:
            out[f.name] = coerce(d[f.name], hints.get(f.name, Any), f.name, what)
    return out
