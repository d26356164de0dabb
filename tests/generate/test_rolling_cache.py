"""The engine decodes local (sliding-window) layers from rolling caches: the tokens equal greedy decoding by full
recomputation (no cache) with continuous batching, past the window to a context 4x the window; the cache holds the
window, not the context; compiled decoding gives the eager tokens."""

from __future__ import annotations

import pytest
import torch

from scratchlm.generate import SampleConfig
from scratchlm.generate.engine import Engine, cache_bytes, make_sequences, max_len_for_budget
from scratchlm.model import GPT

W = 16
CONTEXT = 4 * W
PROMPTS = [[1, 2, 3], list(range(5, 25)), [42], [7, 8] * 12, [9, 8]]  # shorter and longer than the window


def _model(tiny_gpt, pattern: tuple[str, ...] = ("local",)) -> GPT:  # noqa: ANN001
    """The tiny Llama of conftest.py (2 layers, GQA) with local layers of window W, context 4 W."""
    return tiny_gpt("llama", context_length=CONTEXT, attn_pattern=pattern, attn_window=W)


def _greedy_by_recomputation(model: GPT, prompt: list[int], out: list[int]) -> list[int]:
    """What greedy decoding by full recomputation picks after each prefix of prompt + out: one forward with no
    cache scores every prefix at once (causal), so `out` is that greedy decoding iff the two lists agree."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + out]))[0, len(prompt) - 1 : -1]  # (len(out), V)
    return logits.argmax(-1).tolist()


def _engine_run(model: GPT, compile: bool | str = False) -> tuple[list[list[int]], Engine]:
    # 2 slots for 5 sequences: later ones take freed slots mid-run (continuous batching)
    engine = Engine(model, slots=2, max_len=CONTEXT, compile=compile)
    config = SampleConfig(temperature=0.0, max_new_tokens=CONTEXT)  # each runs to the end of the context
    flat = [s for g in make_sequences(PROMPTS, config) for s in g]
    for _ in engine.run(flat):
        pass
    return [s.output for s in flat], engine


@pytest.mark.parametrize("pattern", [("local",), ("local", "dense")])
def test_engine_with_rolling_cache_equals_recomputation_past_the_window(
    tiny_gpt, pattern: tuple[str, ...]  # noqa: ANN001
) -> None:
    model = _model(tiny_gpt, pattern)
    outputs, engine = _engine_run(model)
    assert [len(p) + len(o) for p, o in zip(PROMPTS, outputs)] == [CONTEXT] * len(PROMPTS)  # to 4x the window
    assert len({t for o in outputs for t in o}) > 20  # varied tokens, not one repeated id
    for prompt, out in zip(PROMPTS, outputs):
        assert out == _greedy_by_recomputation(model, prompt, out)
    local = [i for i, kind in enumerate(model.config.layer_patterns) if kind == "local"]
    assert {engine.cache.k[i].shape[2] for i in local} == {W}


def test_decode_memory_at_4x_the_window_stays_at_the_windows(tiny_gpt) -> None:  # noqa: ANN001
    model = _model(tiny_gpt)
    per_slot_token = 2 * model.config.n_layer * model.config.kv_dim * 4  # keys + values, fp32
    at_window = Engine(model, slots=2, max_len=W).cache.nbytes
    _, engine = _engine_run(model)  # max_len = 4 W, every sequence decoded to the end
    assert engine.cache.nbytes == at_window == 2 * W * per_slot_token
    dense = GPT(model.config.replace(attn_pattern=("dense",), attn_window=None)).eval()
    assert Engine(dense, slots=2, max_len=CONTEXT).cache.nbytes == 4 * at_window  # what it would be without rings
    # the decode step never allocates a longer cache: the engine's tensors are the rings it started with
    assert all(t.shape[2] == W for t in engine.cache.k + engine.cache.v)
    # the server's budget (`serve --kv-budget-mb`) knows it: the window's bytes buy the whole context
    assert cache_bytes(model, 2, CONTEXT) == at_window
    assert max_len_for_budget(model, 2, at_window) == CONTEXT
    assert max_len_for_budget(dense, 2, at_window) == W


@pytest.mark.gpu
@pytest.mark.parametrize("mode", [True, "reduce-overhead"])  # CUDA graphs: the rings are written inside the graph
def test_compiled_rolling_decode_on_cuda_equals_eager(tiny_gpt, mode: bool | str) -> None:  # noqa: ANN001
    model = _model(tiny_gpt, ("local", "dense")).to("cuda")
    torch._dynamo.reset()
    eager, _ = _engine_run(model)
    assert _engine_run(model, compile=mode)[0] == eager


@pytest.mark.slow
def test_compiled_decode_with_rolling_cache_equals_eager(tiny_gpt) -> None:  # noqa: ANN001
    model = _model(tiny_gpt, ("local", "dense"))
    torch._dynamo.reset()
    eager, _ = _engine_run(model)
    compiled, _ = _engine_run(model, compile=True)
    assert compiled == eager


def test_pretrain_and_generate_a_sliding_window_model_from_the_cli(tmp_path, capsys) -> None:  # noqa: ANN001
    """What the user types: a local/dense model trained by `scratchlm pretrain`, continued by `scratchlm generate`
    past its window; the text equals greedy decoding by full recomputation."""
    from scratchlm import checkpoint
    from scratchlm.cli.main import main

    run = tmp_path / "run"
    assert main(["pretrain", "--preset", "shakespeare-char", "--model.n-layer", "2", "--model.n-head", "2",
                 "--model.d-model", "32", "--model.d-ff", "64", "--model.context-length", "48",
                 "--model.attn-pattern", "local,dense", "--model.attn-window", "8", "--micro-batch-size", "4",
                 "--max-steps", "3", "--warmup-steps", "1", "--no-progress", "--sample-at-end", "0",
                 "--eval-batches", "1", "--out", str(run)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(run), "--prompt", "ROMEO:", "--temperature", "0",
                 "--max-new-tokens", "40"]) == 0  # fmt: skip
    text = capsys.readouterr().out.rstrip("\n")
    model, tok = checkpoint.load(run)
    assert (model.config.attn_pattern, model.config.attn_window) == (("local", "dense"), 8)
    prompt = tok.encode("ROMEO:")
    out = tok.encode(text)
    assert len(out) == 40 and out == _greedy_by_recomputation(model.eval(), prompt, out)
