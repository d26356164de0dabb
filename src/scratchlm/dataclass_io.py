"""Dataclasses to and from plain dicts (JSON/YAML), strictly: an unknown key is an error naming the known ones.

One spelling per setting: the dataclass field name is the YAML key, the `config.json` key and (kebab-cased)
the CLI flag.
"""

from __future__ import annotations

import dataclasses
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
    kwargs = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    return cls(**kwargs)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return from_dict(arg, value, where)
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(inner[0], value, where) if len(inner) == 1 and value is not None else value
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(tp)
        elem = args[0] if args else Any
        return tuple(_convert(elem, v, where) for v in value)
    if origin is list and isinstance(value, list):
        args = typing.get_args(tp)
        return [_convert(args[0], v, where) for v in value] if args else value
    if tp is Path and isinstance(value, str):
        return Path(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
