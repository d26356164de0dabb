"""Save/load round trip, corrupt files, the char tokenizer, special tokens added later, export to tiktoken."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.errors import ScratchlmError
from scratchlm.tokenizer import GPT4_PATTERN, BPETokenizer, CharTokenizer, from_dict, load
from scratchlm.tokenizer.train import TokenizerTrainConfig, train

MIRROR = Path(
    os.environ.get("SCRATCHLM_MIRROR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
)
SHAKESPEARE = (MIRROR / "tinyshakespeare.txt").read_text(encoding="utf-8")
VERDICT = (MIRROR / "the-verdict.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def trained() -> dict[str, BPETokenizer]:
    """Small BPE tokenizers trained on the-verdict with both patterns."""
    return {
        p: train(
            TokenizerTrainConfig(vocab_size=600, pattern=p, special=("<|endoftext|>", "<|pad|>")), [VERDICT]
        )
        for p in ("gpt2", "gpt4")
    }


def test_save_load_round_trip(tmp_path: Path, gpt2: BPETokenizer, trained: dict[str, BPETokenizer]) -> None:
    for tok in [gpt2, *trained.values(), CharTokenizer.train([VERDICT], ["<|endoftext|>"])]:
        path = tmp_path / "tok.json"
        tok.save(path)
        back = load(path)
        assert type(back) is type(tok) and back.to_dict() == tok.to_dict()
        assert back.identity() == tok.identity()
        assert back.encode(VERDICT[:3000]) == tok.encode(VERDICT[:3000])
        assert from_dict(json.loads(path.read_text(encoding="utf-8"))).identity() == tok.identity()
        path.rename(tmp_path / "tokenizer.json")
        assert load(tmp_path).identity() == tok.identity()  # a folder means its tokenizer.json
        (tmp_path / "tokenizer.json").unlink()
    assert sorted(os.listdir(tmp_path)) == []  # nothing else was written (no temp files left)


def test_identity_changes_with_the_tokenizer(gpt2: BPETokenizer, trained: dict[str, BPETokenizer]) -> None:
    ids = {gpt2.identity(), *(t.identity() for t in trained.values())}
    assert len(ids) == 3 and all(i.startswith("sha256:") for i in ids)
    tok = from_dict(gpt2.to_dict())
    tok.add_special_tokens(["<|im_start|>"])
    assert tok.identity() != gpt2.identity()


def test_add_special_tokens(gpt2: BPETokenizer) -> None:
    tok = from_dict(gpt2.to_dict())
    assert tok.add_special_tokens(["<|im_start|>", "<|im_end|>", "<|endoftext|>"]) == [50257, 50258, 50256]
    assert tok.add_special_tokens(["<|im_start|>"]) == [50257]  # idempotent
    assert tok.vocab_size == 50259
    ids = tok.encode("<|im_start|>hi<|im_end|>", allowed_special="all")
    assert ids == [50257, 5303, 50258] and tok.decode(ids) == "<|im_start|>hi<|im_end|>"
    assert tok.token_bytes(50258) == b"<|im_end|>"


def test_char_tokenizer_as_nanogpt_shakespeare_char(tmp_path: Path) -> None:
    tok = CharTokenizer.train([SHAKESPEARE])
    chars = sorted(set(SHAKESPEARE))  # nanoGPT's data/shakespeare_char/prepare.py
    assert tok.vocab_size == len(chars) == 65
    assert (
        tok.encode("hii there")
        == [chars.index(c) for c in "hii there"]
        == [46, 47, 47, 1, 58, 46, 43, 56, 43]
    )
    assert tok.decode(tok.encode(SHAKESPEARE[:5000])) == SHAKESPEARE[:5000]
    assert tok.eot_id is None
    with pytest.raises(ScratchlmError, match="character '€' is not in this char tokenizer's vocabulary"):
        tok.encode("a €")
    with_eot = CharTokenizer.train([SHAKESPEARE + "<|endoftext|>"], ["<|endoftext|>"])
    assert (
        with_eot.vocab_size == 66 and with_eot.eot_id == 65
    )  # the special's characters do not join the vocab
    assert with_eot.encode("a<|endoftext|>", allowed_special="all") == [39, 65]
    with pytest.raises(ScratchlmError, match="not allowed"):
        with_eot.encode("a<|endoftext|>")
    with pytest.raises(ScratchlmError, match="tiktoken is byte-level BPE only"):
        tok.to_tiktoken()


def test_decode_out_of_range_and_partial_utf8(gpt2: BPETokenizer) -> None:
    for bad in ([50257], [-1], [1, 2, 10**9]):
        with pytest.raises(ScratchlmError, match="out of range for this tokenizer"):
            gpt2.decode(bad)
    ids = gpt2.encode("🇫🇷")  # several tokens, each holding part of a character
    assert gpt2.decode(ids[:1]) == "\ufffd" * len(gpt2.decode(ids[:1]))
    assert b"".join(gpt2.token_bytes(i) for i in ids) == "🇫🇷".encode()


# ---- export to tiktoken ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_export_to_tiktoken_gives_identical_ids_on_files(
    trained: dict[str, BPETokenizer], pattern: str
) -> None:
    tok = trained[pattern]
    enc = tok.to_tiktoken()
    assert enc.n_vocab == tok.vocab_size
    for name in ["tinyshakespeare.txt", "wikitext-2-valid.tokens", "instruction-data.json"]:
        text = (MIRROR / name).read_text(encoding="utf-8")[:300_000]
        assert enc.encode_ordinary(text) == tok.encode_ordinary(text)
    text = "Hi<|endoftext|> there<|pad|>"
    assert enc.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")


def test_export_gpt2_to_tiktoken(gpt2: BPETokenizer, tiktoken_gpt2) -> None:
    enc = gpt2.to_tiktoken()
    text = (MIRROR / "wikitext-2-test.tokens").read_text(encoding="utf-8")[:200_000]
    assert enc.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)


@pytest.fixture(scope="module")
def exported(trained: dict[str, BPETokenizer]) -> list:
    return [(tok, tok.to_tiktoken()) for tok in trained.values()]


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=60))
def test_export_to_tiktoken_on_random_text(exported: list, text: str) -> None:
    for tok, enc in exported:
        assert enc.encode_ordinary(text) == tok.encode_ordinary(text)


def test_gpt4_pattern_splits_like_cl100k() -> None:
    import regex

    assert regex.findall(GPT4_PATTERN, "I'LL pay 1234567 dollars!!\n\n  ok") == [
        "I", "'LL", " pay", " ", "123", "456", "7", " dollars", "!!\n\n", " ", " ok"
    ]  # fmt: skip


# tiktoken's own cl100k_base pattern (tiktoken_ext/openai_public.py), a different spelling of GPT4_PATTERN
CL100K_TIKTOKEN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)


@pytest.fixture(scope="module")
def cl100k_like(trained: dict[str, BPETokenizer]):
    """Our gpt4-pattern vocabulary, run by tiktoken with tiktoken's own cl100k pattern."""
    tiktoken = pytest.importorskip("tiktoken")
    ranks = {t: i for i, t in enumerate(trained["gpt4"].vocab)}
    return tiktoken.Encoding(
        name="cl100k-pattern", pat_str=CL100K_TIKTOKEN, mergeable_ranks=ranks, special_tokens={}
    )


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(alphabet=st.sampled_from(list("aZ é1 2\n\r\t'sLl!.,你😀")) | st.characters(), max_size=80))
def test_gpt4_pattern_splits_as_tiktoken_cl100k(
    trained: dict[str, BPETokenizer], cl100k_like, text: str
) -> None:
    """Our GPT-4 pattern run by Python's regex gives the same ids as tiktoken's cl100k pattern run by Rust."""
    assert cl100k_like.encode_ordinary(text) == trained["gpt4"].encode_ordinary(text)
