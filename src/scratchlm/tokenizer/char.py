"""A character-level tokenizer, as in nanoGPT's shakespeare_char: one id per distinct character of the text.

Ids follow the sorted characters (`"\\n"`, `" "`, `"!"`, ...), so the same text always gives the same
tokenizer. A character that was not in the training text cannot be encoded: that is a user error, not a
silent `<unk>`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from scratchlm.errors import ScratchlmError
from scratchlm.tokenizer.base import FORMAT, FORMAT_VERSION, Tokenizer
from scratchlm.tokenizer.patterns import special_regex


class CharTokenizer(Tokenizer):
    """`chars[i]` is the character of id i; special tokens follow."""

    kind = "char"

    def __init__(
        self, chars: list[str], special_tokens: dict[str, int] | None = None, name: str | None = None
    ):
        if any(not isinstance(c, str) or len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ScratchlmError(
                "a char tokenizer's vocabulary must be distinct single characters; re-create it"
            )
        super().__init__(len(chars), special_tokens)
        self.chars = list(chars)
        self.name = name
        self._stoi = {c: i for i, c in enumerate(self.chars)}
        self._bytes = [c.encode("utf-8", errors="surrogatepass") for c in self.chars]

    @classmethod
    def train(cls, texts: Iterable[str], special_tokens: list[str] | None = None) -> CharTokenizer:
        """The sorted set of characters in `texts`, then the special tokens (nanoGPT's `prepare.py`)."""
        specials = list(special_tokens or [])
        cut = special_regex(specials).split if specials else None
        chars: set[str] = set()
        for text in texts:  # a special token's characters are not ordinary vocabulary
            for piece in cut(text) if cut else (text,):
                chars.update(piece)
        tok = cls(sorted(chars))
        tok.add_special_tokens(list(special_tokens or []))
        return tok

    def encode_ordinary(self, text: str) -> list[int]:
        stoi = self._stoi
        try:
            return [stoi[c] for c in text]
        except KeyError as e:
            raise ScratchlmError(
                f"character {e.args[0]!r} is not in this char tokenizer's vocabulary ({len(self.chars)} characters); "
                "train it on text that contains it, or use a byte-level BPE tokenizer"
            ) from None

    def _regular_bytes(self) -> list[bytes]:
        return self._bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "type": "char",
            "name": self.name,
            "vocab": list(self.chars),
            "special_tokens": dict(self.special_tokens),
        }

    def to_tiktoken(self, name: str | None = None) -> Any:
        raise ScratchlmError(
            "a char tokenizer cannot be exported to tiktoken (tiktoken is byte-level BPE only)"
        )
