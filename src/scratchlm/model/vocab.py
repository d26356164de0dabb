"""Growing a model's vocabulary (new special tokens for a chat template), deterministically."""

from __future__ import annotations

import torch
from torch import nn

from scratchlm.model.gpt import GPT
from scratchlm.model.layers import Linear


def resize_vocab(model: GPT, vocab_size: int) -> bool:
    """Grow the token embedding (and an untied head) to `vocab_size` rows, for new special tokens.

    New rows = the mean of the old rows plus a little noise of the rows' own scale (as HF's resize does), from a
    FIXED generator: deterministic, so an adapter-only checkpoint rebuilds them exactly from the base, and
    distinct, so that even with frozen embeddings (LoRA) the model can learn to tell the new tokens apart and to
    emit the right one. Returns whether anything changed.
    """
    old = model.tok_emb.weight
    V, C = old.shape
    if vocab_size <= V:
        return False

    def grown(weight: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(V)
        noise = torch.randn(vocab_size - V, C, generator=g) * weight.float().std(0).cpu() * 0.5  # (V_new, C)
        new_rows = weight.float().mean(0).cpu() + noise
        return torch.cat([weight, new_rows.to(weight.device, weight.dtype)])  # (vocab_size, C)

    with torch.no_grad():
        emb = nn.Embedding(vocab_size, C, device="meta")
        emb.weight = nn.Parameter(grown(old), requires_grad=old.requires_grad)
        model.tok_emb = emb
        if not model.config.tie_embeddings:
            head_old = model.lm_head.weight
            head = Linear(C, vocab_size, bias=False, device="meta")
            head.weight = nn.Parameter(grown(head_old), requires_grad=head_old.requires_grad)
            model.lm_head = head
        else:
            model.lm_head = Linear(C, vocab_size, bias=False, device="meta")  # replaced by the tie below
            model.tie_weights()
    model.config.vocab_size = vocab_size
    return True
