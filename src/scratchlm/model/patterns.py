"""Attention patterns: which earlier positions a query may see, as a rule on absolute positions.

A query at position i may see the key at position j only if j <= i (causal), and then:

| pattern  | also needs                                   | keys per query (long context n) |
|----------|----------------------------------------------|---------------------------------|
| dense    | nothing                                      | i + 1                           |
| local    | i - j < W        (W = attn_window)           | W (sliding window, Mistral)     |
| strided  | i - j < S  or  (i - j) % S == 0              | S + i / S                       |
| fixed    | j // S == i // S  or  j % S >= S - c         | S + c * i / S                   |

`strided` and `fixed` are the two factorised patterns of the Sparse Transformer (Child et al. 2019, "Generating
Long Sequences with Sparse Transformers", section 4.2), each as the union of its two halves in one layer, for
every head (the paper's "merged head" variant; its per-head and per-layer splits of the halves are not offered).
With S near sqrt(n) a query sees O(sqrt(n)) keys, and every position still reaches every earlier one in two layers.

Because the rule is on positions, one function serves every mask the model builds: training (positions 0..T-1),
packed documents (positions restart per document), and the KV cache, whose slots the cache maps to positions
(`KVCache.key_positions`; a rolling cache's slots hold the last W positions). The kernels stay dense: a masked
key costs the same FLOPs as a visible one here, and `sizing.py` counts the keys a block-sparse kernel would
compute.

This module knows nothing of heads, caches or kernels; `GPT` builds one mask per distinct pattern per forward.
"""

from __future__ import annotations

import torch

from scratchlm.model.config import ModelConfig


def visible(pattern: str, q_pos: torch.Tensor, k_pos: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """True where a query at position `q_pos` may see a key at `k_pos` (broadcast against each other).

    Keys at negative positions (rolling-cache slots not written yet) are never visible."""
    d = q_pos - k_pos  # how far back the key is
    ok = (d >= 0) & (k_pos >= 0)
    if pattern == "dense":
        return ok
    if pattern == "local":
        return ok & (d < config.attn_window)  # type: ignore[operator]
    S = config.attn_stride
    assert S is not None
    if pattern == "strided":
        return ok & ((d < S) | (d % S == 0))
    assert pattern == "fixed", pattern
    same_block = torch.div(q_pos, S, rounding_mode="floor") == torch.div(k_pos, S, rounding_mode="floor")
    return ok & (same_block | (k_pos % S >= S - config.attn_summary))


def causal_mask(pattern: str, T: int, config: ModelConfig, device: torch.device) -> torch.Tensor | None:
    """(1, 1, T, T) mask of `pattern` over positions 0..T-1 (training), or None for dense (the kernels' fast
    causal path). Cached per (pattern, T, device), outside compiled code."""
    if pattern == "dense":
        return None
    if torch.compiler.is_compiling():
        return _causal_mask(pattern, T, config, device)
    # the key includes inference mode: a mask made under inference_mode cannot be saved for a later backward
    key = (pattern, T, str(device), config.attn_window, config.attn_stride, config.attn_summary,
           torch.is_inference_mode_enabled())  # fmt: skip
    mask = _CACHE.get(key)
    if mask is None:
        if len(_CACHE) >= 8:  # a handful of lengths in practice (training, evaluation)
            _CACHE.clear()
        mask = _CACHE[key] = _causal_mask(pattern, T, config, device)
    return mask


_CACHE: dict[tuple, torch.Tensor] = {}


def _causal_mask(pattern: str, T: int, config: ModelConfig, device: torch.device) -> torch.Tensor:
    pos = torch.arange(T, device=device)
    return visible(pattern, pos[:, None], pos[None, :], config)[None, None]


def keys_per_query(pattern: str, context: int, config: ModelConfig) -> float:
    """Keys one query attends to at sequence length `context`, for FLOP counts.

    Dense counts the whole row (`context`), the usual convention for FLOPs (PaLM, nanoGPT's MFU), and the others
    are counted the same way, without the causal cut, so a window as long as the context counts as dense."""
    if pattern == "dense":
        return float(context)
    if pattern == "local":
        return float(min(config.attn_window, context))  # type: ignore[type-var]
    S = config.attn_stride
    assert S is not None
    per_block = 1 if pattern == "strided" else config.attn_summary  # keys per earlier block of S
    return float(min(context, S + per_block * context / S))
