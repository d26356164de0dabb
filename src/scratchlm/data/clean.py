"""Text normalisation and the quality filters: what a document looks like after cleaning, and why it is dropped.

Normalisation (`normalize`), in this order:
1. Line breaks: `\r\n`, `\r`, form feed, vertical tab, U+2028/U+2029, NEL become `\n`.
2. Control characters (C0 and C1 except tab and newline, and the byte-order mark U+FEFF) are removed.
3. Unicode space characters (no-break space, thin space, ideographic space, ...) become a plain space.
4. Unicode NFC, so that "é" typed as one code point or as "e" + accent is the same text (and the same hash); done
   after the removals, which may bring a letter and its accent together.
5. Trailing spaces and tabs on each line are removed; three or more newlines become two (one blank line); the
   document is stripped at both ends. Indentation and runs of spaces inside a line are kept (code, verse).

Quality filters (`quality_reason`), each configurable and each counted separately in the report; the defaults
follow the spirit of the Gopher rules (Rae et al. 2021) but are deliberately mild:
- `too_short`: fewer than `min_chars` characters after cleaning (an empty document is always dropped);
- `low_alpha`: letters make up less than `min_alpha_fraction` of the non-whitespace characters (tables of
  numbers, base64, markup debris);
- `repeated_lines`: more than `max_repeated_line_fraction` of the non-empty lines repeat an earlier line
  (navigation menus, boilerplate; Tiny Shakespeare, with its speaker names, scores 0.22);
- `repeated_ngrams`: more than `max_repeated_ngram_fraction` of the word n-grams (`repeated_ngram_size`, default 5)
  repeat an earlier n-gram of the same document (spam, generated loops; ordinary prose scores below 0.05);
- `lorem_ipsum` (off unless `drop_lorem_ipsum`): the document contains "lorem ipsum", placeholder text (C4's rule).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import numpy as np

from scratchlm.data.ngrams import ngram_hashes

_NEWLINES = re.compile("[\r\x0b\x0c\u2028\u2029\x85]")  # after "\r\n" -> "\n"
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ufeff]")
_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING = re.compile("[ \t]+\n")
_BLANKS = re.compile("\n{3,}")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_LOREM = re.compile("lorem ipsum", re.IGNORECASE)
_SUSPECT = re.compile(  # any character that one of the rewrites below would change
    "[\r\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
)
# ASCII fast paths: bytes.translate deletes bytes at C speed, far faster than a regex over every character
_ASCII_WHITESPACE = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"  # what str.isspace() accepts in ASCII
_ASCII_NOT_LETTER = bytes(c for c in range(128) if not chr(c).isalpha())


def normalize(text: str) -> str:
    """The cleaned form of a document (see the module docstring). Idempotent."""
    if _SUSPECT.search(text):  # one scan; most documents need none of these rewrites
        text = _NEWLINES.sub("\n", text.replace("\r\n", "\n"))
        text = _CONTROL.sub("", text)
        text = _SPACES.sub(" ", text)
    # NFC after the removals: a removed control character may have separated a letter from its accent
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    if " \n" in text or "\t\n" in text:
        text = _TRAILING.sub("\n", text)
    if "\n\n\n" in text:
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
    drop_lorem_ipsum: bool = False


REASONS = ("empty", "too_short", "low_alpha", "repeated_lines", "repeated_ngrams", "lorem_ipsum")
"""Every reason `quality_reason` can give, in the order they are checked."""


def alpha_fraction(text: str) -> float:
    """Share of the non-whitespace characters that are letters (`str.isalpha`, any script)."""
    ascii_part = text.encode("ascii", errors="ignore")  # bytes.translate counts these at C speed
    visible = len(ascii_part.translate(None, _ASCII_WHITESPACE))
    letters = len(ascii_part.translate(None, _ASCII_NOT_LETTER))
    if len(ascii_part) != len(text):  # the rest, usually a few characters, one by one
        other = "".join(_NON_ASCII.findall(text))
        letters += sum(map(str.isalpha, other))
        visible += len(other) - sum(map(str.isspace, other))
    return letters / visible if visible else 0.0


def repeated_line_fraction(text: str) -> float:
    """Share of the non-empty lines that repeat an earlier line (compared after stripping)."""
    lines = [s for line in text.split("\n") if (s := line.strip())]
    if not lines:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


def repeated_ngram_fraction(grams: np.ndarray) -> float:
    """Share of the word n-grams (grams: (G,) hashes) that repeat an earlier n-gram of the same document."""
    if grams.size == 0:
        return 0.0
    return 1.0 - distinct(grams).size / grams.size


def distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (np.unique, by sorting: much faster than its hash path for small arrays)."""
    s = np.sort(values)
    return s[np.concatenate(([True], s[1:] != s[:-1]))] if s.size else s


def quality_reason(text: str, words: np.ndarray, cfg: QualityConfig, grams: np.ndarray | None = None) -> str | None:
    """The first filter the cleaned `text` fails (one of `REASONS`), or None to keep it.

    `words` are the document's word hashes; `grams` its `repeated_ngram_size`-gram hashes if already computed."""
    if not text:
        return "empty"
    if len(text) < cfg.min_chars:
        return "too_short"
    if cfg.min_alpha_fraction > 0 and alpha_fraction(text) < cfg.min_alpha_fraction:
        return "low_alpha"
    if cfg.max_repeated_line_fraction < 1 and repeated_line_fraction(text) > cfg.max_repeated_line_fraction:
        return "repeated_lines"
    if cfg.max_repeated_ngram_fraction < 1:
        if grams is None:
            grams = ngram_hashes(words, cfg.repeated_ngram_size)
        if repeated_ngram_fraction(grams) > cfg.max_repeated_ngram_fraction:
            return "repeated_ngrams"
    if cfg.drop_lorem_ipsum and _LOREM.search(text):
        return "lorem_ipsum"
    return None
