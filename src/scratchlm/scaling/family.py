"""The model family of a scaling sweep: every shape follows from one dial, the depth (as nanochat's `--depth`).

    d_model  = aspect * depth                     (width grows with depth: a fixed aspect ratio)
    n_head   = max(1, d_model // head_dim)        (heads of a fixed width; d_model is rounded to a multiple)
    d_ff     = 4 * d_model (gelu), or 8/3 * d_model rounded up to a multiple of 8 (swiglu: same weights)
    the rest = the base preset's fields (norm, MLP, positions, bias, ...), the data's vocabulary, `context_length`

So parameters grow about as 12 * aspect^2 * depth^3 and one integer names a size. A sweep compares members of
one family only: a loss law fitted across families with other aspect ratios mixes two effects.

N is every parameter, embeddings included, as Chinchilla counts (Kaplan counted only non-embedding ones; at
these widths with a small vocabulary the two differ by a few percent). Pure arithmetic through
`scratchlm.model.sizing`: nothing is built here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scratchlm.errors import ConfigError
from scratchlm.model.config import ModelConfig
from scratchlm.model.sizing import param_counts, train_flops_per_token


@dataclass
class FamilyConfig:
    """The model family: shapes tied to one dial, the depth."""

    base_preset: str = "shakespeare-char"
    """Model preset whose variant fields (norm, mlp, positions, bias, tied head) every member shares."""
    aspect: int = 32
    """d_model = aspect * depth."""
    head_dim: int = 32
    """Width of one attention head; n_head = d_model // head_dim."""
    context_length: int = 128
    """Tokens per training sequence, for every member."""
    max_depth: int = 32
    """Deepest member the planner considers."""

    def __post_init__(self) -> None:
        for name in ("aspect", "head_dim", "context_length", "max_depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"family {name} must be a positive integer, got {value!r}")
        if self.aspect % 2:
            raise ConfigError(
                f"family aspect must be even (rotary heads need an even width), got {self.aspect}"
            )


def member(family: FamilyConfig, depth: int, vocab_size: int) -> ModelConfig:
    """The ModelConfig of the family member with `depth` layers, for a vocabulary of `vocab_size` tokens."""
    if depth < 1:
        raise ConfigError(f"depth must be at least 1, got {depth}")
    d_model = family.aspect * depth
    n_head = max(1, d_model // family.head_dim)
    while d_model % n_head:  # d_model not a multiple of head_dim: the nearest head count that divides it
        n_head -= 1
    base = ModelConfig.from_preset(family.base_preset)
    d_ff = 4 * d_model if base.mlp == "gelu" else 8 * math.ceil(8 * d_model / 3 / 8)
    return base.replace(
        vocab_size=vocab_size,
        context_length=family.context_length,
        n_layer=depth,
        d_model=d_model,
        n_head=n_head,
        n_kv_head=n_head,
        d_ff=d_ff,
        dropout=0.0,
    )


def params(family: FamilyConfig, depth: int, vocab_size: int) -> int:
    """N of a member: every parameter once (a tied head counted once)."""
    return param_counts(member(family, depth, vocab_size)).total


def flops_per_token(family: FamilyConfig, depth: int, vocab_size: int, convention: str) -> float:
    """Training FLOPs per token: `6N` (Kaplan, Chinchilla) or `planner` (`model.sizing`: matmuls, the head and
    attention at the family's context, forward + backward)."""
    if convention == "6N":
        return 6.0 * params(family, depth, vocab_size)
    if convention == "planner":
        return float(train_flops_per_token(member(family, depth, vocab_size), family.context_length))
    raise ConfigError(f"flops convention {convention!r} is unknown; use 6N or planner")


def depth_for_params(family: FamilyConfig, n: float, vocab_size: int) -> int:
    """The member whose N is nearest `n` on a log scale."""
    depths = range(1, family.max_depth + 1)
    return min(depths, key=lambda d: abs(math.log(params(family, d, vocab_size) / n)))
