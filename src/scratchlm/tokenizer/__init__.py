"""scratchlm's tokenizers: byte-level BPE (train your own, or GPT-2's exactly) and character-level.

Pure Python plus `regex`: importing this never loads torch or numpy.

    from scratchlm import tokenizer
    tok = tokenizer.load("gpt2")                 # or a tokenizer JSON file / checkpoint folder
    ids = tok.encode("Hello world")              # [15496, 995]
    tok.decode(ids)                              # "Hello world"
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from scratchlm.errors import ScratchlmError
from scratchlm.tokenizer.base import EOT, Tokenizer
from scratchlm.tokenizer.bpe import BPETokenizer
from scratchlm.tokenizer.char import CharTokenizer
from scratchlm.tokenizer.files import from_dict, read_gpt2, read_gpt2_files, read_json
from scratchlm.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN, PATTERNS

__all__ = [
    "EOT",
    "GPT2_PATTERN",
    "GPT4_PATTERN",
    "PATTERNS",
    "BPETokenizer",
    "CharTokenizer",
    "Tokenizer",
    "NAMED",
    "from_dict",
    "read_gpt2",
    "load",
]

NAMED = ("gpt2",)
"""Tokenizers known by name (built from named assets)."""


@functools.lru_cache(maxsize=4)
def _gpt2_data(encoder: str, vocab: str, mtimes: tuple[float, float]) -> tuple[list[bytes], dict[str, int]]:
    return read_gpt2_files(encoder, vocab)


def _gpt2() -> BPETokenizer:
    from scratchlm import assets

    encoder, vocab = assets.fetch("gpt2-encoder"), assets.fetch("gpt2-vocab")
    data, specials = _gpt2_data(str(encoder), str(vocab), (encoder.stat().st_mtime, vocab.stat().st_mtime))
    return BPETokenizer(
        data, dict(specials), GPT2_PATTERN, name="gpt2"
    )  # a fresh object: callers may add specials


def load(name_or_path: str | os.PathLike[str]) -> Tokenizer:
    """`"gpt2"`, a tokenizer JSON file, or a checkpoint folder (its `tokenizer.json`)."""
    if str(name_or_path) == "gpt2":
        return _gpt2()
    path = Path(name_or_path)
    looks_like_path = path.exists() or path.suffix == ".json" or os.sep in str(name_or_path)
    if not looks_like_path:
        raise ScratchlmError(
            f"unknown tokenizer {str(name_or_path)!r}; use one of {', '.join(NAMED)} or the path of a tokenizer "
            "JSON file (made by `scratchlm tokenizer train`)"
        )
    return read_json(path)
