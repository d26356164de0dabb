"""Sliding windows, word perplexity and bits per byte against hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.errors import ScratchlmError
from scratchlm.eval.perplexity import Window, perplexity_of_text, sliding_windows, window_batch

LN2 = math.log(2)


def test_windows_follow_the_hf_guide() -> None:
    assert sliding_windows(10, 4, 4) == [Window(0, 4, 0), Window(4, 8, 4), Window(8, 10, 8)]
    assert sliding_windows(10, 4, 2) == [Window(0, 4, 0), Window(2, 6, 4), Window(4, 8, 6), Window(6, 10, 8)]
    assert sliding_windows(3, 8, 4) == [Window(0, 3, 0)]


@pytest.mark.parametrize("n,context,stride", [(1, 4, 2), (17, 5, 2), (40, 8, 3), (9, 9, 9), (50, 7, 1)])
def test_each_token_scored_once_with_left_context(n: int, context: int, stride: int) -> None:
    ids = list(range(100, 100 + n))
    windows = sliding_windows(n, context, stride)
    scored: list[int] = []
    for w in windows:
        inputs, targets = window_batch(ids, [w])
        for t in range(inputs.shape[1]):
            if targets[0, t] != -100:
                assert targets[0, t] == ids[w.begin + t + 1]  # position t predicts the next token
                scored.append(w.begin + t + 1)
        assert len([s for s in scored if w.begin < s <= w.end]) >= w.n_targets
    assert len(scored) == len(set(scored)) == sum(w.n_targets for w in windows)
    if stride < context:
        assert sorted(scored) == list(range(1, n))  # every token but the first, once


def test_hand_computed_stride_half(bigram, abc_tokenizer) -> None:
    # "ab ab": targets b|a, ' '|b, a|' ', b|a, each with probability 1/2 -> nll = 4 ln 2
    r = perplexity_of_text(bigram, abc_tokenizer, "ab ab", context=2, stride=1)
    assert r.tokens == 4 and r.words == 2 and r.bytes == 5
    assert r.nll == pytest.approx(4 * LN2, rel=1e-6)
    assert r.token_perplexity == pytest.approx(2.0, rel=1e-6)
    assert r.word_perplexity == pytest.approx(4.0, rel=1e-6)  # exp(4 ln 2 / 2 words)
    assert r.bits_per_byte == pytest.approx(0.8, rel=1e-6)  # 4 bits / 5 bytes


def test_hand_computed_stride_equals_context(bigram, abc_tokenizer) -> None:
    # windows [0,2) [2,4) [4,5): targets b|a and a|' ' only (a window's first token has no left context)
    r = perplexity_of_text(bigram, abc_tokenizer, "ab ab", context=2, stride=2, batch_size=2)
    assert (r.tokens, r.windows) == (2, 3)
    assert r.nll == pytest.approx(2 * LN2, rel=1e-6)
    assert r.word_perplexity == pytest.approx(2.0, rel=1e-6)
    assert r.bits_per_byte == pytest.approx(0.4, rel=1e-6)


def test_non_ascii_bytes_and_words(make_tokenizer, make_bigram) -> None:
    tok = make_tokenizer("é ")
    model = make_bigram([[0.5, 0.5], [0.25, 0.75]])
    # "éé é": targets é|é (1/2), ' '|é (1/2), é|' ' (1/4): nll = 4 ln 2; 2 words; 7 UTF-8 bytes
    r = perplexity_of_text(model, tok, "éé é", context=4, stride=2)
    assert r.nll == pytest.approx(4 * LN2, rel=1e-6)
    assert r.word_perplexity == pytest.approx(4.0, rel=1e-6)
    assert r.bits_per_byte == pytest.approx(4 / 7, rel=1e-6)


def test_batch_size_does_not_change_the_result(bigram, abc_tokenizer) -> None:
    text = "ab ba aab b a bb ab " * 3
    runs = [perplexity_of_text(bigram, abc_tokenizer, text, 8, 3, batch_size=b).nll for b in (1, 2, 5)]
    assert runs[0] == pytest.approx(runs[1], rel=1e-6) and runs[0] == pytest.approx(runs[2], rel=1e-6)


def test_context_longer_than_the_model(bigram, abc_tokenizer) -> None:
    bigram.config = type("Cfg", (), {"context_length": 4})()
    with pytest.raises(ScratchlmError, match="longer than the model's context length 4"):
        perplexity_of_text(bigram, abc_tokenizer, "ab ab ab", context=8, stride=4)
    with pytest.raises(ScratchlmError, match="stride"):
        perplexity_of_text(bigram, abc_tokenizer, "ab ab ab", context=4, stride=5)


def test_summed_nll_upcasts_bf16() -> None:
    from scratchlm.eval.perplexity import summed_nll

    logits = torch.randn(2, 3, 5).bfloat16()
    targets = torch.tensor([[1, -100, 2], [0, 4, -100]])
    ref = torch.nn.functional.cross_entropy(
        logits.float().view(-1, 5), targets.view(-1), ignore_index=-100, reduction="sum"
    )
    keep = targets != -100
    assert summed_nll(logits[keep], targets[keep]).dtype == torch.float32
    torch.testing.assert_close(summed_nll(logits[keep], targets[keep]), ref)
