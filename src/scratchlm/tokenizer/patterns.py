"""Pre-split patterns and tiktoken's special-token rules.

BPE never merges across the chunks that a regex cuts the text into (words with their leading space, runs of
digits, punctuation, whitespace), so a pattern decides what a token can span. Two are provided:

- `GPT2_PATTERN`: the pattern of the original GPT-2 release (`encoder.py`). tiktoken's `r50k` pattern is an
  equivalent, faster spelling of it for Rust's regex engine.
- `GPT4_PATTERN`: tiktoken's `cl100k_base` pattern: case-insensitive contractions, digits in groups of at most 3,
  and newlines kept together with the punctuation before them.

Special tokens (`<|endoftext|>`) are strings that must never come out of ordinary text by accident. The rules are
tiktoken's: `encode` raises when a special token appears in the text unless the caller says how to treat it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

import regex

from scratchlm.errors import ConfigError, ScratchlmError

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT4_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""

PATTERNS: dict[str, str] = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}


def resolve_pattern(name_or_regex: str) -> str:
    """`gpt2` / `gpt4` -> the regex; anything else must itself compile as a regex."""
    if name_or_regex in PATTERNS:
        return PATTERNS[name_or_regex]
    try:
        regex.compile(name_or_regex)
    except regex.error as e:
        raise ConfigError(
            f"split pattern {name_or_regex!r} is neither gpt2/gpt4 nor a valid regex ({e}); use --pattern gpt2 or gpt4"
        ) from None
    return name_or_regex


def pattern_name(pattern: str) -> str:
    """The short name of a known pattern, else `custom`."""
    return next((n for n, p in PATTERNS.items() if p == pattern), "custom")


AllowedSpecial = str | Collection[str]


class DisallowedSpecialError(ScratchlmError, ValueError):
    """A special token appeared in text where it is not allowed (tiktoken raises a ValueError here too)."""

    def __init__(self, message: str, token: str) -> None:
        super().__init__(message)
        self.token = token


def resolve_specials(
    special_tokens: Collection[str], allowed_special: AllowedSpecial, disallowed_special: AllowedSpecial
) -> tuple[set[str], set[str]]:
    """tiktoken's rules -> (allowed, disallowed) sets of special-token strings.

    - `allowed_special`: `"all"`, a set of special-token strings, `"none_raise"` (the default: none allowed) or
      `"none"` (none allowed, and none raise either: every special is ordinary text; minbpe's spelling).
    - `disallowed_special`: `"all"` (every special not allowed; the default) or a collection; `()` makes a
      non-allowed special plain text. Allowed specials become their id; disallowed ones raise.
    """
    specials = set(special_tokens)
    if allowed_special == "all":
        allowed = specials
    elif allowed_special == "none":
        return set(), set()
    elif allowed_special == "none_raise":
        allowed = set()
    elif isinstance(allowed_special, str):
        raise ScratchlmError(
            f"allowed_special={allowed_special!r} is not understood; use 'all', 'none', 'none_raise' or a set of tokens"
        )
    else:
        allowed = set(allowed_special)
    if disallowed_special == "all":
        disallowed = specials - allowed
    elif isinstance(disallowed_special, str):
        raise ScratchlmError(
            f"disallowed_special={disallowed_special!r} is not understood; use 'all' or a set of tokens"
        )
    else:
        disallowed = set(disallowed_special)
    return allowed, disallowed


def special_regex(tokens: Collection[str]) -> regex.Pattern[str]:
    """One alternation of the tokens, longest first so that a token that prefixes another never wins."""
    return regex.compile("|".join(regex.escape(t) for t in sorted(tokens, key=lambda t: (-len(t), t))))


def check_disallowed(text: str, disallowed: Collection[str]) -> None:
    """Raise the one-line error tiktoken raises (as a ValueError) when `text` contains a disallowed special."""
    if not disallowed:
        return
    match = special_regex(disallowed).search(text)
    if match:
        tok = match.group()
        raise DisallowedSpecialError(
            f"the text contains the special token {tok!r}, which is not allowed here; pass "
            f"allowed_special={{{tok!r}}} (or 'all') to encode it as a special token, or disallowed_special=() "
            "to encode it as plain text",
            tok,
        )


def split_on_specials(text: str, allowed: Collection[str]) -> Iterator[tuple[str, bool]]:
    """Yield (piece, is_special): ordinary text between the allowed special tokens, and the specials themselves."""
    if not allowed:
        if text:
            yield text, False
        return
    start = 0
    for m in special_regex(allowed).finditer(text):
        if m.start() > start:
            yield text[start : m.start()], False
        yield m.group(), True
        start = m.end()
    if start < len(text):
        yield text[start:], False
