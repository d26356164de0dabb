"""The chunked head + cross-entropy against the full-logit reference: values within 1e-6 relative and gradients
within 1e-5 in fp32, for ignored targets, biases, tied and untied heads, chunks that do not divide the tokens,
autocast, and through every mode and evaluation that scores tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scratchlm.model import GPT, ModelConfig
from scratchlm.model.loss import chunk_tokens, full_cross_entropy, linear_cross_entropy

IGNORE = -100


def _problem(bias: bool, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(3, 41, 24, generator=g).requires_grad_()
    w = (0.3 * torch.randn(500, 24, generator=g)).requires_grad_()
    b = (0.1 * torch.randn(500, generator=g)).requires_grad_() if bias else None
    t = torch.randint(0, 500, (3, 41), generator=g)
    t[0, :9] = IGNORE  # a masked prompt
    t[2, -5:] = IGNORE  # padding
    return h, w, b, t


@pytest.mark.parametrize("upstream_kind", ["per-token", "mean"])  # DPO-like weights recompute; a mean does not
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [1, 16, 37, 1000])
def test_equals_the_full_logit_path_in_fp32(bias: bool, chunk: int, upstream_kind: str) -> None:
    h, w, b, t = _problem(bias)
    params = [h, w] + ([b] if bias else [])
    upstream = torch.randn(t.shape, generator=torch.Generator().manual_seed(1))  # any reduction's gradient
    if upstream_kind == "mean":
        upstream = torch.full(t.shape, 1 / (t != IGNORE).sum().item())
    got = linear_cross_entropy(h, w, t, b, chunk=chunk)
    want = full_cross_entropy(F.linear(h, w, b), t)
    assert got.dtype == torch.float32 and got.shape == t.shape
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert (got[t == IGNORE] == 0).all()
    g_got = torch.autograd.grad((got * upstream).sum(), params)
    g_want = torch.autograd.grad((want * upstream).sum(), params)
    for a, r in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)
    assert g_got[0][0, :9].abs().max() == 0  # no gradient reaches an ignored position


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk", [16, 1000])
def test_scalar_reductions_match_cross_entropy_and_its_gradients(reduction: str, chunk: int) -> None:
    """A scalar loss takes the gradient-in-forward path: the same values and gradients as F.cross_entropy."""
    h, w, b, t = _problem(bias=True)
    got = linear_cross_entropy(h, w, t, b, chunk=chunk, reduction=reduction)
    ref = F.cross_entropy(F.linear(h, w, b).flatten(0, 1), t.flatten(), ignore_index=IGNORE, reduction=reduction)
    assert got.shape == () and got.item() == pytest.approx(ref.item(), rel=1e-6)
    for a, r in zip(torch.autograd.grad(3.0 * got, [h, w, b]), torch.autograd.grad(3.0 * ref, [h, w, b]), strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full_cross_entropy(F.linear(h, w, b), t, reduction=reduction), ref)


@pytest.mark.parametrize("reduction", ["none", "mean"])  # recomputed in backward; made in forward
@pytest.mark.parametrize("bias", [False, True])
def test_under_bf16_autocast_it_matches_autocast_full_logits(bias: bool, reduction: str) -> None:
    h, w, b, t = _problem(bias=bias)
    params = [h, w] + ([b] if bias else [])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(h, w, t, b, chunk=20, reduction=reduction)
        want = full_cross_entropy(F.linear(h, w, b), t, reduction=reduction)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)  # the same bf16 products, the same fp32 softmax
    g_got = torch.autograd.grad(got.sum(), params)
    g_want = torch.autograd.grad(want.sum(), params)
    for a, r in zip(g_got, g_want, strict=True):  # bf16 GEMMs: agreement to bf16's precision
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, r, rtol=2e-2, atol=2e-2 * r.abs().max().item())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_row_blocks_smaller_than_a_chunk_give_the_same_values(monkeypatch: pytest.MonkeyPatch, precision: str,
                                                               reduction: str) -> None:
    """On CPU the softmax's passes go over blocks of rows that the cache holds (at GPT-2's vocabulary 20 of a
    chunk's 166 or 667): here 7 rows, which divide neither the chunk nor the tokens."""
    from scratchlm.model import loss

    monkeypatch.setattr(loss, "ROW_BLOCK_ELEMENTS", 7 * 500)
    h, w, b, t = _problem(bias=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with autocast:
        got = linear_cross_entropy(h, w, t, b, chunk=37, reduction=reduction)
    monkeypatch.setattr(loss, "ROW_BLOCK_ELEMENTS", 10**9)  # one block per chunk
    with autocast:
        want = linear_cross_entropy(h, w, t, b, chunk=37, reduction=reduction)
        ref = full_cross_entropy(F.linear(h, w, b), t, reduction=reduction)
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same operations on the same rows
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-5)
    for a, r in zip(torch.autograd.grad(got.sum(), [h, w, b]), torch.autograd.grad(want.sum(), [h, w, b]),
                    strict=True):
        torch.testing.assert_close(a, r, rtol=2e-6, atol=1e-8)  # the bias's sums add up block by block


def test_chunk_size_keeps_the_logits_small() -> None:
    assert chunk_tokens(50257) * 50257 * 4 <= 32 * 2**20 and chunk_tokens(50257) >= 128
    assert chunk_tokens(10**9) == 16
    assert chunk_tokens(50304, device_type="cuda") * 4 >= 16 * 1024  # the gpt2 recipe's micro-batch in 4 chunks
    # bf16 on CPU: wider chunks (fewer conversions of the weight gradient), still a fraction of a batch's logits
    assert 4 * chunk_tokens(50257) <= chunk_tokens(50257, dtype=torch.bfloat16) <= 1024


@pytest.mark.parametrize("tie", [True, False])
def test_gpt_forward_with_targets_equals_the_logit_path(tie: bool) -> None:
    config = ModelConfig(vocab_size=300, context_length=32, n_layer=2, n_head=2, d_model=32, tie_embeddings=tie)
    torch.manual_seed(0)
    model = GPT(config)
    ids = torch.randint(0, 300, (4, 32))
    targets = torch.randint(0, 300, (4, 32))
    targets[1, :10] = IGNORE
    got = model(ids, targets=targets)
    loss = got.sum() / (targets != IGNORE).sum()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    ref = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    for a, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def _tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=300, context_length=32, n_layer=1, n_head=2, d_model=16))


def test_pretrain_and_sft_losses_equal_the_full_logit_reference() -> None:
    from scratchlm.train.modes.pretrain import PretrainMode
    from scratchlm.train.modes.sft import SFTMode

    model = _tiny()
    ids = torch.randint(0, 300, (3, 32))
    targets = torch.randint(0, 300, (3, 32))
    loss, _ = object.__new__(PretrainMode).loss(model, {"ids": ids, "targets": targets})
    ref = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    masked = targets.clone()
    masked[:, :12] = IGNORE  # the prompt
    masked[2, 20:] = IGNORE  # padding
    positions = torch.cat([torch.arange(16), torch.arange(16)]).expand(3, 32)  # two packed examples per row
    loss, _ = object.__new__(SFTMode).loss(model, {"ids": ids, "targets": masked, "positions": positions})
    ref = F.cross_entropy(model(ids, positions=positions).flatten(0, 1), masked.flatten(), ignore_index=IGNORE)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_dpo_sequence_logps_equal_the_full_logit_reference() -> None:
    from scratchlm.train.modes.dpo import DPOMode, dpo_loss, sequence_logps

    model = _tiny()
    g = torch.Generator().manual_seed(3)
    batch = {side + "_ids": torch.randint(0, 300, (2, 20), generator=g) for side in ("chosen", "rejected")}
    for side in ("chosen", "rejected"):
        t = torch.randint(0, 300, (2, 20), generator=g)
        t[:, :8] = IGNORE
        batch[side + "_targets"] = t
    batch["ref_chosen_logps"] = torch.tensor([-40.0, -42.0])
    batch["ref_rejected_logps"] = torch.tensor([-41.0, -39.0])
    mode = object.__new__(DPOMode)
    mode.beta = 0.1
    loss, _ = mode.loss(model, batch)
    pc = sequence_logps(model(batch["chosen_ids"]), batch["chosen_targets"])
    pr = sequence_logps(model(batch["rejected_ids"]), batch["rejected_targets"])
    ref, _, _ = dpo_loss(pc, pr, batch["ref_chosen_logps"], batch["ref_rejected_logps"], 0.1)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_perplexity_and_mc_scores_equal_the_full_logit_reference() -> None:
    from scratchlm.eval.perplexity import nll_at

    model = _tiny().eval()

    class LogitsOnly(torch.nn.Module):  # no hidden_states: the full-logit path
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.inner(ids)

    ids = torch.randint(0, 300, (2, 32))
    keep = torch.zeros(2, 32, dtype=torch.bool)
    keep[:, 16:] = True
    targets = torch.randint(0, 300, (int(keep.sum()),))
    with torch.no_grad():
        got = nll_at(model, ids, keep, targets)
        want = nll_at(LogitsOnly(), ids, keep, targets)
        by_hand = -F.log_softmax(model(ids)[keep], -1).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, by_hand, rtol=1e-6, atol=1e-6)


def test_under_autocast_rope_keeps_q_and_k_in_the_compute_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 RoPE tables would promote bf16 q/k to fp32 before attention (no flash kernel for mixed dtypes)."""
    import scratchlm.model.attention as attention

    seen = []
    real = F.scaled_dot_product_attention

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
        seen.append((q.dtype, k.dtype, v.dtype))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset("llama-tiny", n_layer=1, context_length=32))
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll = model(ids, targets=ids)
    assert seen == [(torch.bfloat16,) * 3] and nll.dtype == torch.float32


def test_all_targets_ignored_gives_zero_loss_and_zero_gradients() -> None:
    h, w, b, t = _problem(bias=True)
    t[:] = IGNORE
    nll = linear_cross_entropy(h, w, t, b, chunk=50)
    assert (nll == 0).all()
    grads = torch.autograd.grad(nll.sum(), [h, w, b])
    assert all((g == 0).all() for g in grads)
    mean = linear_cross_entropy(h, w, t, b, chunk=50, reduction="mean")  # 0, not F.cross_entropy's nan
    assert mean.item() == 0 and all((g == 0).all() for g in torch.autograd.grad(mean, [h, w, b]))


def test_no_grad_scoring_matches_and_keeps_no_gradient_buffers() -> None:
    h, w, b, t = _problem(bias=True)
    with torch.no_grad():
        got = linear_cross_entropy(h, w, t, b, chunk=50)
    torch.testing.assert_close(got, full_cross_entropy(F.linear(h, w, b), t).detach(), rtol=1e-6, atol=1e-6)
    assert got.grad_fn is None
