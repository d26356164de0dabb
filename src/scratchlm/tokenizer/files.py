"""Tokenizer files: scratchlm's one JSON format, and GPT-2's `encoder.json` + `vocab.bpe`.

The JSON format (`tokenizer.json`, also inside every checkpoint folder):

    {"format": "scratchlm-tokenizer", "format_version": 1,
     "type": "bpe",                       # or "char"
     "name": "gpt2",                      # informational, may be null
     "pattern": "'s|'t|...",              # bpe only: the split regex itself
     "vocab": ["!", "\\"", ..., "Ġthe"],   # id -> token; bpe tokens spelled with GPT-2's printable byte map
     "special_tokens": {"<|endoftext|>": 50256}}

A BPE token's id is also its merge rank, so the vocabulary list is the whole model: no separate merges list to
keep consistent. Special ids come after the regular vocabulary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from scratchlm.errors import ScratchlmError
from scratchlm.tokenizer.base import FORMAT, FORMAT_VERSION, Tokenizer
from scratchlm.tokenizer.bpe import BYTE_TO_UNICODE, BPETokenizer, from_unicode
from scratchlm.tokenizer.char import CharTokenizer
from scratchlm.tokenizer.patterns import GPT2_PATTERN


def from_dict(d: dict[str, Any], where: str = "tokenizer data") -> Tokenizer:
    """Rebuild a tokenizer from its `to_dict()` form; every problem is a one-line ScratchlmError naming `where`."""
    fix = "re-create it with `scratchlm tokenizer train` or save it again"
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ScratchlmError(f'{where} is not a scratchlm tokenizer (no "format": {FORMAT!r}); {fix}')
    version = d.get("format_version")
    if version != FORMAT_VERSION:
        raise ScratchlmError(
            f"{where} has tokenizer format version {version!r}, this scratchlm reads version {FORMAT_VERSION}; "
            "upgrade scratchlm or re-create the file"
        )
    kind, vocab, specials = d.get("type"), d.get("vocab"), d.get("special_tokens", {})
    if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
        raise ScratchlmError(f'{where} is corrupt: "vocab" must be a list of strings; {fix}')
    if not isinstance(specials, dict):
        raise ScratchlmError(f'{where} is corrupt: "special_tokens" must be an object; {fix}')
    try:
        if kind == "bpe":
            pattern = d.get("pattern")
            if not isinstance(pattern, str):
                raise ScratchlmError('"pattern" must be a string')
            try:
                tokens = [from_unicode(t) for t in vocab]
            except KeyError as e:
                raise ScratchlmError(f"token with character {e.args[0]!r} outside GPT-2's byte map") from None
            return BPETokenizer(tokens, specials, pattern, name=d.get("name"))
        if kind == "char":
            return CharTokenizer(vocab, specials, name=d.get("name"))
    except ScratchlmError as e:
        raise ScratchlmError(f"{where} is corrupt: {e}") from None
    raise ScratchlmError(f"{where} has unknown tokenizer type {kind!r} (expected 'bpe' or 'char'); {fix}")


def read_json(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a tokenizer JSON file (a checkpoint folder works too: its `tokenizer.json`)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScratchlmError(
            f"tokenizer file {path} does not exist; pass `gpt2` or the path of a tokenizer JSON file "
            "(made by `scratchlm tokenizer train`)"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScratchlmError(
            f"cannot read tokenizer file {path} ({e}); check the path and its permissions"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ScratchlmError(
            f"tokenizer file {path} is not valid JSON ({e}); re-create it with `scratchlm tokenizer train`"
        ) from None
    return from_dict(data, where=f"tokenizer file {path}")


def read_gpt2_files(
    encoder_json: str | os.PathLike[str], vocab_bpe: str | os.PathLike[str]
) -> tuple[list[bytes], dict[str, int]]:
    """GPT-2-format files -> (vocab: id -> bytes, special tokens).

    `encoder.json` maps each token (spelled with the byte map) to its id; `vocab.bpe` lists the merges in rank
    order after a `#version` line. Regular tokens are the 256 bytes and the merge results; any other entry of
    the encoder (`<|endoftext|>`) is a special token. We check what tiktoken checks: each merge result's id
    grows with its rank, so that "lowest id first" is "lowest rank first".
    """
    where = f"GPT-2 tokenizer files {encoder_json} + {vocab_bpe}"
    try:
        encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
        lines = Path(vocab_bpe).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as e:
        raise ScratchlmError(
            f"{e.filename} does not exist; fetch it with `scratchlm fetch gpt2-encoder gpt2-vocab`"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ScratchlmError(f"cannot read {where} ({e}); fetch them again with `scratchlm fetch`") from None
    if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
        raise ScratchlmError(f"{where}: encoder.json must map token strings to integer ids; fetch it again")
    regular = {BYTE_TO_UNICODE[b] for b in range(256)}
    last = -1
    for n, line in enumerate(lines):
        if (n == 0 and line.startswith("#version")) or not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 2 or parts[0] not in encoder or parts[1] not in encoder:
            raise ScratchlmError(
                f"{where}: line {n + 1} of the merges is not a pair of known tokens; fetch them again"
            )
        merged = parts[0] + parts[1]
        idx = encoder.get(merged)
        if idx is None or idx <= last:
            raise ScratchlmError(
                f"{where}: merge {line!r} (line {n + 1}) has no id that follows the merge order; fetch them again"
            )
        last = idx
        regular.add(merged)
    missing = regular - encoder.keys()
    if missing:
        raise ScratchlmError(
            f"{where}: {len(missing)} byte tokens are missing from encoder.json; fetch it again"
        )
    n_regular = len(regular)
    if sorted(encoder[t] for t in regular) != list(range(n_regular)):
        raise ScratchlmError(f"{where}: the regular token ids are not 0..{n_regular - 1}; fetch them again")
    vocab: list[bytes] = [b""] * n_regular
    for t in regular:
        vocab[encoder[t]] = from_unicode(t)
    specials = {t: i for t, i in encoder.items() if t not in regular}
    return vocab, specials


def read_gpt2(
    encoder_json: str | os.PathLike[str], vocab_bpe: str | os.PathLike[str], name: str | None = None
) -> BPETokenizer:
    """GPT-2's `encoder.json` + `vocab.bpe` (Hugging Face's `vocab.json` + `merges.txt` are the same format)."""
    vocab, specials = read_gpt2_files(encoder_json, vocab_bpe)
    return BPETokenizer(vocab, specials, GPT2_PATTERN, name=name)
