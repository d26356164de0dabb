"""Byte-level BPE: GPT-2's byte<->unicode map, merges applied by rank, a per-chunk cache.

How a text becomes ids:
1. Special tokens are split off (tiktoken's rules, `base.Tokenizer.encode`).
2. The split pattern cuts the rest into chunks (`" world"`, `"123"`, `"\n\n"`); BPE never crosses a chunk edge.
3. Each chunk's UTF-8 bytes are spelled with GPT-2's byte->unicode map: every byte becomes one printable
   character (`" "` -> `"Ġ"`), so a token is a short `str` and Python's fast string dict does the lookups.
4. BPE starts from single bytes and repeatedly merges the adjacent pair whose concatenation has the lowest rank
   (the leftmost on a tie), until no adjacent pair is a token. The rank of a token is its id: tokens made by
   earlier merges have smaller ids. This is exactly tiktoken's rule, so the ids equal tiktoken's.

Speed (pure Python): the pre-split is one C-level `findall`; a chunk seen before costs one dict lookup (the
cache is keyed by the raw chunk, before any byte mapping); a chunk that is itself a token (most words) costs one
more lookup; only the rest run the merge loop, which keeps a list of pair ranks and after each merge
recomputes just the two neighbouring pairs. That loop is O(n^2) in the chunk length, so chunks longer than
`LONG_CHUNK` bytes (a run of 10,000 `!`) take a heap over a linked list instead: same rule, O(n log n).
"""

from __future__ import annotations

import functools
import heapq
from typing import Any

import regex

from scratchlm.errors import ScratchlmError
from scratchlm.tokenizer.base import FORMAT, FORMAT_VERSION, Tokenizer
from scratchlm.tokenizer.patterns import GPT2_PATTERN


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character.

    Printable Latin-1 bytes map to themselves; the other 68 (control characters, space, ...) map to 256, 257, ...
    in byte order. Example: `bytes_to_unicode()[ord(" ")] == "Ġ"`, `[ord("\\n")] == "Ċ"`.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


BYTE_TO_UNICODE = bytes_to_unicode()
UNICODE_TO_BYTE = {c: b for b, c in BYTE_TO_UNICODE.items()}
# latin-1 decoding turns byte b into chr(b); this table then maps chr(b) -> GPT-2's character for b.
_TRANSLATE = str.maketrans({chr(b): c for b, c in BYTE_TO_UNICODE.items()})
_INF = 1 << 62


def to_unicode(token: bytes) -> str:
    """Bytes -> GPT-2's printable spelling (`b" the"` -> `"Ġthe"`)."""
    return token.decode("latin-1").translate(_TRANSLATE)


def from_unicode(spelled: str) -> bytes:
    """GPT-2's printable spelling -> bytes (`"Ġthe"` -> `b" the"`); KeyError on a character outside the map."""
    return bytes(UNICODE_TO_BYTE[c] for c in spelled)


class BPETokenizer(Tokenizer):
    """Byte-level BPE. `vocab[i]` is the bytes of token i, and i is also its merge rank (see module docstring)."""

    kind = "bpe"
    CACHE_SIZE = 1 << 17  # chunks; the cache is cleared when full, so memory stays bounded on endless input
    LONG_CHUNK = 256  # bytes; longer chunks take the O(n log n) heap path (same result)

    def __init__(
        self,
        vocab: list[bytes],
        special_tokens: dict[str, int] | None = None,
        pattern: str = GPT2_PATTERN,
        name: str | None = None,
    ) -> None:
        super().__init__(len(vocab), special_tokens)
        self.vocab = list(vocab)
        self.pattern = pattern
        self.name = name
        self._encoder: dict[str, int] = {to_unicode(tok): i for i, tok in enumerate(self.vocab)}
        if len(self._encoder) != len(self.vocab):
            raise ScratchlmError("a BPE vocabulary lists the same token twice; re-create the tokenizer file")
        missing = [b for b in range(256) if BYTE_TO_UNICODE[b] not in self._encoder]
        if missing:
            raise ScratchlmError(
                f"a byte-level BPE vocabulary must contain all 256 single bytes ({len(missing)} are missing); "
                "re-create the tokenizer file"
            )
        self._findall = regex.compile(pattern).findall
        self._cache: dict[str, list[int]] = {}

    # ---- construction ---------------------------------------------------------------------------------------
    # ---- encoding -------------------------------------------------------------------------------------------
    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text in which special-token strings are plain text (no checks, the fast path)."""
        cache = self._cache
        get = cache.get
        ids: list[int] = []
        extend = ids.extend
        try:
            for chunk in self._findall(text):
                chunk_ids = get(chunk)
                if chunk_ids is None:
                    chunk_ids = self._encode_chunk(chunk)
                    if len(cache) >= self.CACHE_SIZE:
                        cache.clear()
                    cache[chunk] = chunk_ids
                extend(chunk_ids)
        except UnicodeEncodeError:
            # A lone surrogate has no UTF-8 form. tiktoken's rule: pair up what pairs, the rest becomes U+FFFD.
            return self.encode_ordinary(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))
        return ids

    def _encode_chunk(self, chunk: str) -> list[int]:
        """BPE on one chunk (see the module docstring for the rule)."""
        encoder = self._encoder
        word = chunk.encode("utf-8").decode("latin-1").translate(_TRANSLATE)
        whole = encoder.get(word)
        if whole is not None:  # tiktoken takes this shortcut too, so it is part of the definition
            return [whole]
        if len(word) > self.LONG_CHUNK:
            return self._encode_long(word)
        parts = list(word)  # one character per byte
        get = encoder.get
        # ranks[i] is the rank of parts[i] + parts[i + 1] (or _INF when that is not a token)
        ranks = [get(a + b, _INF) for a, b in zip(parts, parts[1:])]
        while ranks:
            best = min(ranks)
            if best == _INF:
                break
            i = ranks.index(best)  # the leftmost on a tie, as tiktoken
            merged = parts[i] + parts[i + 1]
            parts[i] = merged
            del parts[i + 1]
            del ranks[i]
            if i > 0:
                ranks[i - 1] = get(parts[i - 1] + merged, _INF)
            if i < len(ranks):
                ranks[i] = get(merged + parts[i + 1], _INF)
        return [encoder[p] for p in parts]

    def _encode_long(self, word: str) -> list[int]:
        """The same rule for a long chunk (a run of 10,000 `!`) in O(n log n) instead of O(n^2).

        Parts form a linked list (`nxt`/`prv` by start offset); a heap holds (rank, start, merged) for adjacent
        pairs. The smallest rank pops first and, on a tie, the smallest start: the leftmost, as in the list
        version. An entry whose two parts have changed since it was pushed no longer spells `merged`: skip it.
        """
        get = self._encoder.get
        n = len(word)
        parts: list[str | None] = list(word)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            rank = get(word[i : i + 2])
            if rank is not None:
                heap.append((rank, i, word[i : i + 2]))
        heapq.heapify(heap)
        while heap:
            _, i, merged = heapq.heappop(heap)
            j = nxt[i]
            left = parts[i]
            if left is None or j >= n or left + parts[j] != merged:  # type: ignore[operator]
                continue  # stale
            parts[i], parts[j] = merged, None
            k = nxt[i] = nxt[j]
            if k < n:
                prv[k] = i
                rank = get(merged + parts[k])  # type: ignore[operator]
                if rank is not None:
                    heapq.heappush(heap, (rank, i, merged + parts[k]))  # type: ignore[operator]
            p = prv[i]
            if p >= 0:
                rank = get(parts[p] + merged)  # type: ignore[operator]
                if rank is not None:
                    heapq.heappush(heap, (rank, p, parts[p] + merged))  # type: ignore[operator]
        ids = []
        i = 0
        while i < n:
            ids.append(self._encoder[parts[i]])  # type: ignore[index]
            i = nxt[i]
        return ids

    def clear_cache(self) -> None:
        """Forget the per-chunk cache (benchmarks measure cold-cache speed with it)."""
        self._cache.clear()

    # ---- decoding and files ---------------------------------------------------------------------------------
    def _regular_bytes(self) -> list[bytes]:
        return self.vocab

    def to_dict(self) -> dict[str, Any]:
        """JSON form; tokens are spelled with GPT-2's printable byte map so the file is readable."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "type": "bpe",
            "name": self.name,
            "pattern": self.pattern,
            "vocab": [to_unicode(t) for t in self.vocab],
            "special_tokens": dict(self.special_tokens),
        }

    def to_tiktoken(self, name: str | None = None) -> Any:
        """A `tiktoken.Encoding` with identical ids: the fast path for bulk encoding (needs the tiktoken extra)."""
        try:
            import tiktoken
        except ImportError:
            raise ScratchlmError(
                "exporting to tiktoken needs the tiktoken package; `pip install 'scratchlm[tiktoken]'`"
            ) from None
        return tiktoken.Encoding(
            name=name or self.name or f"scratchlm-{self.identity()[7:19]}",
            pat_str=self.pattern,
            mergeable_ranks={tok: i for i, tok in enumerate(self.vocab)},
            special_tokens=dict(self.special_tokens),
        )
