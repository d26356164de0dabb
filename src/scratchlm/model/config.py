"""`ModelConfig`: every shape and variant choice of the decoder, as plain typed fields.

GPT-2 and Llama are not two classes but two sets of field values (see `presets/model/*.yaml`):

| field        | GPT-2       | Llama            |
|--------------|-------------|------------------|
| norm         | layernorm   | rmsnorm          |
| mlp          | gelu        | swiglu           |
| positions    | learned     | rope             |
| bias         | true        | false            |
| n_kv_head    | = n_head    | < n_head (GQA)   |

Derived values (`head_dim`, ...) are properties, so they can never disagree with the fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from typing import Any

from scratchlm.dataclass_io import from_dict
from scratchlm.errors import ConfigError

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
POSITIONS = ("learned", "rope")
ATTN_IMPLS = ("manual", "sdpa")


@dataclass
class ModelConfig:
    """Shape and variant choices of a decoder-only Transformer (GPT-2 or Llama style)."""

    vocab_size: int = 50257
    """Rows of the token embedding (may exceed the tokenizer's vocabulary, e.g. padded to a multiple of 64)."""
    context_length: int = 1024
    """Longest sequence the model is trained on (size of the learned position table)."""
    n_layer: int = 12
    """Number of Transformer blocks."""
    n_head: int = 12
    """Attention (query) heads per block."""
    n_kv_head: int | None = None
    """Key/value heads (grouped-query attention); None means n_head (plain multi-head attention)."""
    d_model: int = 768
    """Width of the residual stream."""
    d_ff: int | None = None
    """Hidden width of the MLP; None means 4 * d_model."""
    norm: str = "layernorm"
    """layernorm (GPT-2) or rmsnorm (Llama)."""
    norm_eps: float = 1e-5
    """Epsilon inside the norms."""
    mlp: str = "gelu"
    """gelu (GPT-2: fc_in -> GELU(tanh) -> fc_out) or swiglu (Llama: down(silu(gate(x)) * up(x)))."""
    positions: str = "learned"
    """learned (absolute position table, GPT-2) or rope (rotary embeddings, Llama)."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    rope_scaling_factor: float | None = None
    """Llama-3 RoPE frequency scaling factor (e.g. 32.0 for Llama-3.2); None: no scaling."""
    rope_low_freq_factor: float = 1.0
    """Llama-3 RoPE scaling: low-frequency factor."""
    rope_high_freq_factor: float = 4.0
    """Llama-3 RoPE scaling: high-frequency factor."""
    rope_original_context_length: int = 8192
    """Llama-3 RoPE scaling: context length of the original (unscaled) model."""
    bias: bool = True
    """Biases in the linear layers and LayerNorms (GPT-2: true, Llama: false)."""
    dropout: float = 0.0
    """Dropout on embeddings, attention weights and residual branches (0 for pretraining at scale)."""
    tie_embeddings: bool = True
    """Share the token embedding matrix with the output head."""
    attn_impl: str = "sdpa"
    """manual (written out: QK^T, mask, softmax, V) or sdpa (torch's fused scaled_dot_product_attention)."""

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        for name in ("vocab_size", "context_length", "n_layer", "n_head", "n_kv_head", "d_model", "d_ff"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"model {name} must be a positive integer, got {getattr(self, name)!r}")
        for name, allowed in (("norm", NORMS), ("mlp", MLPS), ("positions", POSITIONS), ("attn_impl", ATTN_IMPLS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"model {name}={getattr(self, name)!r} is not supported; use one of {', '.join(allowed)}"
                )
        if self.d_model % self.n_head:
            raise ConfigError(
                f"model n_head={self.n_head} does not divide d_model={self.d_model}; "
                f"choose n_head among the divisors of d_model (e.g. {_nearest_divisor(self.d_model, self.n_head)})"
            )
        if self.n_kv_head > self.n_head or self.n_head % self.n_kv_head:
            raise ConfigError(
                f"model n_kv_head={self.n_kv_head} does not divide n_head={self.n_head}; "
                f"choose n_kv_head among the divisors of n_head (e.g. {_nearest_divisor(self.n_head, self.n_kv_head)})"
            )
        if self.positions == "rope" and self.head_dim % 2:
            raise ConfigError(
                f"rotary positions need an even head dim, got d_model/n_head = {self.head_dim}; change n_head"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model dropout must be in [0, 1), got {self.dropout}")
        if self.norm_eps <= 0:
            raise ConfigError(f"model norm_eps must be positive, got {self.norm_eps}")
        if self.rope_scaling_factor is not None and self.rope_scaling_factor < 1.0:
            raise ConfigError(f"model rope_scaling_factor must be >= 1 (or null), got {self.rope_scaling_factor}")

    # ---- derived values -------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        """D: width of one attention head."""
        return self.d_model // self.n_head

    @property
    def kv_dim(self) -> int:
        """Width of the key (and value) projection: H_kv * D."""
        assert self.n_kv_head is not None
        return self.n_kv_head * self.head_dim

    @property
    def n_rep(self) -> int:
        """Query heads sharing one key/value head (1 for plain multi-head attention)."""
        assert self.n_kv_head is not None
        return self.n_head // self.n_kv_head

    # ---- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """Read `presets/model/<name>.yaml` (then apply keyword overrides)."""
        data = load_preset_dict(name)
        data.update(overrides)
        return from_dict(cls, data, where=f"model preset {name!r}")

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def preset_names() -> list[str]:
    """Names of the model presets shipped with the package."""
    folder = resources.files("scratchlm") / "presets" / "model"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset_dict(name: str) -> dict[str, Any]:
    """The raw field values of a model preset (a YAML mapping)."""
    import yaml

    path = resources.files("scratchlm") / "presets" / "model" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown model preset {name!r}; known presets: {', '.join(preset_names())}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"model preset {name!r} is not a YAML mapping of ModelConfig fields")
    return data


def _nearest_divisor(n: int, near: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - near), d))
