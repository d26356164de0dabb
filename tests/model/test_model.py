"""The network itself: config checks, manual == sdpa, KV-cache decoding == full forward, initialisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from scratchlm.errors import ConfigError
from scratchlm.model import GPT, KVCache, ModelConfig, layers, onednn, preset_names
from scratchlm.model.layers import apply_rope, rope_cos_sin, rope_inv_freq

TINY = {"vocab_size": 97, "context_length": 64}


def tiny(preset: str, **kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig.from_preset(preset, **{**TINY, **kw})).eval()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"d_model": 64, "n_head": 5}, "model n_head=5 does not divide d_model=64; choose n_head among the divisors"),
        ({"n_head": 4, "n_kv_head": 3}, "model n_kv_head=3 does not divide n_head=4; choose n_kv_head among"),
        ({"norm": "batchnorm"}, "model norm='batchnorm' is not supported; use one of layernorm, rmsnorm"),
        ({"n_layer": 0}, "model n_layer must be a positive integer"),
    ],
)
def test_config_errors_name_the_fix(fields, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelConfig(**{"d_model": 64, "n_head": 4, **fields})


def test_presets_build_and_gpt2_has_124m_parameters() -> None:
    assert {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "tinyllama-1.1b", "llama-3.2-1b"} <= set(preset_names())
    counts = {}
    for name in ("gpt2", "gpt2-medium", "tinyllama-1.1b", "llama-3.2-1b"):
        with torch.device("meta"):
            counts[name] = GPT(ModelConfig.from_preset(name)).num_params()
    assert counts["gpt2"] == 124_439_808
    assert counts["gpt2-medium"] == 354_823_168  # HF gpt2-medium, tied
    assert counts["tinyllama-1.1b"] == 1_100_048_384  # TinyLlama model card figure
    assert counts["llama-3.2-1b"] == 1_235_814_400  # Llama-3.2-1B, tied


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_manual_attention_equals_sdpa_and_an_explicit_loop(preset) -> None:
    manual = tiny(preset, attn_impl="manual")
    sdpa = GPT(manual.config.replace(attn_impl="sdpa")).eval()
    sdpa.load_state_dict(manual.state_dict())
    ids = torch.randint(0, 97, (3, 21))
    with torch.no_grad():
        torch.testing.assert_close(manual(ids), sdpa(ids), rtol=0, atol=1e-5)
    # The oracle: attention of one head as explicit loops over queries and keys.
    attn = manual.blocks[0].attn
    q, k, v = (torch.randn(1, 2, 5, 16) for _ in range(3))
    ref = torch.zeros_like(q)
    for h in range(2):
        for t in range(5):
            s = torch.stack([q[0, h, t] @ k[0, h, j] / 4.0 for j in range(t + 1)])
            w = torch.softmax(s, 0)
            ref[0, h, t] = sum(w[j] * v[0, h, j] for j in range(t + 1))
    attn.n_rep, attn.head_dim = 1, 16
    torch.testing.assert_close(attn._attend_manual(q, k, v, None), ref, rtol=0, atol=1e-6)


def test_rope_rotates_pairs_and_preserves_norm() -> None:
    config = ModelConfig(d_model=8, n_head=1, positions="rope", rope_theta=100.0)
    inv = rope_inv_freq(config)  # (4,)
    torch.testing.assert_close(inv, torch.tensor([100.0 ** (-i / 4) for i in range(0, 4)]))
    x = torch.randn(1, 3, 1, 8)
    cos, sin = rope_cos_sin(inv, torch.tensor([[0, 1, 5]]), torch.float32)
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y[:, 0], x[:, 0])  # position 0: no rotation
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    a = 5 * inv[2]  # pair 2 at position 5: (x[2], x[6]) rotated by 5 * inv_freq[2]
    x1, x2 = x[0, 2, 0, 2], x[0, 2, 0, 6]
    torch.testing.assert_close(y[0, 2, 0, 2], x1 * torch.cos(a) - x2 * torch.sin(a))
    torch.testing.assert_close(y[0, 2, 0, 6], x2 * torch.cos(a) + x1 * torch.sin(a))


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])  # learned positions / RoPE + GQA
@pytest.mark.parametrize("impl", ["manual", "sdpa"])
def test_kv_cache_decoding_equals_full_forward(preset, impl) -> None:
    model = tiny(preset, attn_impl=impl)
    ids = torch.randint(0, 97, (2, 24))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache.for_model(model, batch_size=2, max_len=32)
        pos = torch.arange(24).expand(2, 24)
        steps = [model(ids[:, :10], cache, pos[:, :10])]  # prefill
        steps += [model(ids[:, t : t + 1], cache, pos[:, t : t + 1]) for t in range(10, 24)]  # one token at a time
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_batched_right_padded_prompts_with_per_row_positions(preset) -> None:
    """Rows of different lengths share one cache; each continues at its own position (the engine's pattern)."""
    model = tiny(preset)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(1, 97, (n,), generator=g) for n in (6, 9, 7)]  # prompt + continuation, per row
    prompt_len = [3, 6, 2]
    B, L = len(seqs), max(prompt_len)
    ids = torch.zeros(B, L, dtype=torch.long)  # right-padded with 0
    for b, n in enumerate(prompt_len):
        ids[b, :n] = seqs[b][:n]
    with torch.no_grad():
        cache = KVCache.for_model(model, B, 16)
        logits = model(ids, cache, torch.arange(L).expand(B, L))
        got = {b: [logits[b, prompt_len[b] - 1]] for b in range(B)}
        pos = torch.tensor(prompt_len)  # next position of every row
        for _ in range(3):  # each row feeds its own next token at its own position
            nxt = torch.stack([seqs[b][pos[b]] for b in range(B)])[:, None]
            step = model(nxt, cache, pos[:, None])
            for b in range(B):
                got[b].append(step[b, 0])
            pos = pos + 1
        for b in range(B):
            n = prompt_len[b]
            alone = model(seqs[b][None, : n + 3])[0, n - 1 :]  # the row alone, no cache, no padding
            torch.testing.assert_close(torch.stack(got[b]), alone, rtol=0, atol=1e-5)


def test_positions_without_cache_offset_rows() -> None:
    """Positions 0.. in every row equal the default; rope models are shift-invariant in their attention."""
    model = tiny("gpt2-tiny")
    ids = torch.randint(0, 97, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(ids, positions=torch.arange(8).expand(2, 8)), model(ids), rtol=0, atol=1e-6)
    rope = tiny("llama-tiny")
    with torch.no_grad():
        torch.testing.assert_close(rope(ids, positions=torch.arange(8).expand(2, 8) + 5), rope(ids), rtol=0, atol=1e-4)


def test_hidden_states_and_tied_head() -> None:
    model = tiny("gpt2-tiny")
    assert model.lm_head.weight is model.tok_emb.weight
    ids = torch.randint(0, 97, (2, 5))
    h = model.hidden_states(ids)
    assert h.shape == (2, 5, 64)
    torch.testing.assert_close(model(ids), h @ model.tok_emb.weight.T)
    assert [n for n, _ in model.blocks[0].named_children()] == ["norm1", "attn", "norm2", "mlp"]
    names = {n for n, _ in model.named_modules()}
    assert {"blocks.1.attn.q_proj", "blocks.1.attn.k_proj", "blocks.1.attn.v_proj", "blocks.1.attn.o_proj",
            "blocks.1.mlp.fc_in", "blocks.1.mlp.fc_out"} <= names
    assert "blocks.0.mlp.gate_proj" in {n for n, _ in tiny("llama-tiny").named_modules()}


def test_gpt2_initialisation() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=2000, context_length=64, n_layer=8, n_head=4, d_model=128))
    std = lambda t: t.detach().std().item()  # noqa: E731
    assert std(model.tok_emb.weight) == pytest.approx(0.02, rel=0.02)
    assert std(model.blocks[0].attn.q_proj.weight) == pytest.approx(0.02, rel=0.05)
    resid = 0.02 / math.sqrt(2 * 8)
    assert std(model.blocks[3].attn.o_proj.weight) == pytest.approx(resid, rel=0.05)
    assert std(model.blocks[3].mlp.fc_out.weight) == pytest.approx(resid, rel=0.05)
    assert model.blocks[0].attn.q_proj.bias.abs().max() == 0
    assert torch.equal(model.blocks[0].norm1.weight, torch.ones(128))
    # The loss of an untrained model is about ln(V): no token is favoured.
    ids, targets = torch.randint(0, 2000, (2, 4, 64))  # targets unrelated to the inputs (tied head!)
    loss = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten())
    assert loss.item() == pytest.approx(math.log(2000), abs=0.05)


def test_meta_device_build_then_init_weights() -> None:
    with torch.device("meta"):
        model = GPT(ModelConfig.from_preset("llama-tiny", **TINY))
    model.to_empty(device="cpu")
    model.init_weights()
    assert model.lm_head.weight is not model.tok_emb.weight  # llama-tiny: untied
    assert model(torch.randint(0, 97, (1, 4))).isfinite().all()


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_packed_documents_attend_only_within_themselves(preset: str) -> None:
    """Positions restarting at 0 mark packed documents: each gives the logits it gives alone."""
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset(preset, vocab_size=97)).eval()
    a, b = torch.randint(0, 97, (1, 5)), torch.randint(0, 97, (1, 3))
    packed = torch.cat([a, b], dim=1)
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]])
    with torch.no_grad():
        out = model(packed, positions=positions)
        torch.testing.assert_close(out[:, :5], model(a), rtol=0, atol=1e-5)
        torch.testing.assert_close(out[:, 5:], model(b), rtol=0, atol=1e-5)
        assert not torch.allclose(model(packed)[:, 5:], model(b), atol=1e-3)  # without the reset, b sees a


def _gemm_ops(counter: FlopCounterMode) -> set[str]:
    return {str(op) for op in counter.get_flop_counts()["Global"]}


@pytest.mark.skipif(not onednn.AVAILABLE, reason="this torch build has no oneDNN linear op")
@pytest.mark.parametrize(
    "x_shape", [(1, 48), (8, 48), (3, 5, 48), "non-contiguous"], ids=["one row", "eight rows", "3d", "strided"]
)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_runs_onednn_forward_and_backward_and_equals_f_linear(x_shape, bias: bool) -> None:
    torch.manual_seed(0)
    layer = layers.Linear(48, 40, bias=bias)
    x = torch.randn(3, 7, 48)[:, -1] if x_shape == "non-contiguous" else torch.randn(*x_shape)
    gemm_flops = 2 * math.prod(x.shape[:-1]) * 48 * 40
    ref = F.linear(x, layer.weight, layer.bias)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        y = layer(x)
    assert _gemm_ops(counter) == {"mkldnn._linear_pointwise"}  # oneDNN, counted with F.linear's flops
    assert counter.get_total_flops() == gemm_flops
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)

    # Training: grad_x is a oneDNN product too, grad_w BLAS's mm (it reads both transposed operands in place,
    # where oneDNN copies them first); both equal F.linear's.
    x_ref = x.detach().clone().requires_grad_()
    x = x.detach().clone().requires_grad_()
    grad_y = torch.randn_like(ref)
    with FlopCounterMode(display=False) as counter:
        layer(x).backward(grad_y)
    flops = counter.get_flop_counts()["Global"]
    assert {str(op): n for op, n in flops.items()} == {"mkldnn._linear_pointwise": 2 * gemm_flops,  # y, grad_x
                                                       "aten.mm": gemm_flops}  # grad_w
    grads = [x.grad, layer.weight.grad] + ([layer.bias.grad] if bias else [])
    layer.zero_grad()
    F.linear(x_ref, layer.weight, layer.bias).backward(grad_y)
    ref_grads = [x_ref.grad, layer.weight.grad] + ([layer.bias.grad] if bias else [])
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    # A frozen weight (LoRA's base layer) gets no gradient and costs no product for one.
    layer.zero_grad()
    layer.requires_grad_(False)
    with FlopCounterMode(display=False) as counter:
        layer(x).backward(grad_y)
    assert counter.get_total_flops() == 2 * gemm_flops  # y, grad_x
    assert layer.weight.grad is None
    # Autocast owns F.linear's precision rules: under it the layer is plain F.linear.
    with FlopCounterMode(display=False) as counter, torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and "mkldnn._linear_pointwise" not in _gemm_ops(counter)


def test_linear_on_no_rows_trains() -> None:
    layer = layers.Linear(3, 4)
    x = torch.randn(2, 0, 3, requires_grad=True)
    y = layer(x)
    assert y.shape == (2, 0, 4)
    y.sum().backward()
    assert torch.equal(layer.weight.grad, torch.zeros(4, 3)) and x.grad.shape == (2, 0, 3)
