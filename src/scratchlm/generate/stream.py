"""Token ids in, text pieces out: a detokenizer for streaming that never splits a character or leaks a stop string.

Two traps when printing tokens as they come:
- A byte-level BPE token can end in the middle of a multi-byte UTF-8 character (an emoji is often 2-4 tokens).
  Decoding each token alone prints replacement characters. We feed the token bytes to an incremental UTF-8
  decoder, which holds back an incomplete character until its last byte arrives.
- A stop string can span tokens ("\\n\\nUser:" may arrive as "\\n", "\\nUser", ":"). Text that could still turn
  into a stop string is held back until it is clear either way; when a stop string appears the text is cut
  exactly before it, and nothing after it is ever returned.

Knows only `tokenizer.decode_bytes(ids) -> bytes`.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence
from typing import Any


class TextStream:
    """Feed token ids with `push`, get the text that is safe to show; `finish` returns what was held back."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = [s for s in stop if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._bytes_cache: dict[int, bytes] = {}
        self.text = ""
        """All complete text so far (cut before the stop string once one is found)."""
        self.emitted = 0
        """How many characters of `text` have been returned."""
        self.stopped = False
        """True once a stop string was found: `push` returns "" from then on."""

    def token_bytes(self, token_id: int) -> bytes:
        b = self._bytes_cache.get(token_id)
        if b is None:
            b = self._bytes_cache[token_id] = self._tokenizer.decode_bytes([token_id])
        return b

    def push(self, token_id: int) -> str:
        """Add one token; return the new text that can be shown now (often "", never part of a stop string)."""
        if self.stopped:
            return ""
        self.text += self._decoder.decode(self.token_bytes(token_id))
        return self._release(final=False)

    def extend(self, ids: Iterable[int]) -> str:
        return "".join(self.push(i) for i in ids)

    def finish(self) -> str:
        """No more tokens: flush an incomplete character (as U+FFFD) and any held-back text."""
        if self.stopped:
            return ""
        self.text += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        # Search from the first unreleased character: text that could begin a stop string is never released,
        # so no match can start before `emitted`.
        start = self.emitted
        cut = first_stop(self.text, self._stop, start)
        if cut >= 0:
            self.stopped = True
            self.text = self.text[:cut]
            return self._take(cut)
        end = len(self.text) if final else len(self.text) - self._held_back(start)
        return self._take(end)

    def _held_back(self, start: int) -> int:
        """Length of the longest unreleased suffix of `text` that is a proper prefix of some stop string."""
        tail = self.text[start:]
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(tail)), best, -1):
                if tail.endswith(s[:k]):
                    best = k
                    break
        return best

    def _take(self, end: int) -> str:
        piece = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return piece


def first_stop(text: str, stop: Sequence[str], start: int = 0) -> int:
    """Where to cut `text`: the start of the first stop string to be completed reading left to right, or -1.

    "First completed" (earliest end, then earliest start) is what generation sees: with stops ["a", ":a:"] the
    text ":a:" stops at "a", since decoding halts before the final ":" ever exists.
    """
    best = (len(text) + 1, -1)
    for s in stop:
        i = text.find(s, start) if s else -1
        if i >= 0:
            best = min(best, (i + len(s), i))
    return best[1]


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` cut before its first stop string (see `first_stop`), and whether one was found."""
    cut = first_stop(text, stop)
    return (text[:cut], True) if cut >= 0 else (text, False)
