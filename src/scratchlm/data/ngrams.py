"""Words and word n-grams as 64-bit hashes, computed with numpy over a document's bytes (no Python per word).

Three parts of the pipeline look at word n-grams: the repeated-n-gram quality filter (`clean.py`), MinHash
shingles (`dedup.py`) and the 13-gram decontamination check (`decontaminate.py`). They share one definition:

- a *word* is a maximal run of bytes of the lower-cased UTF-8 text that are neither ASCII whitespace nor ASCII
  punctuation, so `"Film, television"`, `"film , television"` and `"FILM television"` give the same words
  (WikiText's `@-@` and spaced-out punctuation vanish too);
- a word's hash is a polynomial hash of its bytes mod 2^64, computed for all words at once from prefix sums
  (`H[e] - H[s]` times the inverse power of the start), then mixed with splitmix64;
- an n-gram's hash combines its n word hashes as a polynomial in another constant, mixed again.

Hashes are deterministic (no Python `hash()`, which is salted per process) so that every worker process and every
re-run agree. 64 bits make accidental collisions negligible (about n^2 / 2^65 for n hashes).
"""

from __future__ import annotations

import string

import numpy as np

_MASK64 = (1 << 64) - 1
_P = 0x100000001B3  # FNV-1a's 64-bit prime: odd, so invertible mod 2^64
_P_INV = pow(_P, -1, 1 << 64)
_Q = 0x9E3779B97F4A7C15  # golden-ratio constant, odd: combines word hashes into n-gram hashes
_PIECE = 1 << 20
"""Bytes hashed per numpy pass: bounds the temporary arrays (about 40 bytes per input byte) for huge documents."""

_SEPARATOR = np.zeros(256, dtype=bool)
_SEPARATOR[list(string.whitespace.encode() + string.punctuation.encode())] = True

_powers: tuple[np.ndarray, np.ndarray] | None = None


def _power_tables() -> tuple[np.ndarray, np.ndarray]:
    """P^i and P^-i mod 2^64 for i < _PIECE + 1 (16 MiB, built once per process)."""
    global _powers
    if _powers is None:
        n = _PIECE + 1
        p = np.full(n, _P, dtype=np.uint64)
        p[0] = 1
        q = np.full(n, _P_INV, dtype=np.uint64)
        q[0] = 1
        _powers = (np.cumprod(p, dtype=np.uint64), np.cumprod(q, dtype=np.uint64))  # wraps mod 2^64
    return _powers


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the output (a bijection on uint64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _piece_word_hashes(b: np.ndarray) -> np.ndarray:
    """Word hashes of one piece of bytes (uint8) that does not cut a word."""
    is_word = ~_SEPARATOR[b]
    edges = np.diff(is_word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    if starts.size == 0:
        return np.zeros(0, dtype=np.uint64)
    pw, inv = _power_tables()
    n = b.size
    prefix = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum(b.astype(np.uint64) * pw[:n], dtype=np.uint64, out=prefix[1:])  # H[i] = sum_{j<i} b_j P^j
    h = (prefix[ends] - prefix[starts]) * inv[starts]  # sum_{j=s}^{e-1} b_j P^(j-s): independent of position
    return mix64(h + (ends - starts).astype(np.uint64))


def word_hashes(text: str) -> np.ndarray:
    """One uint64 hash per word of `text`, in order. Shape (W,)."""
    data = text.lower().encode("utf-8", errors="replace")
    b = np.frombuffer(data, dtype=np.uint8)
    if b.size <= _PIECE:
        return _piece_word_hashes(b)
    out, start = [], 0
    while start < b.size:
        end = min(start + _PIECE, b.size)
        if end < b.size:  # move the cut back to a separator so no word is split (a 1 MiB word is cut anyway)
            seps = np.flatnonzero(_SEPARATOR[b[start:end]])
            if seps.size:
                end = start + int(seps[-1]) + 1
        out.append(_piece_word_hashes(b[start:end]))
        start = end
    return np.concatenate(out)


def ngram_hashes(words: np.ndarray, n: int, short: bool = False) -> np.ndarray:
    """Hashes of the W - n + 1 word n-grams (overlapping), shape (W - n + 1,).

    With `short=True` a document of 1..n-1 words gives one hash of all its words instead of none (MinHash wants
    every non-empty document to have a shingle).
    """
    m = words.size - n + 1
    if m <= 0:
        if not short or words.size == 0:
            return np.zeros(0, dtype=np.uint64)
        n, m = words.size, 1
    acc = np.zeros(m, dtype=np.uint64)
    q = np.uint64(_Q)
    for k in range(n):
        acc = acc * q + words[k : k + m]  # polynomial in Q over the n words, mod 2^64
    return mix64(acc ^ np.uint64(n))
