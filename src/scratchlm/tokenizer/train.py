"""Training a byte-level BPE tokenizer, with pair counts updated incrementally.

The textbook loop (minbpe's) recounts every adjacent pair of the whole corpus after each merge: simple, and
O(corpus) per merge. Here the work per merge is proportional to the chunks that actually contain the pair:

1. The pre-split pattern cuts the text into chunks; identical chunks are counted once, with their frequency as
   a weight (`" the"` occurs 10,000 times but is processed once). Special-token strings are cut out first.
2. `counts[pair]` is the weighted number of occurrences of each adjacent pair; `where[pair]` is the set of chunks
   that contain it (kept loosely: a chunk may stay listed after the pair left it; merging skips it then).
3. A heap holds (-count, left, right) entries with lazy invalidation: an entry whose count is out of date is
   dropped or re-pushed with the current count when it reaches the top, so the best pair is found in O(log n).
4. Merging pair (a, b) into token t rewrites only the chunks in `where[(a, b)]`: each one's old pairs are
   subtracted and its new pairs added (times its weight). Only pairs that contain t can grow, so only those are
   pushed onto the heap again.

**Determinism and tie-break.** The pair with the highest count wins; among equal counts the pair with the smallest
(left id, right id) wins. Bytes have ids 0..255 (their values), so early ties go to the lower bytes. The result
depends only on the chunk counts, never on dict or set order.

**A merge that makes an existing token.** Rarely the best pair spells a token that already exists (`"a" + "bc"`
after `"ab" + "c"`). Its occurrences then become that token and no new id is added: every token's bytes are
unique, which tiktoken (and our rank rule: merge the pair whose concatenation has the lowest id) needs.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import regex

from scratchlm.errors import ConfigError, ScratchlmError
from scratchlm.tokenizer.base import Tokenizer
from scratchlm.tokenizer.bpe import BPETokenizer
from scratchlm.tokenizer.char import CharTokenizer
from scratchlm.tokenizer.patterns import resolve_pattern, special_regex


@dataclass
class TokenizerTrainConfig:
    """How to train a tokenizer."""

    kind: Literal["bpe", "char"] = "bpe"
    """bpe: byte-level BPE; char: one token per distinct character (nanoGPT's shakespeare_char)."""
    vocab_size: int = 4096
    """Total number of ids, special tokens included (bpe only; char takes what the text has)."""
    pattern: str = "gpt2"
    """Pre-split pattern: gpt2, gpt4 (cl100k) or a regex of your own."""
    special: tuple[str, ...] = ("<|endoftext|>",)
    """Special tokens, given the last ids (the first one usually separates documents)."""

    def __post_init__(self) -> None:
        if self.kind not in ("bpe", "char"):
            raise ConfigError(f"kind={self.kind!r} is not known; use bpe or char")
        if len(set(self.special)) != len(self.special) or any(not s for s in self.special):
            raise ConfigError("special tokens must be distinct non-empty strings; fix --special")
        minimum = 256 + len(self.special)
        if self.kind == "bpe" and self.vocab_size < minimum:
            raise ConfigError(
                f"vocab_size={self.vocab_size} is too small: a byte-level BPE needs 256 byte tokens plus "
                f"{len(self.special)} special tokens; use --vocab-size {minimum} or more"
            )
        self.pattern = resolve_pattern(self.pattern)


# on_merge(merge_index, n_merges, token_bytes, count) is called after each merge (progress display)
MergeCallback = Callable[[int, int, bytes, int], None]


def count_chunks(texts: Iterable[str], pattern: str, special_tokens: Iterable[str] = ()) -> Counter[str]:
    """Frequency of each pre-token chunk in `texts`; special-token strings are removed first.

    Example: `count_chunks(["the cat, the hat"], GPT2_PATTERN)` -> `{"the": 1, " cat": 1, ",": 1, " the": 1, " hat": 1}`.
    """
    findall = regex.compile(pattern).findall
    specials = list(special_tokens)
    cut = special_regex(specials).split if specials else None
    counts: Counter[str] = Counter()
    for text in texts:
        for piece in cut(text) if cut else (text,):
            counts.update(findall(piece))
    return counts


def train_bpe(
    chunk_counts: Counter[str] | dict[str, int],
    n_merges: int,
    on_merge: MergeCallback | None = None,
) -> tuple[list[bytes], list[tuple[int, int, int]]]:
    """Learn up to `n_merges` merges from chunk frequencies.

    Returns the vocabulary (id -> bytes; ids 0..255 are the bytes) and the merges as (left, right, result) ids in
    the order they were made. Stops early when no pair is left (every chunk is a single token).
    """
    vocab: list[bytes] = [bytes([b]) for b in range(256)]
    token_id: dict[bytes, int] = {t: i for i, t in enumerate(vocab)}
    chunks: list[list[int]] = []  # unique chunks as token ids
    weights: list[int] = []
    for chunk, freq in sorted(chunk_counts.items()):  # sorted: chunk indices do not depend on input order
        chunks.append(list(chunk.encode("utf-8")))
        weights.append(freq)

    counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for w, seq in enumerate(chunks):
        f = weights[w]
        for pair in zip(seq, seq[1:]):
            counts[pair] = counts.get(pair, 0) + f
            where.setdefault(pair, set()).add(w)
    heap = [(-c, a, b) for (a, b), c in counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int, int]] = []
    while len(merges) < n_merges and heap:
        neg, a, b = heapq.heappop(heap)
        current = counts.get((a, b), 0)
        if current != -neg:  # out of date
            if 0 < current < -neg:  # the count fell since the push: queue it again at its true count
                heapq.heappush(heap, (-current, a, b))
            continue  # (a count that grew was pushed when it grew)
        new_bytes = vocab[a] + vocab[b]
        t = token_id.get(new_bytes)
        if t is None:
            t = len(vocab)
            vocab.append(new_bytes)
            token_id[new_bytes] = t
        grown: set[tuple[int, int]] = set()
        for w in where.pop((a, b)):
            seq = chunks[w]
            new = _merge_pair(seq, a, b, t)
            if len(new) == len(seq):  # stale index entry: the pair already left this chunk
                continue
            f = weights[w]
            for pair in zip(seq, seq[1:]):
                counts[pair] -= f
            for pair in zip(new, new[1:]):
                counts[pair] = counts.get(pair, 0) + f
                if t in pair:
                    grown.add(pair)
                    where.setdefault(pair, set()).add(w)
            chunks[w] = new
        assert counts[(a, b)] == 0, "every occurrence of the merged pair must be gone"
        del counts[(a, b)]
        for pair in grown:
            if counts[pair] > 0:
                heapq.heappush(heap, (-counts[pair], *pair))
        merges.append((a, b, t))
        if on_merge is not None:
            on_merge(len(merges), n_merges, new_bytes, current)
    return vocab, merges


def _merge_pair(seq: list[int], a: int, b: int, t: int) -> list[int]:
    """Replace each non-overlapping (a, b) in `seq`, left to right, by t: `[1, 2, 1, 2, 2], (1, 2) -> [t, t, 2]`."""
    out: list[int] = []
    i, n = 0, len(seq)
    while i < n:
        if seq[i] == a and i + 1 < n and seq[i + 1] == b:
            out.append(t)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def train(
    config: TokenizerTrainConfig, texts: Iterable[str], on_merge: MergeCallback | None = None
) -> Tokenizer:
    """Train the tokenizer `config` describes on `texts` (an iterable of documents or files' contents)."""
    if config.kind == "char":
        texts = list(texts)
        if not any(texts):
            raise ScratchlmError("the text to train the tokenizer on is empty; pass files that contain text")
        return CharTokenizer.train(texts, list(config.special))
    counts = count_chunks(texts, config.pattern, config.special)
    if not counts:
        raise ScratchlmError("the text to train the tokenizer on is empty; pass files that contain text")
    n_merges = config.vocab_size - 256 - len(config.special)
    vocab, _ = train_bpe(counts, n_merges, on_merge)
    if len(vocab) < 256 + n_merges:  # the text ran out of pairs to merge: a smaller vocabulary than asked
        reached = len(vocab) + len(config.special)
        raise ScratchlmError(
            f"the training text allows only {reached} tokens (no pair is left to merge), not vocab_size "
            f"{config.vocab_size}; give more text or ask for --vocab-size {reached} or less"
        )
    specials = {tok: len(vocab) + k for k, tok in enumerate(config.special)}
    return BPETokenizer(vocab, specials, config.pattern)
