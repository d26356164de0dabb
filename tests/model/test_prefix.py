"""Prefix and prompt tuning on the model (`scratchlm.model.prefix`), against oracles written out in the test:
a prefix equals attention over [prefix keys/values ; the tokens'] spelled out layer by layer; a soft prompt
equals prepending its embeddings to the input; the reparameterised and the folded prefix equal what they fold;
both attention kernels, GPT-2 (learned positions) and Llama (RoPE, GQA with 1 KV head for 2 query heads)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scratchlm.errors import ConfigError, ScratchlmError
from scratchlm.model import GPT, ModelConfig
from scratchlm.model.layers import rope_cos_sin, rope_inv_freq
from scratchlm.model.prefix import PrefixConfig, PrefixKV, PrefixMLP, PromptPrefix, attach_prefix, fold_prefix

LLAMA = {"norm": "rmsnorm", "mlp": "swiglu", "positions": "rope", "bias": False, "n_kv_head": 1}
CASES = [(f, i) for f in ("gpt2", "llama") for i in ("manual", "sdpa")]


def _model(family: str, attn_impl: str, context_length: int = 64) -> GPT:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=97, context_length=context_length, n_layer=2, n_head=2, d_model=32,
                         attn_impl=attn_impl, **(LLAMA if family == "llama" else {}))
    model = GPT(config).eval()
    with torch.no_grad():  # wider than GPT-2's init, so attention is far from uniform
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model


def _rope(model: GPT, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    if model.config.positions != "rope":
        return None
    return rope_cos_sin(rope_inv_freq(model.config), positions[None], torch.float32)


def _oracle_with_prefix(model: GPT, ids: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor) -> torch.Tensor:
    """Logits with prefix keys/values pk, pv (n_layer, H_kv, P, D), every step written out: per layer, per head,
    scores against [prefix ; causal tokens], softmax, weighted values."""
    B, T = ids.shape
    c = model.config
    H, H_kv, D, P = c.n_head, c.n_kv_head, c.head_dim, pk.shape[2]
    x = model.tok_emb(ids) + (model.pos_emb(torch.arange(T)) if model.pos_emb is not None else 0)
    rope = _rope(model, torch.arange(T))
    for layer, block in enumerate(model.blocks):
        a = block.attn
        h = block.norm1(x)
        q, k = a.q_proj(h).view(B, T, H, D), a.k_proj(h).view(B, T, H_kv, D)
        if rope is not None:
            from scratchlm.model.layers import apply_rope

            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        v = a.v_proj(h).view(B, T, H_kv, D)
        out = torch.zeros(B, T, H, D)
        for b in range(B):
            for head in range(H):
                g = head // (H // H_kv)  # the KV head this query head shares
                keys = torch.cat([pk[layer, g], k[b, :, g]])  # (P + T, D)
                values = torch.cat([pv[layer, g], v[b, :, g]])
                for t in range(T):
                    visible = P + t + 1  # all prefix slots, tokens 0..t
                    scores = keys[:visible] @ q[b, t, head] / math.sqrt(D)
                    out[b, t, head] = F.softmax(scores, dim=0) @ values[:visible]
        x = x + a.o_proj(out.reshape(B, T, H * D))
        x = x + block.mlp(block.norm2(x))
    return model.lm_head(model.norm(x))


@pytest.mark.parametrize(("family", "attn_impl"), CASES)
def test_prefix_equals_attention_over_prefix_and_tokens_written_out(family: str, attn_impl: str) -> None:
    model = _model(family, attn_impl)
    prefix = attach_prefix(model, "prefix", PrefixConfig(3))
    with torch.no_grad():
        prefix.key.normal_(0.0, 1.0)
        prefix.value.normal_(0.0, 1.0)
        ids = torch.randint(97, (2, 7))
        want = _oracle_with_prefix(model, ids, prefix.key, prefix.value)
        torch.testing.assert_close(model(ids), want, atol=2e-5, rtol=1e-5)
        # right-padded rows with explicit positions (a document mask) see the prefix too
        torch.testing.assert_close(model(ids, positions=torch.arange(7).expand(2, 7)), want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(("family", "attn_impl"), CASES)
def test_soft_prompt_equals_prepending_its_embeddings(family: str, attn_impl: str) -> None:
    model = _model(family, attn_impl)
    prompt = attach_prefix(model, "prompt", PrefixConfig(4))
    B, T, P = 3, 9, 4
    ids = torch.randint(97, (B, T))
    with torch.no_grad():
        # the oracle: the soft tokens prepended, with no position embedding (GPT-2) or at -P..-1 (RoPE)
        x = model.tok_emb(ids) + (model.pos_emb(torch.arange(T)) if model.pos_emb is not None else 0)
        x = torch.cat([prompt.embedding.expand(B, -1, -1), x], dim=1)  # (B, P + T, C)
        rope = _rope(model, torch.arange(-P, T))
        hooks = [b.attn.prefix for b in model.blocks]
        for block in model.blocks:
            block.attn.prefix = None
            x = block(x, rope)
        for block, hook in zip(model.blocks, hooks):
            block.attn.prefix = hook
        want = model.lm_head(model.norm(x))[:, P:]
        torch.testing.assert_close(model(ids), want, atol=2e-5, rtol=1e-5)
        fold_prefix(model)  # what the loader does: fixed keys/values, no record pass
        assert type(model.prefix).__name__ == "PrefixKV"
        torch.testing.assert_close(model(ids), want, atol=2e-5, rtol=1e-5)


def test_reparameterised_prefix_folds_to_the_same_model() -> None:
    model = _model("llama", "sdpa")
    prefix = attach_prefix(model, "prefix", PrefixConfig(5, reparam=16))
    ids = torch.randint(97, (2, 6))
    with torch.no_grad():
        before = model(ids)
        saved = prefix.saved_state()
        assert set(saved) == {"key", "value"} and saved["key"].shape == (2, 1, 5, 16)  # (n_layer, H_kv, P, D)
        assert set(prefix.training_state()) == {"embedding", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight",
                                                "mlp.2.bias"}
        fold_prefix(model)
        torch.testing.assert_close(model(ids), before, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["prefix", "prompt", "reparam"])
def test_gradients_reach_only_the_prefix(kind: str) -> None:
    model = _model("gpt2", "sdpa").train()
    attach_prefix(model, "prompt" if kind == "prompt" else "prefix", PrefixConfig(3, 8 if kind == "reparam" else 0))
    ids = torch.randint(97, (2, 6))
    model(ids, targets=ids, reduction="mean").backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in model.named_parameters() if n.startswith("prefix.")}
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in with_grad)


def test_gpt2_shape_prefix_adapter_is_under_1_percent_of_the_base() -> None:
    with torch.device("meta"):  # shapes only
        model = GPT(ModelConfig.from_preset("gpt2"))
    full = sum(t.numel() for k, t in model.state_dict().items() if k != "lm_head.weight")  # tied: stored once
    with torch.device("meta"):
        # what the adapter file holds: the (folded) prefix only
        sizes = {name: sum(t.numel() for t in prefix.saved_state().values())
                 for name, prefix in (("prefix", PrefixKV(model, 20)), ("reparam", PrefixMLP(model, 20, 512)),
                                      ("prompt", PromptPrefix(model, 20)))}
    # 12 layers x (keys + values) x 20 slots x 768 = 368,640 of 124,439,808 (0.30%); prompt: 20 x 768
    assert sizes == {"prefix": 368_640, "reparam": 368_640, "prompt": 15_360}
    assert full == 124_439_808 and sizes["prefix"] / full < 0.01


def test_bad_prefix_lengths_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"^--prefix-length must be at least 1, got 0"):
        PrefixConfig(0)
    model = _model("gpt2", "sdpa", context_length=16)
    with pytest.raises(ScratchlmError, match=r"^--prefix-length 17 is longer than the model's context \(16 tokens\)"):
        attach_prefix(model, "prefix", PrefixConfig(17))
