"""`scratchlm tokenizer train|encode|decode|info`: thin commands over `scratchlm.tokenizer`."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from scratchlm.cli.parsing import parse
from scratchlm.errors import ScratchlmError
from scratchlm.fs import check_out_file, ensure_writable_dir, is_tokenizer_file
from scratchlm.tokenizer import Tokenizer, load
from scratchlm.tokenizer.patterns import DisallowedSpecialError, pattern_name
from scratchlm.tokenizer.train import TokenizerTrainConfig
from scratchlm.tokenizer.train import train as train_tokenizer


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")  # bytes as they are: no newline translation
    except FileNotFoundError:
        raise ScratchlmError(f"input file {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise ScratchlmError(f"input {path} is a folder; pass text files") from None
    except UnicodeDecodeError as e:
        raise ScratchlmError(
            f"input file {path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it"
        ) from None
    except OSError as e:
        raise ScratchlmError(f"cannot read input file {path} ({e.strerror}); check its permissions") from None


def _write_stdout(text: str) -> None:
    """Exact UTF-8 on stdout whatever the locale (a decoded text may hold any character)."""
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8"))
    sys.stdout.buffer.flush()


# ---- train ------------------------------------------------------------------------------------------------------
@dataclass
class TrainCommand(TokenizerTrainConfig):
    """Train a tokenizer on your text files and write it as one JSON file."""

    input: tuple[Path, ...] = ()
    """UTF-8 text files to train on."""
    out: Path = Path("tokenizer.json")
    """Where to write the tokenizer JSON file."""


def train(argv: list[str], prog: str) -> int:
    cfg = parse(TrainCommand, argv, prog)
    if not cfg.input:
        raise ScratchlmError("name the text to train on: --input FILE [FILE ...]")
    texts = [_read_text(p) for p in cfg.input]
    # an older tokenizer file is replaced (atomically); an input or any other file is refused
    check_out_file(cfg.out, is_tokenizer_file, "a scratchlm tokenizer file", cfg.input)
    ensure_writable_dir(
        cfg.out.parent if str(cfg.out.parent) else Path("."), what="--out"
    )  # fail before training
    start = time.perf_counter()

    def progress(i: int, n: int, token: bytes, count: int) -> None:
        if i % 256 == 0 or i == n:
            print(f"merge {i}/{n}: {token!r} ({count} times)", file=sys.stderr)

    tok = train_tokenizer(cfg, texts, on_merge=progress)
    tok.save(cfg.out)
    seconds = time.perf_counter() - start
    print(f"{tok.kind} tokenizer, vocab size {tok.vocab_size}, trained in {seconds:.1f} s -> {cfg.out}")
    return 0


# ---- encode -----------------------------------------------------------------------------------------------------
@dataclass
class EncodeCommand:
    """Print the token ids of a text (or of --input FILE) as one JSON list."""

    text: tyro.conf.Positional[str | None] = None
    """The text to encode (or use --input)."""
    tokenizer: str = "gpt2"
    """gpt2, or a tokenizer JSON file."""
    input: Path | None = None
    """Encode this UTF-8 file instead of TEXT."""
    special: Literal["raise", "allow", "text"] = "raise"
    """Special-token strings in the text: raise an error (default), allow them as special ids, or treat as text."""


def encode(argv: list[str], prog: str) -> int:
    cfg = parse(EncodeCommand, argv, prog)
    if (cfg.text is None) == (cfg.input is None):
        raise ScratchlmError("give the text to encode either as an argument or with --input FILE (not both)")
    text = _read_text(cfg.input) if cfg.input is not None else cfg.text
    tok = load(cfg.tokenizer)
    allowed = {"raise": "none_raise", "allow": "all", "text": "none"}[cfg.special]
    try:
        ids = tok.encode(text, allowed_special=allowed)
    except DisallowedSpecialError as e:
        raise ScratchlmError(
            f"the text contains the special token {e.token!r}; pass --special allow to encode it as its special id, "
            "or --special text to encode it as plain text"
        ) from None
    print(json.dumps(ids))
    return 0


# ---- decode -----------------------------------------------------------------------------------------------------
@dataclass
class DecodeCommand:
    """Print the text of a JSON list of token ids (given as an argument or with --input FILE)."""

    ids: tyro.conf.Positional[str | None] = None
    """A JSON list of token ids, e.g. '[15496, 995]'."""
    tokenizer: str = "gpt2"
    """gpt2, or a tokenizer JSON file."""
    input: Path | None = None
    """Read the JSON list from this file instead."""


def _parse_ids(text: str, where: str) -> list[int]:
    try:
        ids = json.loads(text)
    except json.JSONDecodeError as e:
        raise ScratchlmError(
            f"{where} is not a JSON list of token ids ({e.msg}); pass e.g. '[15496, 995]'"
        ) from None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ScratchlmError(f"{where} must be a JSON list of integers, e.g. '[15496, 995]'")
    return ids


def decode(argv: list[str], prog: str) -> int:
    cfg = parse(DecodeCommand, argv, prog)
    if (cfg.ids is None) == (cfg.input is None):
        raise ScratchlmError(
            "give the ids either as an argument ('[15496, 995]') or with --input FILE (not both)"
        )
    if cfg.input is not None:
        ids = _parse_ids(_read_text(cfg.input), f"input file {cfg.input}")
    else:
        ids = _parse_ids(cfg.ids, "the ids argument")
    tok = load(cfg.tokenizer)
    _write_stdout(tok.decode(ids))  # exactly the text: no newline is added
    return 0


# ---- info -------------------------------------------------------------------------------------------------------
@dataclass
class InfoCommand:
    """Show a tokenizer's vocabulary size and special tokens, and its bytes per token on files."""

    tokenizer: tyro.conf.Positional[str] = "gpt2"
    """gpt2, or a tokenizer JSON file."""
    input: tuple[Path, ...] = ()
    """UTF-8 files to measure bytes per token on."""


def describe(tok: Tokenizer) -> list[str]:
    lines = [
        f"type:           {tok.kind}" + (f" ({tok.name})" if getattr(tok, "name", None) else ""),
        f"vocab size:     {tok.vocab_size}",
        f"special tokens: {json.dumps(tok.special_tokens, ensure_ascii=False)}",
    ]
    if hasattr(tok, "pattern"):
        lines.append(f"pattern:        {pattern_name(tok.pattern)}")
    lines.append(f"identity:       {tok.identity()}")
    return lines


def info(argv: list[str], prog: str) -> int:
    cfg = parse(InfoCommand, argv, prog)
    tok = load(cfg.tokenizer)
    print("\n".join(describe(tok)))
    for path in cfg.input:
        text = _read_text(path)
        n_bytes = len(text.encode("utf-8"))
        n_tokens = len(tok.encode(text, allowed_special="none"))
        ratio = n_bytes / max(n_tokens, 1)
        print(f"{path}: {n_bytes} bytes, {n_tokens} tokens, {ratio:.2f} bytes/token")
    return 0
