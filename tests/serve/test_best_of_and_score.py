"""The server's `best_of` (completions) against the library's own sampling ranked by mean logprob, and
`/v1/score` against the reward model scored in process."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from openai import BadRequestError, OpenAI

from scratchlm.generate import SampleConfig, complete
from scratchlm.generate.select import mean_logprob
from scratchlm.serve.app import BackgroundServer, create_app

MODEL = "tiny"


def test_best_of_returns_the_n_likeliest_of_the_samples(client: OpenAI, loaded: tuple) -> None:
    model, tok = loaded
    r = client.completions.create(model=MODEL, prompt="A", max_tokens=8, temperature=1.0, seed=5, n=2, best_of=5)
    [drawn] = complete(model, tok, ["A"], SampleConfig(temperature=1.0, max_new_tokens=8, seed=5, n=5, logprobs=0))
    ranked = sorted(range(5), key=lambda i: mean_logprob(drawn[i]), reverse=True)
    assert [c.text for c in r.choices] == [drawn[i].text for i in sorted(ranked[:2])]
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage.completion_tokens == sum(len(c.ids) for c in drawn)  # every sample drawn is paid for
    for bad in ({"n": 3, "best_of": 2}, {"best_of": 3, "stream": True}):
        with pytest.raises(BadRequestError, match="best_of"):
            client.completions.create(model=MODEL, prompt="A", max_tokens=4, **bad)


def test_score_endpoint(loaded: tuple, server_url: str, tmp_path: Path) -> None:
    import torch

    from scratchlm import checkpoint
    from scratchlm.model import GPT, ModelConfig
    from scratchlm.model.classifier import RewardModel
    from scratchlm.rl.reward import RewardScorer

    model, tok = loaded
    torch.manual_seed(3)
    rm = RewardModel(GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=64, n_layer=1, n_head=2, d_model=16)))
    checkpoint.save_finetuned(tmp_path / "rm", rm, tok, {"reward": {"max_length": 64, "pad_id": tok.eot_id},
                                                         "chat_template": None})
    scorer = RewardScorer(tmp_path / "rm", "cpu")
    texts = ["a kind answer", "a cold answer"]
    with BackgroundServer(create_app(model, tok, model_name=MODEL, slots=2, reward=scorer)) as url:
        raw = httpx.post(url + "/v1/score", json={"texts": texts}).json()
        framed = httpx.post(url + "/v1/score", json={"texts": texts, "prompt": "Be nice."}).json()
    assert [d["score"] for d in raw["data"]] == pytest.approx(scorer.score(texts), abs=1e-6)
    want = scorer.score_completions([([{"role": "user", "content": "Be nice."}], t) for t in texts])
    assert [d["score"] for d in framed["data"]] == pytest.approx(want, abs=1e-6)
    assert want != pytest.approx(scorer.score(texts), abs=1e-6)  # the prompt is really part of what is scored
    gone = httpx.post(server_url + "/v1/score", json={"texts": texts})  # the shared server has no reward model
    assert gone.status_code == 404 and "--reward-model" in gone.json()["error"]["message"]
