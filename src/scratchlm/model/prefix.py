"""Prefix tuning (Li & Liang 2021) and prompt tuning (Lester et al. 2021): P learned slots in front of every
sequence, the base model frozen. Written beside LoRA (`lora.py`).

    prefix tuning   every layer's attention gets P learned key/value pairs before position 0:
                        K = [K_prefix ; K_tokens]   V = [V_prefix ; V_tokens]   (per layer, per KV head)
    prompt tuning   P learned input embeddings before position 0 ("soft tokens"); nothing else is learned

Decisions:
- One mechanism for both at inference. The soft tokens of prompt tuning come first, and causal attention lets them
  see only each other, so their keys/values at every layer depend on nothing but the soft prompt and the frozen
  base. `record_kv` runs the soft prompt through the blocks once and records each layer's keys/values; the text
  then attends to those as a prefix. That is exactly what prepending the soft tokens to every row computes, at
  P tokens per forward instead of B x P, and the loader folds it once into a fixed prefix (`fold`).
- The prefix lives outside the KV cache and the positions. Each attention layer calls its `prefix` hook on the
  keys, values and mask it is about to attend over (after the cache update) and gets P slots prepended. Cache slot
  p still holds position p, so prefill, incremental decoding, right-padded batches, continuous batching and the
  compiled decode step work unchanged: every row of every cache is read as [prefix ; its own slots].
- Masks: every query sees every prefix slot (P True columns before the mask it had; the plain causal fast path,
  mask None, gets an explicit causal mask, since SDPA's `is_causal` aligns top-left on non-square scores).
- Positions: the prefix has none. Real tokens keep positions 0..T-1 (the whole context stays for the text).
  With learned (GPT-2) positions, prefix keys/values are used as given and soft tokens get no position
  embedding (a learned vector absorbs any fixed one). With RoPE, prefix keys are stored as used, never rotated
  at attention time (as HF PEFT's past_key_values); soft tokens are run at positions -P..-1, so their relative
  distance to the text is exactly that of prepended tokens (RoPE depends only on differences).
- GQA: prefix keys/values have the model's n_kv_head heads; both attention kernels share them like any keys.
- Initialisation from real tokens (Li & Liang, Lester et al.): the soft prompt starts as the embeddings of P
  random vocabulary tokens, a direct prefix as those tokens' keys/values. A random prefix of the wrong scale
  slows training; real activations start in the range the base expects.
- Reparameterisation (`reparam` H > 0, prefix tuning only): prefix = MLP(E), E (P, C), MLP C -> H -> tanh ->
  n_layer * 2 * H_kv * D, shared by all layers (Li & Liang's, and PEFT's `prefix_projection`); it trains more
  stably. `fold` computes the prefix once and drops E and the MLP; the adapter file holds only the folded prefix.

This module knows nothing of checkpoints or training: they call `attach_prefix`, `saved_state`, `load_prefix`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from scratchlm.errors import ConfigError, ScratchlmError
from scratchlm.model.layers import rope_cos_sin, rope_inv_freq

KINDS = ("prefix", "prompt")


@dataclass
class PrefixConfig:
    """Prefix/prompt tuning: how many slots, and (prefix tuning) the reparameterisation MLP."""

    length: int = 20
    """P: prefix slots (prefix tuning: key/value pairs per layer; prompt tuning: soft input tokens)."""
    reparam: int = 0
    """Prefix tuning: hidden width of the reparameterisation MLP used while training (0: learn the prefix directly)."""

    def __post_init__(self) -> None:
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 1:
            raise ConfigError(f"--prefix-length must be at least 1, got {self.length!r}; e.g. --prefix-length 20")
        if isinstance(self.reparam, bool) or not isinstance(self.reparam, int) or self.reparam < 0:
            raise ConfigError(f"--prefix.reparam must be 0 (off) or a hidden width such as 512, got {self.reparam!r}")


class Prefix(nn.Module):
    """Base of the prefix modules: each layer's prefix keys/values, and the hook attention calls."""

    kind = "prefix"

    def __init__(self, model: nn.Module, length: int) -> None:
        super().__init__()
        c = model.config
        self.length, self.n_layer, self.n_kv_head, self.head_dim = length, c.n_layer, c.n_kv_head, c.head_dim
        # a back-reference, not a submodule: the prefix is itself registered inside the model (`model.prefix`)
        self.__dict__["model"] = model

    def layer_kv(self, layer: int) -> tuple[Tensor, Tensor]:
        """Prefix keys and values of one layer, (H_kv, P, D) each."""
        raise NotImplementedError

    def extend(self, layer: int, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """The attention hook: k, v (B, H_kv, S, D) -> (B, H_kv, P + S, D); mask (B|1, 1, T, S) or None (plain
        causal, T == S) -> (.., T, P + S) with every prefix slot visible."""
        B, _, S, _ = k.shape
        pk, pv = self.layer_kv(layer)
        k = torch.cat([pk.to(k.dtype).expand(B, -1, -1, -1), k], dim=2)  # (B, H_kv, P + S, D)
        v = torch.cat([pv.to(v.dtype).expand(B, -1, -1, -1), v], dim=2)
        if mask is None:
            mask = torch.ones(S, S, dtype=torch.bool, device=k.device).tril()  # (T, S): query t sees keys 0..t
        seen = torch.ones(*mask.shape[:-1], self.length, dtype=torch.bool, device=mask.device)
        return k, v, torch.cat([seen, mask], dim=-1)

    def fold(self) -> PrefixKV:
        """The same prefix as fixed keys/values (no MLP, no record pass), for inference and the adapter file."""
        with torch.no_grad():
            key, value = (torch.stack(t) for t in zip(*(self.layer_kv(i) for i in range(self.n_layer))))
        folded = PrefixKV(self.model, self.length)
        folded.key.data, folded.value.data = key.detach().clone(), value.detach().clone()
        return folded.requires_grad_(False)

    def saved_state(self) -> dict[str, Tensor]:
        """What the adapter file holds (keys without the `prefix.` of the model's state dict)."""
        return {k: t.detach() for k, t in self.fold().state_dict().items()}

    def training_state(self) -> dict[str, Tensor]:
        """Further tensors a resumed run needs (the reparameterisation); none when `saved_state` is all of it."""
        return {}

    def load(self, state: dict[str, Tensor]) -> None:
        """Fill this prefix from its own state dict (`saved_state`, or `training_state` when that is not empty);
        key or shape mismatches are user errors."""
        own = self.state_dict()
        if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
            found = {k: tuple(t.shape) for k, t in state.items()}
            want = {k: tuple(t.shape) for k, t in own.items()}
            raise ScratchlmError(
                f"the {self.kind} tensors {found} do not fit this model ({want}); "
                "use the base checkpoint, --peft and --prefix-length they were trained with"
            )
        self.load_state_dict({k: t.to(own[k].dtype) for k, t in state.items()})


class PrefixKV(Prefix):
    """Prefix tuning, learned directly: `key`, `value` (n_layer, H_kv, P, D)."""

    def __init__(self, model: nn.Module, length: int) -> None:
        super().__init__(model, length)
        w = model.tok_emb.weight
        shape = (self.n_layer, self.n_kv_head, length, self.head_dim)
        self.key = nn.Parameter(torch.zeros(shape, device=w.device, dtype=w.dtype))
        self.value = nn.Parameter(torch.zeros(shape, device=w.device, dtype=w.dtype))

    def init_from_tokens(self, ids: Tensor) -> None:
        with torch.no_grad():
            kv = record_kv(self.model, self.model.tok_emb(ids)[None])
            self.key.copy_(torch.stack([k[0] for k, _ in kv]))
            self.value.copy_(torch.stack([v[0] for _, v in kv]))

    def layer_kv(self, layer: int) -> tuple[Tensor, Tensor]:
        return self.key[layer], self.value[layer]

    def fold(self) -> PrefixKV:
        return self


class PrefixMLP(Prefix):
    """Prefix tuning, reparameterised: the prefix is MLP(E), E (P, C), for training; `fold` drops both."""

    def __init__(self, model: nn.Module, length: int, hidden: int) -> None:
        super().__init__(model, length)
        w = model.tok_emb.weight
        C, kv_dim = model.config.d_model, self.n_kv_head * self.head_dim
        self.embedding = nn.Parameter(torch.zeros(length, C, device=w.device, dtype=w.dtype))
        self.mlp = nn.Sequential(
            nn.Linear(C, hidden, device=w.device, dtype=w.dtype),
            nn.Tanh(),
            nn.Linear(hidden, self.n_layer * 2 * kv_dim, device=w.device, dtype=w.dtype),
        )

    def init_from_tokens(self, ids: Tensor) -> None:
        with torch.no_grad():
            self.embedding.copy_(self.model.tok_emb(ids))
            for layer in (self.mlp[0], self.mlp[2]):  # torch's default Linear init, here explicit (meta builds)
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
                nn.init.uniform_(layer.bias, -1 / math.sqrt(layer.in_features), 1 / math.sqrt(layer.in_features))

    def layer_kv(self, layer: int) -> tuple[Tensor, Tensor]:
        # only this layer's rows of the output projection: n_layer calls cost one full MLP in all
        P, H_kv, D = self.length, self.n_kv_head, self.head_dim
        h = self.mlp[1](self.mlp[0](self.embedding))  # (P, hidden)
        out = self.mlp[2]
        rows = slice(layer * 2 * H_kv * D, (layer + 1) * 2 * H_kv * D)
        kv = nn.functional.linear(h, out.weight[rows], out.bias[rows])  # (P, 2 * H_kv * D)
        k, v = kv.view(P, 2, H_kv, D).permute(1, 2, 0, 3)  # (2, H_kv, P, D) -> 2 x (H_kv, P, D)
        return k, v

    def training_state(self) -> dict[str, Tensor]:
        return {k: t.detach() for k, t in self.state_dict().items()}


class PromptPrefix(Prefix):
    """Prompt tuning: `embedding` (P, C), soft input tokens; their keys/values come from `record_kv`."""

    kind = "prompt"

    def __init__(self, model: nn.Module, length: int) -> None:
        super().__init__(model, length)
        w = model.tok_emb.weight
        self.embedding = nn.Parameter(torch.zeros(length, model.config.d_model, device=w.device, dtype=w.dtype))
        self._kv: list[tuple[Tensor, Tensor]] = []

    def init_from_tokens(self, ids: Tensor) -> None:
        with torch.no_grad():
            self.embedding.copy_(self.model.tok_emb(ids))

    def layer_kv(self, layer: int) -> tuple[Tensor, Tensor]:
        # Layer 0 runs first in every forward: it records the soft prompt's keys/values of all layers, the
        # others reuse them (so one forward makes one record pass, and gradients reach the embedding through it).
        if layer == 0 or not self._kv:
            self._kv = [(k[0], v[0]) for k, v in record_kv(self.model, self.embedding[None])]
        return self._kv[layer]

    def saved_state(self) -> dict[str, Tensor]:
        return {"embedding": self.embedding.detach()}


def record_kv(model: nn.Module, x: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Run embeddings x (1, P, C) through the blocks as the first P tokens, with no prefix of their own, and
    return every layer's keys and values, (1, H_kv, P, D) each (RoPE: at positions -P..-1; learned: none)."""
    P = x.shape[1]
    rope = None
    if model.config.positions == "rope":
        kind = x.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        positions = torch.arange(-P, 0, device=x.device)[None]  # (1, P)
        rope = rope_cos_sin(rope_inv_freq(model.config, device=x.device), positions, dtype)
    recorded: list[tuple[Tensor, Tensor]] = []

    def record(layer: int, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        recorded.append((k, v))
        return k, v, mask

    hooks = [block.attn.prefix for block in model.blocks]
    try:
        for block in model.blocks:
            block.attn.prefix = record
        x = model.drop(x)
        for block in model.blocks[:-1]:
            x = block(x, rope)  # plain causal over the soft tokens
        last = model.blocks[-1]
        last.attn(last.norm1(x), rope)  # the last layer's keys/values are all that is needed from it
    finally:
        for block, hook in zip(model.blocks, hooks):
            block.attn.prefix = hook
    return recorded


def attach_prefix(model: nn.Module, kind: str, config: PrefixConfig, freeze: bool = True,
                  init: bool = True) -> Prefix:
    """Add a prefix of `kind` ("prefix" or "prompt") to a GPT as `model.prefix` and hook every attention layer.

    With `freeze` every base parameter stops requiring gradients. `init` starts it from P random vocabulary
    tokens (global RNG); without it the prefix is zeros, to be filled by `load_prefix`.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown prefix kind {kind!r}; use one of {', '.join(KINDS)}")
    context = model.config.context_length
    if config.length > context:
        raise ScratchlmError(
            f"--prefix-length {config.length} is longer than the model's context ({context} tokens); "
            f"use at most {context}"
        )
    if kind == "prompt" and config.reparam:
        raise ConfigError("--prefix.reparam is for --peft prefix; prompt tuning learns the embeddings directly")
    if getattr(model, "prefix", None) is not None:
        raise ScratchlmError("this model already has a prefix; start from its base checkpoint instead")
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    prefix: Prefix
    if kind == "prompt":
        prefix = PromptPrefix(model, config.length)
    elif config.reparam:
        prefix = PrefixMLP(model, config.length, config.reparam)
    else:
        prefix = PrefixKV(model, config.length)
    if init and model.tok_emb.weight.device.type != "meta":
        ids = torch.randint(model.config.vocab_size, (config.length,), device=model.tok_emb.weight.device)
        prefix.init_from_tokens(ids)  # type: ignore[attr-defined]
    _hook(model, prefix)
    return prefix


def _hook(model: nn.Module, prefix: Prefix) -> None:
    model.prefix = prefix  # registered: its tensors are the model's `prefix.*` parameters
    for block in model.blocks:
        block.attn.prefix = prefix.extend


def fold_prefix(model: nn.Module) -> nn.Module:
    """Replace the model's prefix by fixed keys/values (prompt and reparameterised prefixes); in place."""
    prefix = getattr(model, "prefix", None)
    if prefix is not None:
        _hook(model, prefix.fold())
    return model


def load_prefix(model: nn.Module, kind: str, length: int, state: dict[str, Tensor]) -> Prefix:
    """Attach a prefix to `model` from an adapter file's `state` (`saved_state`: fixed keys/values, or a soft
    prompt's embeddings)."""
    prefix = attach_prefix(model, kind, PrefixConfig(length), freeze=False, init=False)
    prefix.load(state)
    return prefix
