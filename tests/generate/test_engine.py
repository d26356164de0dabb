"""The engine against references: full recomputation without a cache, each prompt decoded alone, known outputs."""

from __future__ import annotations

import pytest
import torch

from scratchlm.errors import ScratchlmError
from scratchlm.generate import (
    Engine,
    GenSequence,
    SampleConfig,
    complete,
    generate,
    generate_ids,
    stream_completion,
)

GREEDY = SampleConfig(temperature=0.0, max_new_tokens=12)
PROMPTS = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11, 12, 13], [4], [40, 41, 42, 43, 44]]


@torch.no_grad()
def _greedy_without_cache(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_batched_prompts_of_different_lengths_match_each_prompt_alone(tiny_gpt, family: str) -> None:
    model = tiny_gpt(family)
    batched = generate_ids(model, PROMPTS, GREEDY)
    for prompt, [seq] in zip(PROMPTS, batched):
        [[alone]] = generate_ids(model, [prompt], GREEDY)
        reference = _greedy_without_cache(model, prompt, GREEDY.max_new_tokens)
        assert seq.output == alone.output == reference
        assert seq.finish_reason == "length"
    assert len({tuple(s.output) for [s] in batched}) == len(PROMPTS)  # the outputs do differ per prompt


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_continuous_batching_reuses_slots_and_matches_alone(tiny_gpt, family: str) -> None:
    """2 slots, 6 sequences of different lengths: later ones join as earlier ones finish, into stale slots."""
    model = tiny_gpt(family)
    prompts = PROMPTS + [[7] * 20, [3, 1]]
    budgets = [3, 10, 6, 1, 8, 5]
    engine = Engine(model, slots=2)
    seqs = [
        engine.add(GenSequence(p, SampleConfig(temperature=0.0, max_new_tokens=b)))
        for p, b in zip(prompts, budgets)
    ]
    steps = 0
    while engine.has_work():
        engine.step()
        steps += 1
        assert len(engine.running) <= 2
    for seq, prompt, budget in zip(seqs, prompts, budgets):
        assert seq.output == _greedy_without_cache(model, prompt, budget)
    assert steps < sum(budgets)  # sequences really overlapped


def test_stop_token_ends_the_sequence_and_is_not_output(next_id_model) -> None:
    [[seq]] = generate_ids(next_id_model, [[5]], SampleConfig(temperature=0, max_new_tokens=20), stop_ids=[9])
    assert seq.output == [6, 7, 8] and seq.finish_reason == "stop"


def test_max_new_tokens_and_full_context(next_id_model) -> None:
    [[seq]] = generate_ids(next_id_model, [[1]], SampleConfig(temperature=0, max_new_tokens=4))
    assert seq.output == [2, 3, 4, 5] and seq.finish_reason == "length"
    # context 32: a 30-token prompt leaves room for 2 more tokens
    [[seq]] = generate_ids(next_id_model, [[0] * 30], SampleConfig(temperature=0, max_new_tokens=10))
    assert seq.output == [1, 2] and seq.finish_reason == "length"


def test_bad_prompts_are_user_errors(next_id_model) -> None:
    engine = Engine(next_id_model, slots=1)
    with pytest.raises(ScratchlmError, match="prompt is 33 tokens but the model's context is 32"):
        engine.add(GenSequence([0] * 33, GREEDY))
    with pytest.raises(ScratchlmError, match="empty"):
        engine.add(GenSequence([], GREEDY))


def test_same_seed_same_tokens_whatever_the_batch(tiny_gpt) -> None:
    model = tiny_gpt("gpt2")
    cfg = SampleConfig(temperature=1.0, top_k=20, max_new_tokens=15, seed=123)
    [[alone]] = generate_ids(model, [PROMPTS[0]], cfg)
    batched = generate_ids(model, PROMPTS, cfg)
    assert batched[0][0].output == alone.output
    other = generate_ids(
        model, [PROMPTS[0]], SampleConfig(temperature=1.0, top_k=20, max_new_tokens=15, seed=124)
    )
    assert other[0][0].output != alone.output


def test_n_samples_use_seed_plus_i(tiny_gpt) -> None:
    model = tiny_gpt("gpt2")
    cfg = SampleConfig(temperature=1.0, max_new_tokens=8, seed=5, n=3)
    [group] = generate_ids(model, [PROMPTS[1]], cfg)
    assert len(group) == 3
    for i, seq in enumerate(group):
        [[one]] = generate_ids(
            model, [PROMPTS[1]], SampleConfig(temperature=1.0, max_new_tokens=8, seed=5 + i)
        )
        assert seq.output == one.output


@torch.no_grad()
def test_logprobs_equal_the_full_forward(tiny_gpt) -> None:
    model = tiny_gpt("llama")
    [[seq]] = generate_ids(model, [PROMPTS[0]], SampleConfig(temperature=0, max_new_tokens=5, logprobs=3))
    ids = torch.tensor([PROMPTS[0] + seq.output])
    logp = model(ids)[0].log_softmax(-1)  # (T, V)
    for j, lp in enumerate(seq.logprobs):
        row = logp[len(PROMPTS[0]) - 1 + j]
        assert lp.logprob == pytest.approx(row[seq.output[j]].item(), abs=1e-4)
        assert [t for t, _ in lp.top] == row.topk(3).indices.tolist()
        assert lp.top[0][0] == seq.output[j]  # greedy picks the best


def test_presence_penalty_stops_repeats(tiny_gpt) -> None:
    model = tiny_gpt("gpt2", seed=3)
    [[plain]] = generate_ids(model, [[1, 2]], SampleConfig(temperature=0, max_new_tokens=30))
    assert len(set(plain.output)) < 30  # a tiny random model repeats itself...
    cfg = SampleConfig(temperature=0, max_new_tokens=30, presence_penalty=1e4)
    [[pen]] = generate_ids(model, [[1, 2]], cfg)
    assert len(set(pen.output)) == 30  # ...unless every used token is pushed down


def test_text_layer_generate_and_stop_strings(tiny_gpt, gpt2_tokenizer) -> None:
    tok = gpt2_tokenizer
    model = tiny_gpt("gpt2", vocab_size=tok.vocab_size)
    text = generate(model, tok, "Hello there", max_new_tokens=20, temperature=0)
    [[seq]] = generate_ids(model, [tok.encode("Hello there")], SampleConfig(temperature=0, max_new_tokens=20))
    assert text == tok.decode(seq.output)
    # a stop string taken from the middle of the greedy text cuts it exactly there
    stop = text[7:10]
    [[c]] = complete(model, tok, ["Hello there"], SampleConfig(temperature=0, max_new_tokens=20, stop=[stop]))
    assert c.text == text[: text.find(stop)] and c.finish_reason == "stop"
    # streaming pieces join to the same text
    pieces = list(
        stream_completion(model, tok, "Hello there", SampleConfig(temperature=0, max_new_tokens=20))
    )
    assert "".join(p for p, _ in pieces) == text and pieces[-1][1].text == text
    # the training loop's entry is seeded
    a = generate(model, tok, "Hi", max_new_tokens=10, temperature=1.0, top_k=50, seed=1)
    assert a == generate(model, tok, "Hi", max_new_tokens=10, temperature=1.0, top_k=50, seed=1)
    assert model.training is False


def test_kv_budget_bounds_a_llama_3_2_1b_cache() -> None:
    """Llama-3.2-1B's shape (built on the meta device, no memory): 8 slots of its 131072-token context would
    need 64 GiB in fp32; a 2 GiB budget gives rows of 4096 tokens (16 layers x 8 KV heads x 64 dims x K, V)."""
    from scratchlm.generate.engine import kv_bytes_per_token, max_len_for_budget
    from scratchlm.model import GPT, ModelConfig

    cfg = ModelConfig(
        vocab_size=128256,
        context_length=131072,
        n_layer=16,
        n_head=32,
        n_kv_head=8,
        d_model=2048,
        d_ff=8192,
        norm="rmsnorm",
        mlp="swiglu",
        positions="rope",
        bias=False,
    )
    with torch.device("meta"):
        model = GPT(cfg)
    assert kv_bytes_per_token(model) == 2 * 16 * 8 * 64 * 4
    assert 8 * 131072 * kv_bytes_per_token(model) == 64 * 2**30
    assert max_len_for_budget(model, 8, 2048 * 2**20) == 4096
    assert max_len_for_budget(model.to(torch.bfloat16), 8, 2048 * 2**20) == 8192
    assert max_len_for_budget(model, 1, 2**40) == 131072  # never beyond the context


def test_engine_cache_is_sized_by_max_len(tiny_gpt) -> None:  # noqa: ANN001
    model = tiny_gpt(context_length=64)
    engine = Engine(model, slots=3, max_len=16)
    assert len(engine.cache.k) == 2 and engine.cache.k[0].shape == (3, 2, 16, 16)  # per layer: (B, H_kv, L, D)
    [seq] = [engine.add(GenSequence([1, 2, 3], SampleConfig(temperature=0.0, max_new_tokens=100)))]
    while engine.has_work():
        engine.step()
    assert seq.finish_reason == "length" and len(seq.prompt) + len(seq.output) == 16
