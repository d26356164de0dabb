"""Config dataclass -> command-line flags, through tyro.

Every field of the command's dataclass is a kebab-case flag (`max_steps` -> `--max-steps`; the snake spelling
works too) with the field's docstring as help. `--config FILE.yaml` loads field values from a file first and
flags override it. Booleans accept `--flag`, `--flag true|false` and `--no-flag`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import tyro
import yaml

from scratchlm.dataclass_io import from_dict
from scratchlm.errors import ScratchlmError

T = TypeVar("T")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse(
    cls: type[T], argv: Sequence[str], prog: str, description: str | None = None, base: dict | None = None
) -> T:
    """Parse `argv` into an instance of the dataclass `cls` (see the module docstring).

    `base`: field values applied first (e.g. a preset); the --config file and then the flags override them.
    """
    argv = _apply_aliases(list(argv), getattr(cls, "FLAG_ALIASES", {}))
    default: T | None = None
    config_path = _pop_option(argv, "--config")
    if config_path is not None:
        default = load_yaml_config(cls, Path(config_path), base)
    elif base is not None:
        default = from_dict(cls, base, where="preset")
    argv = _normalise_bools(argv, _bool_flags(cls))
    doc = (description or (cls.__doc__ or "")).strip()
    doc += "\n--config FILE.yaml loads these settings from a file; flags given after it override the file."
    captured = io.StringIO()  # tyro draws a usage error as a box on stderr: it becomes one line instead
    try:
        with contextlib.redirect_stderr(captured):
            result = tyro.cli(
                cls,
                args=argv,
                prog=prog,
                description=doc,
                default=default,
                config=(tyro.conf.FlagConversionOff,),
            )
    except SystemExit as e:
        if e.code not in (0, None):
            raise ScratchlmError(_one_line(captured.getvalue(), cls, argv, prog)) from None
        sys.stderr.write(captured.getvalue())
        raise
    sys.stderr.write(captured.getvalue())
    return result


_BOX = re.compile(r"[\u2500-\u257f]+|^\s*-{3,}\s*$")  # rich's box drawing, or its plain-terminal rules


def _one_line(box: str, cls: type, argv: list[str], prog: str) -> str:
    """tyro's boxed usage error as one line that names the flag, what it takes and what it got."""
    rows = [_BOX.sub(" ", line).strip() for line in box.splitlines()]
    title = next((row for row in rows if row), "")
    body: list[str] = []
    for row in rows[rows.index(title) + 1:] if title else []:
        if not row:
            if body:
                break  # a rule or a blank row: what follows is detail and help text
            continue
        body.append(row)
    if "Required options" in title:
        missing = [row for row in body if row.startswith("--")]
        if missing:
            return f"missing required {', '.join(missing)}; see `{prog} --help`"
    text = " ".join(" ".join(body).split()) or "invalid arguments"
    flag = re.match(r"Error parsing (--[\w.-]+)", text)
    if flag:
        name = flag.group(1)
        wanted = _describe(_field_type(cls, name[2:]))
        got = _given(argv, name)
        if wanted and got is not None:
            text = f"{name} takes {wanted}, got {got!r}"
    return f"{text[0].lower()}{text[1:].rstrip('.')}; see `{prog} --help`"


def _field_type(cls: type, dotted: str) -> object:
    """The annotation of the field a flag sets (`model.vocab-size` -> ModelConfig.vocab_size), or None."""
    for part in dotted.replace("-", "_").split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        cls = hints[part]
    return cls


def _describe(tp: object) -> str | None:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Path: "a path"}
    if tp in names:
        return names[tp]  # type: ignore[index]
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + "|".join(map(str, args))
    if args and type(None) in args:
        inner = [_describe(a) for a in args if a is not type(None)]
        if all(inner):
            return " or ".join(inner) + " (or None)"  # type: ignore[arg-type]
    return None


def _given(argv: list[str], flag: str) -> str | None:
    spellings = {flag, "--" + flag[2:].replace("-", "_")}
    for i, arg in enumerate(argv):
        if arg in spellings and i + 1 < len(argv):
            return argv[i + 1]
        key, eq, value = arg.partition("=")
        if eq and key in spellings:
            return value
    return None


def load_yaml_config(cls: type[T], path: Path, base: dict | None = None) -> T:
    if path.is_dir():
        hint = f" (its run config is {path / 'config.yaml'})" if (path / "config.yaml").is_file() else ""
        raise ScratchlmError(f"--config {path} is a folder{hint}; pass a YAML file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ScratchlmError(f"config file {path} does not exist; pass an existing YAML file to --config") from None
    except OSError as e:
        raise ScratchlmError(f"cannot read config file {path} ({e.strerror or e}); pass a readable YAML file") from None
    try:
        if b"\0" in raw:
            raise UnicodeDecodeError("utf-8", raw, raw.index(b"\0"), raw.index(b"\0") + 1, "NUL byte")
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScratchlmError(
            f"config file {path} is not a text file (byte {e.start} is {raw[e.start : e.start + 1]!r}); "
            "pass a YAML file such as a run's config.yaml"
        ) from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ScratchlmError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict):
        raise ScratchlmError(f"config file {path} is not a YAML mapping of settings; fix the file")
    data = _alias_keys(data, getattr(cls, "FLAG_ALIASES", {}))
    return from_dict(cls, _merge(base or {}, data), where=str(path))


def _apply_aliases(argv: list[str], aliases: dict[str, str]) -> list[str]:
    """Old flag spellings (`--lora-rank`) -> the one spelling (`--lora.rank`), so existing commands keep working.

    `aliases` maps an old field-style name (`lora_rank`) to the dotted field path (`lora.rank`)."""
    if not aliases:
        return argv
    spellings = {}
    for old, new in aliases.items():
        spellings["--" + old] = spellings["--" + old.replace("_", "-")] = "--" + new
    out = []
    for tok in argv:
        name, eq, value = tok.partition("=")
        out.append(spellings[name] + eq + value if name in spellings else tok)
    return out


def _alias_keys(data: dict, aliases: dict[str, str]) -> dict:
    """The same for YAML: `lora_rank: 8` (an older config.yaml) -> `lora: {rank: 8}`."""
    data = dict(data)
    for old, new in aliases.items():
        if old in data:
            value = data.pop(old)
            section, key = new.split(".", 1)
            nested = data.setdefault(section, {})
            if isinstance(nested, dict):
                nested.setdefault(key, value)
    return data


def _merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, recursing into nested mappings (`model: {n_layer: 6}` keeps other model keys)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _pop_option(argv: list[str], name: str) -> str | None:
    for i, tok in enumerate(argv):
        if tok == name:
            if i + 1 >= len(argv):
                raise ScratchlmError(f"{name} needs a value: {name} FILE.yaml")
            value = argv[i + 1]
            del argv[i : i + 2]
            return value
        if tok.startswith(name + "="):
            del argv[i]
            return tok.split("=", 1)[1]
    return None


def _bool_flags(cls: type, prefix: str = "") -> set[str]:
    """The flag spellings (kebab and snake, with nesting prefixes) of every bool field."""
    flags: set[str] = set()
    hints = typing.get_type_hints(cls, include_extras=False)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if tp is bool or (args == [bool]):
            flags.add(prefix + f.name)
            flags.add(prefix + f.name.replace("_", "-"))
        elif dataclasses.is_dataclass(tp):
            flags |= _bool_flags(tp, prefix + f.name + ".")
    return flags


def _normalise_bools(argv: list[str], flags: set[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        name, eq, value = tok[2:].partition("=") if tok.startswith("--") else ("", "", "")
        if name in flags:
            nxt = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
            if nxt is not None and nxt.lower() in _TRUE | _FALSE:
                out += [f"--{name}", "True" if nxt.lower() in _TRUE else "False"]
                i += 1 if eq else 2
                continue
            out += [f"--{name}", "True"]
        elif name.startswith("no-") and name[3:] in flags or name.startswith("no_") and name[3:] in flags:
            out += [f"--{name[3:]}", "False"]
        else:
            out.append(tok)
        i += 1
    return out
