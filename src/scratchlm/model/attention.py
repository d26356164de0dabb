"""Causal self-attention, written out: project, split heads, rotate (RoPE), scaled QK^T, mask, softmax, weight V,
merge heads, project out. Grouped-query attention (n_kv_head < n_head) shares each key/value head among
n_head / n_kv_head query heads.

Two interchangeable kernels for the middle part, chosen once in `__init__` by `config.attn_impl`:
- `manual`: the textbook computation, every step visible (and the oracle the tests compare against);
- `sdpa`: `F.scaled_dot_product_attention`, which dispatches to flash / memory-efficient kernels (CPU and GPU).

Masks: `mask=None` means "plain causal over these T tokens" (the fast `is_causal=True` path of training). Otherwise
`mask` is a boolean (B, 1, T, S) tensor, True where query t may attend to key slot s (built once per forward by
`GPT`, from absolute positions; see `kv_cache.py` for the rule).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.model.config import ModelConfig
from scratchlm.model.kv_cache import KVCache
from scratchlm.model.layers import Linear, apply_rope

Rope = tuple[torch.Tensor, torch.Tensor] | None  # (cos, sin), each (B, T, 1, D/2), or None for learned positions
# (layer, k, v, mask) -> (k, v, mask) with prefix slots prepended; set by `model/prefix.py`
PrefixHook = Callable[[int, torch.Tensor, torch.Tensor, "torch.Tensor | None"], tuple[torch.Tensor, ...]]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        assert config.n_kv_head is not None
        self.layer_idx = layer_idx  # which slice of a KVCache this layer owns
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.n_rep = config.n_rep
        self.q_proj = Linear(config.d_model, config.n_head * config.head_dim, bias=config.bias)
        self.k_proj = Linear(config.d_model, config.kv_dim, bias=config.bias)
        self.v_proj = Linear(config.d_model, config.kv_dim, bias=config.bias)
        self.o_proj = Linear(config.n_head * config.head_dim, config.d_model, bias=config.bias)
        self.attn_dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        # Variant choices, made once.
        self.rotate: Callable[[torch.Tensor, torch.Tensor, Rope], tuple[torch.Tensor, torch.Tensor]] = (
            _rotate if config.positions == "rope" else _no_rotate
        )
        self.attend = self._attend_sdpa if config.attn_impl == "sdpa" else self._attend_manual
        self.prefix: PrefixHook | None = None  # prefix/prompt tuning (model/prefix.py): slots before position 0

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        D = self.head_dim
        # heads from the projections' widths: under tensor parallelism (--tp) q/k/v_proj are column shards and
        # hold n_head / tp and n_kv_head / tp of the heads (n_rep, their ratio, is unchanged)
        q = self.q_proj(x).view(B, T, -1, D)  # (B, T, H, D), H local
        k = self.k_proj(x).view(B, T, -1, D)  # (B, T, H_kv, D)
        H, H_kv = q.shape[2], k.shape[2]
        q, k = self.rotate(q, k, rope)  # RoPE in this (B, T, H, D) layout: its output keeps it (see below)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, D), (B, H_kv, T, D)
        v = self.v_proj(x).view(B, T, H_kv, D).transpose(1, 2)  # (B, H_kv, T, D)
        if cache is not None:
            assert mask is not None and positions is not None
            k, v = cache.update(self.layer_idx, k, v, positions, length=mask.shape[-1])  # (B, H_kv, S, D)
        if self.prefix is not None:  # every query also sees the P learned slots: (B, H_kv, P + S, D)
            k, v, mask = self.prefix(self.layer_idx, k, v, mask)
        y = self.attend(q, k, v, mask)  # (B, H, T, D)
        # Merge heads. The fused kernels lay their output out like q, i.e. (B, T, H, D) in memory, so this is a
        # view, not a copy (one activation less to keep for backward).
        y = y.transpose(1, 2).reshape(B, T, H * D)  # (B, T, C)
        return self.resid_dropout(self.o_proj(y))

    def _attend_manual(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """softmax(Q K^T / sqrt(D) + mask) V, spelled out."""
        if self.n_rep > 1:
            # GQA: query heads h*n_rep .. h*n_rep+n_rep-1 share key/value head h (repeat_interleave, not repeat).
            k = k.repeat_interleave(self.n_rep, dim=1)  # (B, H, S, D)
            v = v.repeat_interleave(self.n_rep, dim=1)
        T, S = q.shape[-2], k.shape[-2]
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, H, T, S)
        if mask is None:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()  # query t sees keys 0..t
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = F.softmax(scores, dim=-1)  # each row sums to 1 over the visible keys
        weights = F.dropout(weights, p=self.attn_dropout, training=self.training)
        return weights @ v  # (B, H, T, D)

    def _attend_sdpa(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The same computation in torch's fused kernel."""
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
            is_causal=mask is None,
            enable_gqa=self.n_rep > 1,
        )


def _rotate(q: torch.Tensor, k: torch.Tensor, rope: Rope) -> tuple[torch.Tensor, torch.Tensor]:
    assert rope is not None
    cos, sin = rope
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


def _no_rotate(q: torch.Tensor, k: torch.Tensor, rope: Rope) -> tuple[torch.Tensor, torch.Tensor]:
    return q, k
