"""Strict parsing of TOML tables into typed, frozen dataclasses, and back.

Unknown keys, wrong types, missing required options and out-of-range values (each class's ``check``)
are errors that name the key. A field whose metadata says ``flatten = "router_"`` holds a nested
dataclass read from the table's ``router_*`` keys, so the TOML stays flat while the code gets one typed
object (``RouterConfig``).
"""

from __future__ import annotations

import functools
import math
import types
import typing
from dataclasses import MISSING, Field, fields, is_dataclass, replace
from typing import Any

from ..checks import ConfigError


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string",
            type(None): "none"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against a field type; ints are accepted for floats. Raise ConfigError otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
        inner = typing.get_args(tp)[0]
        out = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    # get_type_hints evaluates string annotations on every call: slow enough to matter for ~25 sections.
    return typing.get_type_hints(cls)


def _flattened(cls: type) -> dict[str, tuple[Field, str, type]]:
    """Nested dataclass fields read from prefixed keys: field name -> (field, prefix, nested class)."""
    hints = _type_hints(cls)
    return {f.name: (f, f.metadata["flatten"], hints[f.name]) for f in fields(cls) if "flatten" in f.metadata}


def option_keys(cls: type) -> list[str]:
    """Every TOML key a section of ``cls`` accepts (nested fields spelled with their prefix)."""
    nested = _flattened(cls)
    keys = []
    for f in fields(cls):
        if f.name in nested:
            _, prefix, sub = nested[f.name]
            keys += [prefix + g.name for g in fields(sub)]
        else:
            keys.append(f.name)
    return keys


def _default(f: Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def parse_section(cls: type, values: Any, section: str):
    """Build dataclass ``cls`` from a mapping, strictly: unknown keys, wrong types, missing required."""
    if not isinstance(values, dict):
        raise ConfigError(f"{section}: expected a table of options, got {values!r}")
    hints = _type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    nested = _flattened(cls)
    accepted = option_keys(cls)
    for key in values:
        if key not in accepted:
            raise ConfigError(f"{section}.{key}: unknown option; expected one of {sorted(accepted)}")
    kwargs = {}
    for name, f in known.items():
        if name in nested:
            _, prefix, sub = nested[name]
            changes = {g.name: _coerce(values[prefix + g.name], _type_hints(sub)[g.name], f"{section}.{prefix}{g.name}")
                       for g in fields(sub) if prefix + g.name in values}
            kwargs[name] = replace(_default(f), **changes)
        elif name in values:
            kwargs[name] = _coerce(values[name], hints[name], f"{section}.{name}")
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{section}.{name}: missing required option")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(section)
    return obj


def plain(obj: Any) -> Any:
    """A dataclass (nested ones flattened back to their prefixed keys), dict or list as TOML-writable values;
    None values are left out (TOML has no null)."""
    if is_dataclass(obj):
        nested = _flattened(type(obj))
        out = {}
        for f in fields(obj):
            value = getattr(obj, f.name)
            if f.name in nested:
                prefix = nested[f.name][1]
                out.update({prefix + k: v for k, v in plain(value).items()})
            elif value is not None:
                out[f.name] = plain(value)
        return out
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj
