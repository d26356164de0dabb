"""Text normalisation and the quality filters: what a document looks like after cleaning, and why it is dropped.

Normalisation (`normalize`), in this order:
1. Unicode NFC, so that "é" typed as one code point or as "e" + accent is the same text (and the same hash).
2. Line breaks: `\\r\\n`, `\\r`, form feed, vertical tab, U+2028/U+2029 become `\\n`.
3. Control characters (C0 and C1 except tab and newline, and the byte-order mark U+FEFF) are removed.
4. Unicode space characters (no-break space, thin space, ideographic space, ...) become a plain space; trailing
   spaces and tabs on each line are removed; three or more newlines become two (one blank line); the document
   is stripped at both ends. Indentation and runs of spaces inside a line are kept (code, verse).

Quality filters (`quality_reason`), each configurable and each counted separately in the report; the defaults
follow the spirit of the Gopher rules (Rae et al. 2021) but are deliberately mild:
- `too_short`: fewer than `min_chars` characters after cleaning (an empty document is always dropped);
- `low_alpha`: letters make up less than `min_alpha_fraction` of the non-whitespace characters (tables of
  numbers, base64, markup debris);
- `repeated_lines`: more than `max_repeated_line_fraction` of the non-empty lines repeat an earlier line
  (navigation menus, boilerplate; Tiny Shakespeare, with its speaker names, scores 0.22);
- `repeated_ngrams`: more than `max_repeated_ngram_fraction` of the word n-grams (`repeated_ngram_size`, default 5)
  repeat an earlier n-gram of the same document (spam, generated loops; ordinary prose scores below 0.05).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import numpy as np

from scratchlm.data.ngrams import ngram_hashes

_NEWLINES = re.compile("\r\n|[\r\x0b\x0c\u2028\u2029\x85]")
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ufeff]")
_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING = re.compile("[ \t]+(?=\n|$)")
_BLANKS = re.compile("\n{3,}")
_NOT_LETTER = re.compile(r"[\W\d_]+")  # \w minus digits and "_" = letters (and combining marks)
_WHITESPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """The cleaned form of a document (see the module docstring). Idempotent."""
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    text = _NEWLINES.sub("\n", text)
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _TRAILING.sub("", text)
    text = _BLANKS.sub("\n\n", text)
    return text.strip()


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the quality filters (the fields of the same names in `PrepareConfig`)."""

    min_chars: int = 100
    min_alpha_fraction: float = 0.5
    max_repeated_line_fraction: float = 0.3
    max_repeated_ngram_fraction: float = 0.2
    repeated_ngram_size: int = 5


REASONS = ("empty", "too_short", "low_alpha", "repeated_lines", "repeated_ngrams")
"""Every reason `quality_reason` can give, in the order they are checked."""


def alpha_fraction(text: str) -> float:
    """Share of the non-whitespace characters that are letters (any script)."""
    visible = len(_WHITESPACE.sub("", text))
    if visible == 0:
        return 0.0
    return len(_NOT_LETTER.sub("", text)) / visible


def repeated_line_fraction(text: str) -> float:
    """Share of the non-empty lines that repeat an earlier line (compared after stripping)."""
    lines = [s for line in text.split("\n") if (s := line.strip())]
    if not lines:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


def repeated_ngram_fraction(words: np.ndarray, n: int) -> float:
    """Share of the word n-grams that repeat an earlier n-gram of the same document. `words`: (W,) hashes."""
    grams = ngram_hashes(words, n)
    if grams.size == 0:
        return 0.0
    return 1.0 - np.unique(grams).size / grams.size


def quality_reason(text: str, words: np.ndarray, cfg: QualityConfig) -> str | None:
    """The first filter the cleaned `text` fails (one of `REASONS`), or None to keep it."""
    if not text:
        return "empty"
    if len(text) < cfg.min_chars:
        return "too_short"
    if cfg.min_alpha_fraction > 0 and alpha_fraction(text) < cfg.min_alpha_fraction:
        return "low_alpha"
    if cfg.max_repeated_line_fraction < 1 and repeated_line_fraction(text) > cfg.max_repeated_line_fraction:
        return "repeated_lines"
    if (
        cfg.max_repeated_ngram_fraction < 1
        and repeated_ngram_fraction(words, cfg.repeated_ngram_size) > cfg.max_repeated_ngram_fraction
    ):
        return "repeated_ngrams"
    return None
