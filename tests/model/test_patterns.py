"""Local and sparse attention (`attn_pattern`): each pattern equals dense attention under the same pattern written
as an explicit boolean mask (from loops over the definitions of Child et al. 2019); packed documents; the rolling
KV cache equals the full forward past the window; bad settings get one line each."""

from __future__ import annotations

import pytest
import torch

from scratchlm.errors import ConfigError
from scratchlm.model import GPT, KVCache, ModelConfig

W, S, C = 5, 4, 2  # window, stride, summary positions: small, so 40 tokens cross many windows and blocks
PATTERNS = {
    "local": dict(attn_pattern=("local",), attn_window=W),
    "strided": dict(attn_pattern=("strided",), attn_stride=S),
    "fixed": dict(attn_pattern=("fixed",), attn_stride=S, attn_summary=C),
    "mixed": dict(attn_pattern=("local", "strided", "fixed", "dense"), attn_window=W, attn_stride=S, attn_summary=C),
}


def _config(family: str, impl: str, context_length: int = 64, n_layer: int = 4, **pattern: object) -> ModelConfig:
    llama = dict(norm="rmsnorm", mlp="swiglu", positions="rope", bias=False, n_kv_head=2)
    return ModelConfig(vocab_size=101, context_length=context_length, n_layer=n_layer, n_head=4, d_model=32,
                       attn_impl=impl, **(llama if family == "llama" else {}), **pattern)  # fmt: skip


def _model(config: ModelConfig) -> GPT:
    torch.manual_seed(0)
    model = GPT(config)
    with torch.no_grad():  # wider than the init: attention weights far from uniform, so patterns show
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model.eval()


def _oracle(kind: str, T: int) -> torch.Tensor:
    """(T, T) True where query i sees key j, from the definitions, one (i, j) at a time."""
    mask = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(i + 1):
            if kind == "dense":
                seen = True
            elif kind == "local":
                seen = i - W < j
            elif kind == "strided":  # A1 = {max(0, i - S) .. i}, A2 = {j : (i - j) mod S = 0}
                seen = j >= max(0, i - S) or (i - j) % S == 0
            else:  # fixed: A1 = {j : j // S = i // S}, A2 = {j : j mod S in {S - c .. S - 1}}
                seen = j // S == i // S or j % S in range(S - C, S)
            mask[i, j] = seen
    return mask


def _dense_with_masks(model: GPT, ids: torch.Tensor) -> torch.Tensor:
    """A dense model with `model`'s weights, each layer given its pattern as an explicit (T, T) boolean mask."""
    dense = GPT(model.config.replace(attn_pattern=("dense",), attn_window=None, attn_stride=None, attn_summary=1))
    dense.load_state_dict(model.state_dict())
    dense.eval()
    T = ids.shape[1]
    x, rope = dense.embed(ids, torch.arange(T).expand_as(ids))
    for block, kind in zip(dense.blocks, model.config.layer_patterns):
        x = block(x, rope, _oracle(kind, T))
    return dense.lm_head(dense.norm(x))


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_pattern_equals_dense_attention_with_the_pattern_as_an_explicit_mask(impl: str, pattern: str) -> None:
    family = "llama" if pattern != "fixed" else "gpt2"  # both position schemes
    model = _model(_config(family, impl, **PATTERNS[pattern]))
    ids = torch.randint(0, 101, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(ids)
        ref = _dense_with_masks(model, ids)
        plain = GPT(model.config.replace(attn_pattern=("dense",), attn_window=None, attn_stride=None))
        plain.load_state_dict(model.state_dict())
        dense = plain.eval()(ids)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    # the pattern matters: beyond the first window/block the logits are not dense attention's
    assert (got[:, W + S :] - dense[:, W + S :]).abs().max() > 1e-2
    assert (got[:, :2] - dense[:, :2]).abs().max() < 1e-5  # the first positions see the same keys either way


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
def test_packed_documents_each_see_their_own_pattern(impl: str) -> None:
    model = _model(_config("llama", impl, **PATTERNS["mixed"]))
    a = torch.randint(0, 101, (1, 23), generator=torch.Generator().manual_seed(2))
    b = torch.randint(0, 101, (1, 17), generator=torch.Generator().manual_seed(3))
    positions = torch.cat([torch.arange(23), torch.arange(17)])[None]  # two documents packed in one row
    with torch.no_grad():
        packed = model.hidden_states(torch.cat([a, b], dim=1), positions=positions)
        alone = torch.cat([model.hidden_states(a), model.hidden_states(b)], dim=1)
    torch.testing.assert_close(packed, alone, rtol=0, atol=1e-5)


def _cached(model: GPT, ids: torch.Tensor, cache: KVCache, chunks: list[int]) -> torch.Tensor:
    """Feed `ids` through `cache` in chunks of the given sizes, then one token at a time; all logits."""
    out, t = [], 0
    for n in chunks + [1] * (ids.shape[1] - sum(chunks)):
        positions = torch.arange(t, t + n).expand(ids.shape[0], n)
        out.append(model(ids[:, t : t + n], cache, positions))
        t += n
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
@pytest.mark.parametrize("pattern", ["local", "mixed"])
def test_rolling_cache_decoding_equals_the_full_forward_past_the_window(impl: str, pattern: str) -> None:
    # float64: 64 steps of float32 rounding differ from the full forward by ~1e-5 at these weight scales
    model = _model(_config("llama", impl, context_length=4 * 16, **{**PATTERNS[pattern], "attn_window": 16}))
    model.double()
    T = 4 * 16  # decode to the end of a context 4x the window
    ids = torch.randint(0, 101, (2, T), generator=torch.Generator().manual_seed(4))
    cache = KVCache.for_model(model, 2, T, rolling=True)
    local = [i for i, k in enumerate(model.config.layer_patterns) if k == "local"]
    assert [cache.k[i].shape[2] for i in local] == [16] * len(local)  # rings of the window, not the context
    with torch.no_grad():
        full = model(ids)
        # a prompt shorter than the window, a chunk that wraps the ring, then token by token
        got = _cached(model, ids, cache, [7, 20])
    torch.testing.assert_close(got, full, rtol=0, atol=1e-5)


def test_ring_copied_from_a_right_padded_prefill_decodes_like_the_full_forward() -> None:
    """The engine's path: prompts of different lengths prefilled together (right-padded, plain cache), then each
    row's last window copied into its ring (the padding must not evict the prompt's keys)."""
    model = _model(_config("llama", "sdpa", **PATTERNS["local"])).double()
    lengths = [3, 12]
    ids = torch.randint(0, 101, (2, 30), generator=torch.Generator().manual_seed(5))
    small = KVCache.for_model(model, 2, max(lengths))  # plain: right padding goes to slots beyond each prompt
    ring = KVCache.for_model(model, 2, 64, rolling=True)
    with torch.no_grad():
        model(ids[:, :12], small, torch.arange(12).expand(2, 12))  # row 0 is padded by 9 tokens
        ring.copy_rows_from(small, torch.tensor([0, 1]), torch.tensor(lengths))
        for row, n in enumerate(lengths):
            one = ring.rows(row, row + 1)
            got = [model(ids[row : row + 1, t : t + 1], one, torch.tensor([[t]])) for t in range(n, 30)]
            full = model(ids[row : row + 1])[:, n:]
            torch.testing.assert_close(torch.cat(got, dim=1), full, rtol=0, atol=1e-5)


def test_training_backward_and_masks_made_under_inference_mode() -> None:
    model = _model(_config("llama", "manual", **PATTERNS["mixed"])).train()
    ids = torch.randint(0, 101, (2, 24), generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        model(ids)  # leaves cached masks that cannot be saved for backward
    loss = model(ids[:, :-1], targets=ids[:, 1:], reduction="mean")
    loss.backward()
    ref = _dense_with_masks(model, ids[:, :-1]).log_softmax(-1).gather(-1, ids[:, 1:, None]).mean().neg()
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-5)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(attn_pattern=("local",), attn_window=128),
         "model attn_window=128 is larger than context_length=64; set attn_window to at most the context "
         "(a window covering the context is dense attention)"),
        (dict(attn_pattern=("local",)), "model attn_pattern has local layers but attn_window is not set; set attn_window"),
        (dict(attn_window=8), "model attn_window=8 is set but attn_pattern has no local layer; drop attn_window or "
                              "add local layers to attn_pattern"),
        (dict(attn_pattern=("sliding",)), "model attn_pattern entry 'sliding' is not supported; use one of dense, "
                                          "local, strided, fixed"),
        (dict(attn_pattern=("local", "local", "dense"), attn_window=8),
         "model attn_pattern has 3 entries, which does not divide n_layer=4; give one entry per layer or a cycle "
         "that repeats a whole number of times"),
        (dict(attn_pattern=("strided",)), "model attn_pattern has strided or fixed layers but attn_stride is not "
                                          "set; set attn_stride"),
        (dict(attn_pattern=("strided",), attn_stride=1), "model attn_stride must be at least 2 (a stride of 1 is "
                                                         "dense attention)"),
        (dict(attn_pattern=("fixed",), attn_stride=4, attn_summary=4),
         "model attn_summary=4 must be smaller than attn_stride=4 (summarising a whole block is dense attention)"),
        (dict(attn_pattern=("local",), attn_window=0), "model attn_window must be a positive integer, got 0"),
    ],
)  # fmt: skip
def test_bad_pattern_settings_get_one_line(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        _config("llama", "sdpa", **fields)
    assert str(e.value) == message


def test_pattern_from_yaml_style_strings() -> None:
    config = _config("llama", "sdpa", attn_pattern="local, local,local,dense", attn_window=8)  # type: ignore[arg-type]
    assert config.attn_pattern == ("local", "local", "local", "dense")
    assert _config("llama", "sdpa", n_layer=6, attn_pattern=("local", "dense"), attn_window=8).layer_patterns == (
        "local", "dense", "local", "dense", "local", "dense")  # fmt: skip


def test_gguf_export_refuses_patterns_in_one_line() -> None:
    from scratchlm.errors import ScratchlmError
    from scratchlm.interop.gguf import gguf_architecture

    with pytest.raises(ScratchlmError) as e:
        gguf_architecture(_config("llama", "sdpa", **PATTERNS["local"]))
    assert str(e.value) == ("GGUF export supports dense attention only, not attn_pattern local; export to Hugging "
                            "Face instead (all-local models export as Mistral)")  # fmt: skip
    assert gguf_architecture(_config("llama", "sdpa")) == "llama"
