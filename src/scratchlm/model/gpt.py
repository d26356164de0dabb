"""`GPT`: the decoder-only Transformer, GPT-2 or Llama depending on its `ModelConfig`.

    ids (B, T)
      -> token embedding (+ learned position embedding, GPT-2)          x: (B, T, C)
      -> n_layer x Block:  x = x + attn(norm1(x))   (RoPE inside attention, Llama)
                           x = x + mlp(norm2(x))
      -> final norm                                                     hidden_states: (B, T, C)
      -> lm_head (tied to the token embedding or not)                   logits: (B, T, V)

Decisions:
- Variant choices (norm, MLP, positions, attention kernel) are made once in `__init__`.
- All initialisation lives in `init_weights()`, because a model may be built on the meta device (checkpoint
  loading) and then filled, so `__init__` must not rely on its tensors' values.
- `forward` returns logits, or with `targets` the per-token NLL computed without materialising the logits
  (the reductions, masks and losses built on it belong to the training modes and evaluations).
- A `KVCache` is an argument, not a second model: `forward(ids, cache, positions)` serves training, prefill,
  incremental and batched decoding (see `kv_cache.py` for the position rule).
- Sparse and local layers (`attn_pattern`) differ only in their mask, built once per forward from positions
  (`patterns.py`); a dense model keeps training's mask-free causal fast path.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

import torch
from torch import nn

from scratchlm.model import patterns
from scratchlm.model.attention import CausalSelfAttention, Rope
from scratchlm.model.config import ModelConfig
from scratchlm.model.kv_cache import KVCache
from scratchlm.model.layers import Linear, RMSNorm, make_mlp, make_norm, rope_cos_sin, rope_inv_freq
from scratchlm.model.loss import full_cross_entropy, linear_cross_entropy
from scratchlm.model.quant import Int8Linear
from scratchlm.model.sizing import check_fits_in_memory

RESIDUAL_PROJECTIONS = ("o_proj", "fc_out", "down_proj")  # write into the residual stream: scaled init


class Block(nn.Module):
    """Pre-norm Transformer block: attention then MLP, each added to the residual stream."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.norm1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.norm2 = make_norm(config)
        self.mlp = make_mlp(config)

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, mask, cache, positions)
        x = x + self.mlp(self.norm2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # refuse before allocating; not on meta (checkpoint loading), which allocates nothing
        if torch.get_default_device().type == "cpu":
            check_fits_in_memory(config, torch.get_default_dtype().itemsize)
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        # GPT-2 learns one vector per absolute position; Llama rotates q/k inside attention instead (RoPE).
        self.pos_emb = nn.Embedding(config.context_length, config.d_model) if config.positions == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = make_norm(config)
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)
        self.embed = self._embed_learned if config.positions == "learned" else self._embed_rope
        # local / strided / fixed layers get masks of their own (patterns.py); dense models keep one mask for all
        self.all_dense = set(config.layer_patterns) == {"dense"}
        self.tie_weights()
        self.init_weights()

    def tie_weights(self) -> None:
        """Share the token embedding with the output head (GPT-2, Llama-3.2-1B): one V x C matrix, used twice.

        Call again after replacing parameters (e.g. `load_state_dict(assign=True)`), which breaks the sharing.
        """
        if self.config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 initialisation, in one place.

        | parameters                                    | init                              |
        |-----------------------------------------------|-----------------------------------|
        | embeddings, linear weights (head included)    | normal(0, 0.02)                   |
        | o_proj / fc_out / down_proj weights           | normal(0, 0.02 / sqrt(2*n_layer)) |
        | biases                                        | 0                                 |
        | norm weights / biases                         | 1 / 0                             |

        The residual projections are scaled down because each block adds two of them to the residual stream:
        without it the stream's variance grows with depth.
        """
        for name, module in self.named_modules():
            self.init_module(name, module)
        self.tie_weights()  # the head was drawn above; with tied weights it must be the embedding again

    @torch.no_grad()
    def init_module(self, name: str, module: nn.Module) -> None:
        """Initialise one submodule's own parameters (`name` is its name in this model) by the table above.

        One module at a time, so a model sharded over processes can be initialised with the same random draws
        as in one process without ever holding all its parameters at once (`train/distributed.py`).
        """
        std = 0.02
        if isinstance(module, nn.Linear):
            is_resid = name.rsplit(".", 1)[-1] in RESIDUAL_PROJECTIONS
            resid_std = std / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=resid_std if is_resid else std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (nn.LayerNorm, RMSNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    # ---- forward ------------------------------------------------------------------------------------------------
    def forward(
        self,
        ids: torch.Tensor,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        reduction: str = "none",
    ) -> torch.Tensor:
        """ids (B, T) -> logits (B, T, V). See `hidden_states` for `cache` and `positions`.

        With `targets` (B, T) it returns their NLL instead (float32; IGNORE_INDEX = -100 targets count 0): per
        token (B, T), or with `reduction` "sum" / "mean" (over the valid targets) one number, which trains
        faster. Head and cross-entropy run chunk by chunk, so the (B, T, V) logits never exist
        (`model/loss.py`). A head that is not a plain linear layer (a LoRA adapter on it) takes the full logits.
        """
        h = self.hidden_states(ids, cache, positions)
        if targets is None:
            return self.lm_head(h)
        return self.token_nll(h, targets, reduction)

    def token_nll(self, hidden: torch.Tensor, targets: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        """NLL of `targets` (...) from final hidden states (..., C), through the output head."""
        head = self.lm_head
        if type(head) in (Linear, nn.Linear):
            return linear_cross_entropy(hidden, head.weight, targets, head.bias, reduction=reduction)
        if isinstance(head, Int8Linear):  # dequantized once per call: still no (..., V) logits
            return linear_cross_entropy(hidden, head.dequantize(), targets, head.bias, reduction=reduction)
        return full_cross_entropy(head(hidden), targets, reduction=reduction)

    def hidden_states(
        self,
        ids: torch.Tensor,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        attend_len: int | None = None,
    ) -> torch.Tensor:
        """ids (B, T) -> final-norm hidden states (B, T, C).

        `positions` (B, T) are the tokens' absolute positions (default 0..T-1 in every row). With a `cache`, keys
        and values are written at those positions and each query attends to cache slots <= its own position.
        `attend_len` is how many cache slots the queries look over: by default up to the furthest position
        (the fewest), the cache's whole length for shapes that do not depend on the positions (a compiled
        decode step); the slots beyond a query's position are masked either way.
        """
        B, T = ids.shape
        mask = None  # None: plain causal attention over the T tokens (training's fast path)
        if positions is None:
            positions = torch.arange(T, device=ids.device).expand(B, T)
            if cache is not None:
                mask = _slot_mask(positions, attend_len)
        else:
            mask = _slot_mask(positions, attend_len) if cache is not None else _document_mask(positions)
        x, rope = self.embed(ids, positions)
        for block, layer_mask in zip(self.blocks, self._layer_masks(mask, positions, cache)):
            x = block(x, rope, layer_mask, cache, positions)
        return self.norm(x)

    def _layer_masks(
        self, dense: torch.Tensor | None, positions: torch.Tensor, cache: KVCache | None
    ) -> Iterable[torch.Tensor | None]:
        """Each layer's mask: `dense` (the causal / document / cache-slot mask above) for dense layers, and one
        mask per other pattern (and ring) that narrows it (`patterns.py`), built once per forward."""
        if self.all_dense:
            return itertools.repeat(dense)
        made: dict[tuple[str, int | None], torch.Tensor | None] = {}
        masks = []
        for i, kind in enumerate(self.config.layer_patterns):
            ring = cache.ring[i] if cache is not None else None
            if (kind, ring) not in made:  # dense layers never have a ring
                made[kind, ring] = dense if kind == "dense" else self._pattern_mask(kind, i, dense, positions, cache)
            masks.append(made[kind, ring])
        return masks

    def _pattern_mask(
        self, kind: str, layer: int, dense: torch.Tensor | None, positions: torch.Tensor, cache: KVCache | None
    ) -> torch.Tensor | None:
        if cache is not None:  # over the keys the cache returns to this layer, which it maps to positions
            assert dense is not None
            keys = cache.key_positions(layer, positions, dense.shape[-1])  # (B, S)
            return patterns.visible(kind, positions[:, :, None], keys[:, None, :], self.config)[:, None]
        if dense is None:  # training: 0..T-1 in every row
            return patterns.causal_mask(kind, positions.shape[1], self.config, positions.device)
        # packed documents: positions restart per document, so the pattern is per document too
        return dense & patterns.visible(kind, positions[:, :, None], positions[:, None, :], self.config)[:, None]

    def _embed_learned(self, ids: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, Rope]:
        assert self.pos_emb is not None
        return self.drop(self.tok_emb(ids) + self.pos_emb(positions)), None  # (B, T, C)

    def _embed_rope(self, ids: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, Rope]:
        x = self.drop(self.tok_emb(ids))  # (B, T, C)
        # inv_freq is a few dozen numbers: computed per forward, so there is no buffer to materialise after a
        # meta-device build and nothing positional to store in a checkpoint.
        inv_freq = rope_inv_freq(self.config, device=ids.device)
        # the tables in the compute dtype: under autocast q and k are bf16/fp16, and fp32 tables would promote
        # them back to fp32 (twice the memory, and SDPA then gets mixed dtypes, which rules out flash attention)
        kind = ids.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        return x, rope_cos_sin(inv_freq, positions, dtype)

    # ---- sizes ----------------------------------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights once); `non_embedding` leaves out the token and position tables."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel() + (self.pos_emb.weight.numel() if self.pos_emb is not None else 0)
        return n


def _document_mask(positions: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T): query i may see token j iff j <= i and both are in the same document (no cache).

    A document starts wherever the position does not increase (packed rows restart at 0 per example), so
    packed examples never attend to each other; one increasing run of positions is plain causal attention.
    """
    B, T = positions.shape
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[:, 1:] = positions[:, 1:] <= positions[:, :-1]
    doc = starts.cumsum(dim=1)  # (B, T): document index of each token
    causal = torch.ones(T, T, dtype=torch.bool, device=positions.device).tril()
    return (causal & (doc[:, :, None] == doc[:, None, :]))[:, None]


def _slot_mask(positions: torch.Tensor, S: int | None = None) -> torch.Tensor:
    """(B, 1, T, S): query i may see cache slot s iff s <= position[i]; S defaults to the furthest position + 1."""
    if S is None:
        S = int(positions.max()) + 1
    slots = torch.arange(S, device=positions.device)
    return (slots <= positions[:, :, None])[:, None]
