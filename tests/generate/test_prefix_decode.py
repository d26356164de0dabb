"""Decoding with a prefix (prefix or prompt tuning) through the one engine: KV-cache decoding equals the full
forward with the prefix, batched equals alone, continuous batching into stale slots equals alone; and the
prefix really changes the outputs (so the comparisons are not vacuous)."""

from __future__ import annotations

import pytest
import torch

from scratchlm.generate import Engine, GenSequence, SampleConfig, generate_ids
from scratchlm.model.prefix import PrefixConfig, attach_prefix, fold_prefix

PROMPTS = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11, 12, 13], [4], [40, 41, 42, 43, 44], [7] * 20, [3, 1]]
BUDGETS = [3, 10, 6, 1, 8, 5]


@torch.no_grad()
def _greedy_full_forward(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


def _with_prefix(tiny_gpt, family: str, kind: str, attn_impl: str = "sdpa", fold: bool = False):  # noqa: ANN001, ANN202
    model = tiny_gpt(family)
    for block in model.blocks:  # the other kernel, chosen as __init__ would
        block.attn.attend = block.attn._attend_manual if attn_impl == "manual" else block.attn._attend_sdpa
    torch.manual_seed(1)
    prefix = attach_prefix(model, "prompt" if kind == "prompt" else "prefix", PrefixConfig(4))
    with torch.no_grad():
        for p in prefix.parameters():
            p.normal_(0.0, 1.0)  # far from the init, so the prefix matters
    return fold_prefix(model) if fold else model


CASES = [("gpt2", "prefix", "sdpa"), ("llama", "prefix", "manual"), ("llama", "prompt", "sdpa"),
         ("gpt2", "prompt", "manual")]


@pytest.mark.parametrize(("family", "kind", "attn_impl"), CASES)
def test_cached_batched_and_continuous_decoding_equal_the_full_forward(tiny_gpt, family: str, kind: str,
                                                                      attn_impl: str) -> None:
    model = _with_prefix(tiny_gpt, family, kind, attn_impl)
    want = [_greedy_full_forward(model, p, b) for p, b in zip(PROMPTS, BUDGETS)]
    # one static batch (right-padded prompts, one cache)
    batched = generate_ids(model, PROMPTS, SampleConfig(temperature=0.0, max_new_tokens=max(BUDGETS)))
    assert [s.output[:b] for [s], b in zip(batched, BUDGETS)] == want
    # each alone
    for prompt, budget, expected in zip(PROMPTS, BUDGETS, want):
        [[alone]] = generate_ids(model, [prompt], SampleConfig(temperature=0.0, max_new_tokens=budget))
        assert alone.output == expected
    # continuous batching: 2 slots, sequences join into rows others have left
    engine = Engine(model, slots=2)
    seqs = [engine.add(GenSequence(p, SampleConfig(temperature=0.0, max_new_tokens=b)))
            for p, b in zip(PROMPTS, BUDGETS)]
    while engine.has_work():
        engine.step()
    assert [s.output for s in seqs] == want
    # the prefix does change what is generated
    plain = tiny_gpt(family)
    assert [_greedy_full_forward(plain, p, b) for p, b in zip(PROMPTS, BUDGETS)] != want


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_folded_soft_prompt_decodes_like_the_soft_prompt(tiny_gpt, family: str) -> None:
    """What every command runs (the loader folds a soft prompt into keys/values) equals the trained form."""
    soft = _with_prefix(tiny_gpt, family, "prompt")
    folded = _with_prefix(tiny_gpt, family, "prompt", fold=True)
    config = SampleConfig(temperature=0.0, max_new_tokens=8)
    assert [s.output for [s] in generate_ids(folded, PROMPTS, config)] == \
        [s.output for [s] in generate_ids(soft, PROMPTS, config)]
