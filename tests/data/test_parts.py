"""The pieces of the pipeline against plain-Python references: cleaning, word hashes, the hash index, MinHash,
decontamination and the shard header."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.data import shards
from scratchlm.data.clean import (
    QualityConfig,
    alpha_fraction,
    normalize,
    quality_reason,
    repeated_line_fraction,
)
from scratchlm.data.decontaminate import EvalNgrams
from scratchlm.data.dedup import HashIndex, MinHasher, candidate_probability, exact_key
from scratchlm.data.ngrams import mix64, ngram_hashes, word_hashes
from scratchlm.errors import ScratchlmError


def _normalize_reference(text: str) -> str:
    """The documented steps, one regex each, in order."""
    text = re.sub("\r\n|[\r\x0b\x0c\u2028\u2029\x85]", "\n", text)
    text = re.sub("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ufeff]", "", text)
    text = re.sub("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]", " ", text)
    text = unicodedata.normalize("NFC", text)
    text = re.sub("[ \t]+(?=\n|$)", "", text)
    return re.sub("\n{3,}", "\n\n", text).strip()


_TRICKY = st.text(alphabet="ab é\u0301\r\n\t\x0b\x0c\x00\x1f\x7f\x85\x9f\u00a0\u2028\u3000\ufeff.1日", max_size=40)


@settings(max_examples=300, deadline=None)
@given(_TRICKY)
def test_normalize_matches_the_documented_steps_and_is_idempotent(text: str) -> None:
    cleaned = normalize(text)
    assert cleaned == _normalize_reference(text)
    assert normalize(cleaned) == cleaned


@settings(max_examples=300, deadline=None)
@given(_TRICKY)
def test_alpha_fraction_matches_isalpha(text: str) -> None:
    visible = [c for c in text if not c.isspace()]
    expected = sum(c.isalpha() for c in visible) / len(visible) if visible else 0.0
    assert alpha_fraction(text) == pytest.approx(expected, abs=1e-12)


def test_quality_reasons_and_known_values() -> None:
    cfg = QualityConfig()
    assert repeated_line_fraction("a\nb\na\n\na\n") == pytest.approx(0.5)  # 2 of 4 non-empty lines repeat
    prose = "The river ran past the old mill, and the miller watched it turn the wheel all day long. " * 1
    prose += "Nobody remembered who had built the mill, only that it had always been there by the water."
    assert quality_reason(prose, word_hashes(prose), cfg) is None
    assert quality_reason("", word_hashes(""), cfg) == "empty"
    assert quality_reason("short", word_hashes("short"), cfg) == "too_short"
    spam = "cheap pills online now " * 30
    assert quality_reason(spam, word_hashes(spam), cfg) == "repeated_ngrams"
    assert quality_reason(spam, word_hashes(spam), QualityConfig(max_repeated_ngram_fraction=1)) is None


def test_words_ignore_case_punctuation_and_spacing() -> None:
    a = word_hashes("Film, television and THEATRE actor.")
    b = word_hashes("film , television and theatre @-@ actor")
    assert a.size == 5 and np.array_equal(a, b)
    assert len(set(word_hashes("the cat the dog").tolist())) == 3
    # a long document is hashed in 1 MiB pieces without cutting a word
    long = " ".join(f"w{i % 5000}" for i in range(300_000))
    np.testing.assert_array_equal(word_hashes(long)[:5000], word_hashes(long[: len(long) // 10])[:5000])
    assert word_hashes(long).size == 300_000


def test_ngram_hashes_equal_for_equal_ngrams() -> None:
    w = word_hashes("a b c a b c d")
    g = ngram_hashes(w, 3)
    assert g.size == 5 and g[0] == g[3] and len(set(g.tolist())) == 4
    assert ngram_hashes(w[:2], 3).size == 0 and ngram_hashes(w[:2], 3, short=True).size == 1


def test_hash_index_equals_a_dict_with_first_insert_winning() -> None:
    rng = np.random.default_rng(0)
    index, ref = HashIndex(16), {}
    for _ in range(200):
        keys = mix64(rng.integers(1, 500, size=int(rng.integers(1, 40))).astype(np.uint64))  # many repeats
        values = rng.integers(0, 1000, size=keys.size)
        index.insert(keys, values)
        for k, v in zip(keys.tolist(), values.tolist()):
            ref.setdefault(k, v)
    queries = mix64(np.arange(1, 600, dtype=np.uint64))
    np.testing.assert_array_equal(index.lookup(queries), [ref.get(k, -1) for k in queries.tolist()])
    assert len(index) == len(ref) and index.keys.size >= 2 * len(ref)


def test_minhash_estimates_jaccard() -> None:
    rng = np.random.default_rng(1)
    hasher = MinHasher(num_perm=128, bands=16, shingle_size=5)
    errors = []
    for _ in range(40):
        words = rng.integers(1, 2**63, size=300, dtype=np.uint64)
        other = words.copy()
        other[rng.choice(300, size=int(rng.integers(1, 30)), replace=False)] = rng.integers(1, 2**63, dtype=np.uint64)
        x, y = set(ngram_hashes(words, 5).tolist()), set(ngram_hashes(other, 5).tolist())
        jaccard = len(x & y) / len(x | y)
        estimate = np.mean(hasher.signature(words) == hasher.signature(other))
        errors.append(estimate - jaccard)
    assert abs(np.mean(errors)) < 0.02 and np.std(errors) < 0.06  # unbiased, sd about sqrt(s(1-s)/128)
    assert candidate_probability(0.8, 16, 8) == pytest.approx(1 - (1 - 0.8**8) ** 16)


def test_exact_key_is_stable() -> None:
    assert exact_key("hello") == exact_key("hello") != exact_key("hello!")
    assert exact_key("hello") == int.from_bytes(__import__("hashlib").blake2b(b"hello", digest_size=8).digest(),
                                                "little")


def test_decontamination_finds_13_grams_only() -> None:
    source = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    table = EvalNgrams(np.unique(ngram_hashes(word_hashes(source), 13)), 13)
    assert table.contains_any(word_hashes("Before. One, two three four five six seven eight nine ten eleven "
                                          "twelve thirteen! After."))
    assert not table.contains_any(word_hashes("one two three four five six seven eight nine ten eleven twelve"))
    assert not EvalNgrams(np.zeros(0, np.uint64), 13).contains_any(word_hashes(source))


def test_shard_header_round_trip_and_corruption(tmp_path: Path) -> None:
    path = tmp_path / "train_000000.bin"
    tokens = np.array([1, 2, 70_000], dtype=np.uint32)
    path.write_bytes(shards.pack_header(3, 100_000, np.dtype(np.uint32)) + tokens.tobytes())
    header = shards.read_header(path)
    assert header == {"version": 1, "dtype": np.dtype(np.uint32), "n_tokens": 3, "vocab_size": 100_000}
    np.testing.assert_array_equal(shards.open_shard(path), tokens)
    assert shards.dtype_for_vocab(65_536) == np.uint16 and shards.dtype_for_vocab(65_537) == np.uint32
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ScratchlmError, match="truncated or corrupt"):
        shards.open_shard(path)
    path.write_bytes(b"not a shard at all, no magic here")
    with pytest.raises(ScratchlmError, match="not a scratchlm token shard"):
        shards.read_header(path)
