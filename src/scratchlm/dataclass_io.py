"""Dataclasses to and from plain dicts (JSON/YAML), strictly: an unknown key is an error naming the known ones.

One spelling per setting: the dataclass field name is the YAML key, the `config.json` key and (kebab-cased)
the CLI flag.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from scratchlm.errors import ConfigError

T = TypeVar("T")


def to_dict(obj: Any) -> Any:
    """A JSON/YAML-ready dict of a (nested) dataclass; paths become strings, tuples lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build `cls` from `data`, recursing into nested dataclass fields; unknown keys raise `ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; known keys: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    sep = "." if ": " in where else ": "  # `run.yaml: model.n_layer`
    kwargs = {name: _convert(hints[name], value, f"{where}{sep}{name}") for name, value in data.items()}
    return cls(**kwargs)


_YAML11_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _kind(tp: Any) -> str:
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Path: "a path (string)",
    }
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _wrong(where: str, tp: Any, value: Any) -> ConfigError:
    shown = repr(value) if not isinstance(value, (dict, list)) else f"a {type(value).__name__}"
    return ConfigError(f"{where} must be {_kind(tp)}, got {shown}; fix the value")


def _convert(tp: Any, value: Any, where: str) -> Any:
    """`value` as type `tp`, strictly: YAML's `true`, `3.7` or `"three"` for an int is an error, never coerced
    (int() would turn true into 1 and 3.7 into 3, silently)."""
    origin = typing.get_origin(tp)
    if tp is Any or isinstance(tp, TypeVar):
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return from_dict(tp, value, where)
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        raise ConfigError(
            f"{where} must be a mapping of {tp.__name__} fields, got {value!r:.60}; fix the value"
        )
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _wrong(where, args[0], value)
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, where)
        for arg in inner:  # several types: the first that accepts the value
            try:
                return _convert(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} must be one of {', '.join(_kind(a) for a in inner)}, got {value!r:.60}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(
                f"{where} must be one of {', '.join(map(repr, typing.get_args(tp)))}, got {value!r:.60}"
            )
        return value
    if origin is tuple or tp is tuple:
        args = typing.get_args(tp)
        elem = args[0] if args else Any
        if isinstance(value, str):  # `eval_tasks: hellaswag`, `targets: q,k,v` (the dataclass splits commas)
            return (_convert(elem, value, where),)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r:.60}; fix the value")
        return tuple(_convert(elem, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r:.60}; fix the value")
        args = typing.get_args(tp)
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r:.60}; fix the value")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _wrong(where, tp, value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(where, tp, value)
        return value
    if tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.match(value):
            value = float(value)  # PyYAML reads `lr: 3e-4` (no dot: YAML 1.1) as a string; it is a number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong(where, tp, value)
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}; fix the value")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _wrong(where, tp, value)
        return value
    if tp is Path:
        if isinstance(value, Path):
            return value
        if not isinstance(value, str):
            raise _wrong(where, tp, value)
        return Path(value)
    return value
