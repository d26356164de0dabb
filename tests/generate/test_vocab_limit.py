"""A model with more embedding rows than its tokenizer has tokens (GPT-2's padded 50,304; a char model trained on
a prefix of its text) never samples an id the tokenizer cannot decode: `complete`, the periodic training sample
and the server limit sampling to the tokenizer's ids."""

from __future__ import annotations

import torch

from scratchlm.generate import SampleConfig, complete
from scratchlm.generate.engine import Engine, make_sequences
from scratchlm.tokenizer import CharTokenizer


def test_sampling_stays_inside_the_tokenizers_ids(tiny_gpt) -> None:  # noqa: ANN001
    model = tiny_gpt("gpt2", vocab_size=97)
    tok = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz .,"))  # 29 ids; the model has 97 rows
    with torch.no_grad():  # make the extra rows the likeliest: unlimited sampling would pick them
        model.lm_head.weight[tok.vocab_size :] *= 50
    ids = tok.encode("to be or not")
    [out] = make_sequences([ids], SampleConfig(temperature=0.0, max_new_tokens=20))
    for _ in Engine(model, slots=1, max_len=64).run(out):
        pass
    assert any(t >= tok.vocab_size for t in out[0].output)  # the trap works without the limit

    for cfg in (
        SampleConfig(temperature=0.0, max_new_tokens=20),
        SampleConfig(temperature=1.5, seed=1, max_new_tokens=40),
    ):
        [[c]] = complete(model, tok, ["to be or not"], cfg)
        assert len(c.text) == cfg.max_new_tokens  # every id decoded to one character: none was out of range
    [greedy] = make_sequences([ids], SampleConfig(temperature=0.0, max_new_tokens=5))
    for _ in Engine(model, slots=1, max_len=64, vocab_limit=tok.vocab_size).run(greedy):
        pass
    with torch.no_grad():
        first = model(torch.tensor([ids]))[0, -1, : tok.vocab_size].argmax()
    assert greedy[0].output[0] == int(first)
