"""CUDA checks of the paths the GPU recipes take (marked `gpu`: skipped without CUDA, see tests/conftest.py).

- bf16 autocast: the chunked head + cross-entropy (`model(ids, targets=...)`) gives the per-token NLL of the
  full-logit path (`F.cross_entropy` on `model(ids).float()`) within bf16 tolerance, and the same gradients;
- SDPA's flash kernel takes our attention in bf16 (forcing it raises if the call is not eligible), forward and
  backward, and agrees with the math kernel.

    python -m pytest -m gpu
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from scratchlm.model import GPT, ModelConfig

pytestmark = pytest.mark.gpu

DEVICE = "cuda"


def _model_and_batch(seed: int = 0) -> tuple[GPT, torch.Tensor, torch.Tensor]:
    """A 2-layer GPT-2-shaped model (GPT-2's padded vocabulary, head dim 64 as in gpt2) and a random batch."""
    cfg = ModelConfig.from_preset(
        "gpt2", vocab_size=50304, n_layer=2, n_head=4, d_model=256, d_ff=1024, context_length=256
    )
    torch.manual_seed(seed)
    model = GPT(cfg).to(DEVICE)
    ids = torch.randint(0, cfg.vocab_size, (4, 257), device=DEVICE)
    return model, ids[:, :-1], ids[:, 1:]


def test_chunked_loss_matches_full_logits_in_bf16_autocast() -> None:
    model, ids, targets = _model_and_batch()
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        got = model(ids, targets=targets)
        logits = model(ids)
    want = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
    assert got.dtype == torch.float32 and got.shape == targets.shape
    torch.testing.assert_close(got, want, rtol=1e-2, atol=2e-2)
    assert abs(float((got.mean() - want.mean()).detach())) < 5e-3

    # k_proj.bias is left out: softmax ignores a constant added to every key's score, so its true gradient is
    # 0 and both computed ones are rounding noise (their cosine is meaningless).
    params = [p for n, p in model.named_parameters() if not n.endswith("k_proj.bias")]
    g_got = torch.autograd.grad(got.mean(), params, retain_graph=False)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        logits = model(ids)
    want = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    g_want = torch.autograd.grad(want, params)
    for a, b in zip(g_got, g_want):
        cos = F.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0)
        assert cos > 0.99, cos


def test_flash_attention_takes_our_attention_in_bf16_and_matches_math() -> None:
    model, ids, targets = _model_and_batch(seed=1)
    out = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
        model.zero_grad(set_to_none=True)
        # Only this backend allowed: an input the flash kernel cannot take raises instead of falling back.
        with sdpa_kernel(backend), torch.autocast(DEVICE, dtype=torch.bfloat16):
            logits = model(ids)
            loss = model(ids, targets=targets).mean()
        loss.backward()
        out[backend] = logits.float(), loss.detach(), model.blocks[0].attn.q_proj.weight.grad.clone()
    (l_flash, loss_flash, g_flash), (l_math, loss_math, g_math) = (
        out[SDPBackend.FLASH_ATTENTION],
        out[SDPBackend.MATH],
    )
    torch.testing.assert_close(l_flash, l_math, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(loss_flash, loss_math, rtol=1e-3, atol=1e-3)
    assert F.cosine_similarity(g_flash.flatten(), g_math.flatten(), dim=0) > 0.99
