"""What every scratchlm tokenizer offers (BPE and char-level alike), and the parts they share.

A subclass supplies `encode_ordinary` (text without special tokens -> ids), `_regular_bytes` (the bytes of each
regular token, indexed by id) and `to_dict`. Special tokens, decoding, saving and the identity hash live here, so
the two kinds cannot disagree on them. Special tokens always take the ids after the regular vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

from scratchlm.errors import ScratchlmError
from scratchlm.fs import atomic_write_text
from scratchlm.tokenizer.patterns import AllowedSpecial, check_disallowed, resolve_specials, split_on_specials

EOT = "<|endoftext|>"
FORMAT = "scratchlm-tokenizer"  # tokenizer.json's "format" (the file format is described in files.py)
FORMAT_VERSION = 1


class Tokenizer:
    """Base class; see `BPETokenizer` and `CharTokenizer`."""

    kind = "base"

    def __init__(self, n_regular: int, special_tokens: dict[str, int] | None = None) -> None:
        self.n_regular = n_regular
        self._identity: str | None = None  # cached; adding a special token resets it
        self.special_tokens: dict[str, int] = {}
        self._special_bytes: dict[int, bytes] = {}
        for tok, idx in (special_tokens or {}).items():
            self._set_special(tok, idx)

    # ---- special tokens -------------------------------------------------------------------------------------
    def _set_special(self, token: str, idx: int) -> None:
        if not isinstance(token, str) or not token:
            raise ScratchlmError(f"special token {token!r} must be a non-empty string")
        if not isinstance(idx, int) or idx < self.n_regular or idx in self._special_bytes:
            raise ScratchlmError(
                f"special token {token!r} has id {idx!r}, which collides with another token; special ids must be "
                f"distinct and at least {self.n_regular} (the regular vocabulary size)"
            )
        self.special_tokens[token] = idx
        self._identity = None
        self._special_bytes[idx] = token.encode("utf-8")

    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        """Give each token an id after the current vocabulary (existing specials keep theirs); return the ids."""
        ids = []
        for tok in tokens:
            if tok not in self.special_tokens:
                self._set_special(tok, self.vocab_size)
            ids.append(self.special_tokens[tok])
        return ids

    @property
    def vocab_size(self) -> int:
        """Number of ids (the largest id + 1): what a model's embedding table needs."""
        return max([self.n_regular - 1, *self.special_tokens.values()]) + 1

    @property
    def eot_id(self) -> int | None:
        """Id of `<|endoftext|>` (the document separator), if this tokenizer has it."""
        return self.special_tokens.get(EOT)

    # ---- encoding -------------------------------------------------------------------------------------------
    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text in which special-token strings are plain text."""
        raise NotImplementedError

    def encode(
        self,
        text: str,
        allowed_special: AllowedSpecial = "none_raise",
        disallowed_special: AllowedSpecial = "all",
    ) -> list[int]:
        """Encode with tiktoken's special-token rules (see `patterns.resolve_specials`).

        The default raises on any special token in the text: text from users must not be able to inject
        `<|endoftext|>` by typing it. Pass `allowed_special="all"` for text you built yourself.
        """
        allowed, disallowed = resolve_specials(self.special_tokens, allowed_special, disallowed_special)
        check_disallowed(text, disallowed)
        ids: list[int] = []
        for piece, is_special in split_on_specials(text, allowed & self.special_tokens.keys()):
            if is_special:
                ids.append(self.special_tokens[piece])
            else:
                ids.extend(self.encode_ordinary(piece))
        return ids

    # ---- decoding -------------------------------------------------------------------------------------------
    def _regular_bytes(self) -> list[bytes]:
        raise NotImplementedError

    def token_bytes(self, idx: int) -> bytes:
        """The bytes of one token (a special token's UTF-8 spelling); streaming decoders join these."""
        if 0 <= idx < self.n_regular:
            return self._regular_bytes()[idx]
        if idx in self._special_bytes:
            return self._special_bytes[idx]
        raise self._out_of_range(idx)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenated token bytes; a token may hold part of a UTF-8 character, so this is the exact form."""
        table = self._regular_bytes()
        try:
            return b"".join([table[i] if i >= 0 else self._special_bytes[i] for i in ids])
        except (IndexError, KeyError, TypeError):
            out = []
            for i in ids:  # the slow path finds the bad id (and handles specials)
                out.append(self.token_bytes(i) if isinstance(i, int) else self._bad_id(i))
            return b"".join(out)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids; invalid UTF-8 (a character cut between tokens) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def _out_of_range(self, idx: int) -> ScratchlmError:
        return ScratchlmError(
            f"token id {idx} is out of range for this tokenizer (ids are 0..{self.vocab_size - 1}); decode ids "
            "made by the same tokenizer"
        )

    def _bad_id(self, idx: Any) -> bytes:
        raise ScratchlmError(f"token id {idx!r} is not an integer; pass a list of integer ids")

    # ---- files ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON form (see `scratchlm.tokenizer.files`)."""
        raise NotImplementedError

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the JSON form atomically (a temp file renamed into place)."""
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n"
        try:
            atomic_write_text(path, text, what="tokenizer file")
        except OSError as e:  # e.g. the path is a folder; the temp file is already removed
            raise ScratchlmError(
                f"cannot write tokenizer file {path} ({e.strerror or e}); choose a writable file path"
            ) from None

    def identity(self) -> str:
        """A stable hash of what decides the ids (the JSON form without its informational "name").

        Equal identities mean equal ids for every text; shards and checkpoints record it to catch a mismatch.
        """
        if self._identity is None:
            d = {k: v for k, v in self.to_dict().items() if k != "name"}
            canonical = json.dumps(d, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
            self._identity = "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        return self._identity

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, special_tokens={self.special_tokens})"
