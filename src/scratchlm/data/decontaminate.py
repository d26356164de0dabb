"""Decontamination: drop training documents that share a word n-gram (13 by default) with an evaluation set.

Thirteen words is the GPT-3 paper's choice (Brown et al. 2020, appendix C): long enough that a shared 13-gram
is almost never a coincidence, short enough to catch a copied sentence. Words are those of `ngrams.py`
(lower-cased, punctuation and whitespace ignored), so WikiText's tokenised form (`film , television`, `@-@`)
matches ordinary prose (`film, television`); a `<unk>` in WikiText is the word "unk" and so breaks the n-grams
it falls in.

The evaluation sets are named assets (`scratchlm.assets.fetch`, e.g. `wikitext-2-test`) or text files. Their
n-grams are hashed over each file as one stream of words, sorted, deduplicated and kept as a uint64 array (8 bytes
per n-gram: WikiText-2 test, 245 k words, takes 2 MB) with a bitmap in front (`EvalNgrams`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scratchlm import assets
from scratchlm.data.clean import normalize
from scratchlm.data.ngrams import ngram_hashes, word_hashes
from scratchlm.errors import ScratchlmError


def resolve_eval_set(name: str) -> Path:
    """A named asset, or a path to a text file."""
    path = Path(name)
    if name not in assets.REGISTRY and path.is_file():
        return path
    if name not in assets.REGISTRY:
        raise ScratchlmError(
            f"--decontaminate {name!r} is neither a named asset nor a file; use e.g. wikitext-2-test "
            "(`scratchlm fetch --list`) or the path of a text file"
        )
    return assets.fetch(name)


class EvalNgrams:
    """The n-gram hashes of the evaluation sets: a sorted array for exact membership, and a bitmap of their low
    bits (at least 64 slots per n-gram, 16 MB for WikiText-2 test) that rules out most of a document's n-grams
    with one lookup each, so only the few bitmap hits are searched for."""

    def __init__(self, table: np.ndarray, n: int) -> None:
        self.table, self.n = table, n  # (G,) sorted unique uint64
        bits = max(20, (64 * max(table.size, 1) - 1).bit_length())
        self.mask = np.uint64((1 << bits) - 1)
        self.bitmap = np.zeros(1 << bits if table.size else 0, dtype=bool)
        self.bitmap[(table & self.mask).astype(np.intp)] = True

    @classmethod
    def from_names(cls, names: Sequence[str], n: int) -> EvalNgrams:
        return cls(eval_ngrams(names, n), n)

    def __getstate__(self) -> dict:
        return {"table": self.table, "n": self.n}  # workers rebuild the bitmap instead of receiving 16 MB

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["table"], state["n"])  # type: ignore[misc]

    def contains_any(self, words: np.ndarray) -> bool:
        """True if any word n-gram of the document (words: (W,) hashes) is in an evaluation set."""
        if self.table.size == 0:
            return False
        grams = ngram_hashes(words, self.n)
        candidates = grams[self.bitmap[(grams & self.mask).astype(np.intp)]]
        if candidates.size == 0:
            return False
        where = np.minimum(np.searchsorted(self.table, candidates), self.table.size - 1)
        return bool(np.any(self.table[where] == candidates))


def eval_ngrams(names: Sequence[str], n: int) -> np.ndarray:
    """Sorted unique hashes of every word n-gram in the named evaluation sets. Shape (G,), uint64."""
    parts = [np.zeros(0, dtype=np.uint64)]
    for name in names:
        text = resolve_eval_set(name).read_bytes().decode("utf-8", errors="replace")
        parts.append(ngram_hashes(word_hashes(normalize(text)), n))
    return np.unique(np.concatenate(parts))
