"""GPT-2's tokenizer: ids equal tiktoken's (built offline from the same two files) on every mirror file and on
random text; decode inverts encode; special-token rules equal tiktoken's."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scratchlm.errors import ScratchlmError
from scratchlm.tokenizer import BPETokenizer, load, read_gpt2

EOT = "<|endoftext|>"
MIRROR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"  # as tests/conftest.py; read only

# Pieces that stress the pre-split and the byte map, mixed with arbitrary Unicode.
FRAGMENTS = [
    "👍",
    "👍🏽",
    "👨‍👩‍👧‍👦",
    "🇫🇷",
    "你好，世界",
    "日本語のテキスト",
    "한국어",
    "e\u0301",
    "n\u0303\u0308",
    "Ω≈ç√",
    " ",
    "  ",
    "     ",
    "\n",
    "\n\n",
    "\r\n",
    "\t",
    " \n ",
    "\u00a0",
    "\u3000",
    "'s",
    "'t",
    "'re",
    "'ve",
    "'m",
    "'ll",
    "'d",
    "'S",
    "I'm",
    "don't",
    "0",
    "42",
    "3.14159",
    "1,000,000",
    "٣٤",
    "Hello",
    " world",
    "...",
    "?!",
    "--",
    "<|",
    "|>",
    "endoftext",
    "Ġ",
    "\x00",
    "\x7f",
    "\ufeff",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]
texts = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=12)), max_size=25).map("".join)


def _mirror_files() -> list[Path]:
    """Every file of the data mirror, read as text (JSON and TSV included; the GPT-2 files too)."""
    import os

    root = Path(os.environ.get("SCRATCHLM_MIRROR") or MIRROR).resolve()
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("path", _mirror_files(), ids=lambda p: p.name)
def test_ids_equal_tiktoken_on_mirror_files(path: Path, gpt2: BPETokenizer, tiktoken_gpt2) -> None:
    text = path.read_text(encoding="utf-8")
    ids = gpt2.encode_ordinary(text)
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.decode(ids) == text


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts)
def test_ids_equal_tiktoken_on_random_text(gpt2: BPETokenizer, tiktoken_gpt2, text: str) -> None:
    gpt2.clear_cache()  # encode from a cold cache too, so the BPE loop runs on every example
    ids = gpt2.encode_ordinary(text)
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.encode_ordinary(text) == ids  # and from the warm cache


@settings(max_examples=300, deadline=None, database=None)
@given(st.text())
def test_decode_inverts_encode_for_any_string(gpt2: BPETokenizer, text: str) -> None:
    assert gpt2.decode(gpt2.encode(text, allowed_special="none")) == text
    assert gpt2.decode_bytes(gpt2.encode_ordinary(text)) == text.encode("utf-8")


def test_lone_surrogates_become_replacement_characters_as_in_tiktoken(
    gpt2: BPETokenizer, tiktoken_gpt2
) -> None:
    for text in ["a\ud800b", "\udfff", "x\ud83d\ude00y"]:
        assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)


def test_known_ids(gpt2: BPETokenizer) -> None:
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.eot_id == 50256 and gpt2.vocab_size == 50257
    assert gpt2.token_bytes(995) == b" world"
    assert gpt2.decode([15496, 995, 50256]) == "Hello world<|endoftext|>"


def test_load_gpt2_by_name_uses_the_named_assets(gpt2: BPETokenizer, mirror: Path) -> None:
    tok = load("gpt2")
    assert tok.identity() == gpt2.identity()
    # the name is informational: the same files under another name (HF's vocab.json/merges.txt) are the same ids
    unnamed = read_gpt2(mirror / "gpt2" / "encoder.json", mirror / "gpt2" / "vocab.bpe")
    assert unnamed.name is None and unnamed.identity() == tok.identity()
    tok.add_special_tokens(["<|im_start|>"])  # each load is a fresh object: this must not leak
    assert "<|im_start|>" not in load("gpt2").special_tokens


# ---- special tokens: tiktoken's rules -----------------------------------------------------------------------
SPECIAL_TEXTS = [f"a{EOT}b", f"{EOT}", f"x {EOT} y{EOT}{EOT}", "no specials here", f"<|endof{EOT}text|>"]
RULES = [
    {"allowed_special": "all"},
    {"allowed_special": {EOT}},
    {"allowed_special": set(), "disallowed_special": ()},
    {"allowed_special": "all", "disallowed_special": ()},
    {},
    {"allowed_special": set()},
]


@pytest.mark.parametrize("text", SPECIAL_TEXTS)
@pytest.mark.parametrize("rule", RULES, ids=str)
def test_special_token_rules_equal_tiktoken(gpt2: BPETokenizer, tiktoken_gpt2, text: str, rule: dict) -> None:
    try:
        expected = tiktoken_gpt2.encode(text, **rule)
    except ValueError:
        with pytest.raises(ScratchlmError, match="special token '<\\|endoftext\\|>'"):
            gpt2.encode(text, **rule)
        with pytest.raises(ValueError):  # also a ValueError, like tiktoken's
            gpt2.encode(text, **rule)
    else:
        assert gpt2.encode(text, **rule) == expected


def test_none_raise_and_none(gpt2: BPETokenizer) -> None:
    with pytest.raises(ScratchlmError, match="allowed_special"):
        gpt2.encode(f"a{EOT}", allowed_special="none_raise")
    assert gpt2.encode(f"a{EOT}", allowed_special="none") == gpt2.encode_ordinary(f"a{EOT}")
    assert 50256 not in gpt2.encode(f"a{EOT}", allowed_special="none")


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.one_of(st.sampled_from([EOT, EOT + " ", " " + EOT]), texts), max_size=6).map("".join))
def test_allowed_specials_on_random_text_equal_tiktoken(gpt2: BPETokenizer, tiktoken_gpt2, text: str) -> None:
    assert gpt2.encode(text, allowed_special="all") == tiktoken_gpt2.encode(text, allowed_special="all")


# ---- the O(n log n) path for long chunks gives the same ids ------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2_heap_path(gpt2: BPETokenizer) -> BPETokenizer:
    """GPT-2 with every chunk of 2+ bytes sent through the heap path that long chunks take."""
    tok = BPETokenizer(gpt2.vocab, gpt2.special_tokens, gpt2.pattern)
    tok.LONG_CHUNK = 1
    return tok


@settings(max_examples=200, deadline=None, database=None)
@given(texts)
def test_heap_path_equals_tiktoken(gpt2_heap_path: BPETokenizer, tiktoken_gpt2, text: str) -> None:
    gpt2_heap_path.clear_cache()
    assert gpt2_heap_path.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)


def test_long_chunks_equal_tiktoken(gpt2: BPETokenizer, gpt2_heap_path: BPETokenizer, tiktoken_gpt2) -> None:
    text = (MIRROR / "wikitext-2-test.tokens").read_text(encoding="utf-8")[:100_000]
    assert gpt2_heap_path.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)
    for long in [
        "!" * 20_000,
        "a" * 20_000,
        "x" + " " * 20_000 + "y",
        "=-" * 10_000,
        "é" * 5_000,
        "😀" * 3_000,
    ]:
        assert gpt2.encode_ordinary(long) == tiktoken_gpt2.encode_ordinary(long)
