"""`ModelConfig`: every shape and variant choice of the decoder, as plain typed fields.

GPT-2 and Llama are not two classes but two sets of field values (see `presets/model/*.yaml`):

| field        | GPT-2       | Llama            |
|--------------|-------------|------------------|
| norm         | layernorm   | rmsnorm          |
| mlp          | gelu        | swiglu           |
| positions    | learned     | rope             |
| bias         | true        | false            |
| n_kv_head    | = n_head    | < n_head (GQA)   |

Mistral is Llama's values plus `attn_pattern: [local]` and `attn_window` (sliding-window attention); the
patterns themselves are `patterns.py`.

Derived values (`head_dim`, ...) are properties, so they can never disagree with the fields. Two fields have
defaults derived from others (`n_kv_head` = n_head, `d_ff` = 4 * d_model); `replace` keeps them following their
source unless they were set to something else.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

from scratchlm.dataclass_io import from_dict
from scratchlm.errors import ConfigError

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
POSITIONS = ("learned", "rope")
ATTN_IMPLS = ("manual", "sdpa")
ATTN_PATTERNS = ("dense", "local", "strided", "fixed")  # see patterns.py


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
    attn_pattern: tuple[str, ...] = ("dense",)
    """Attention pattern per layer, repeated over the layers (its length divides n_layer): dense, local (the last
    attn_window positions), strided or fixed (Sparse Transformer, stride attn_stride); e.g. local local local dense."""
    attn_window: int | None = None
    """W for local layers: a query sees itself and the W - 1 positions before it (Mistral's sliding_window)."""
    attn_stride: int | None = None
    """S for strided/fixed layers: strided sees the last S positions and every S-th before; fixed sees its block
    of S and the last attn_summary positions of every earlier block."""
    attn_summary: int = 1
    """c for fixed layers: how many positions at the end of each block of attn_stride every later query sees."""

    def __post_init__(self) -> None:
        for name, derive in _DERIVED.items():
            if getattr(self, name) is None:
                setattr(self, name, derive(self))
        for name in SIZE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model {name} must be a positive integer, got {value!r}")
        for name in ("bias", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"model {name} must be true or false, got {getattr(self, name)!r}")
        for name in ("norm_eps", "rope_theta", "rope_low_freq_factor", "rope_high_freq_factor"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value < math.inf:
                raise ConfigError(f"model {name} must be a positive number, got {value!r}")
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
        self._check_attn_pattern()
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise ConfigError(f"model dropout must be in [0, 1), got {self.dropout!r}")
        if self.rope_scaling_factor is not None:
            if not _is_number(self.rope_scaling_factor) or not 1 <= self.rope_scaling_factor < math.inf:
                raise ConfigError(
                    f"model rope_scaling_factor must be >= 1 (or null), got {self.rope_scaling_factor!r}"
                )
            # the scaling divides by their difference
            if self.rope_high_freq_factor <= self.rope_low_freq_factor:
                raise ConfigError(
                    f"model rope_high_freq_factor={self.rope_high_freq_factor} must exceed "
                    f"rope_low_freq_factor={self.rope_low_freq_factor}"
                )

    def _check_attn_pattern(self) -> None:
        pattern = self.attn_pattern
        if isinstance(pattern, str):  # "local,local,local,dense" from a YAML file or a flag
            pattern = (pattern,)
        if isinstance(pattern, (list, tuple)) and all(isinstance(p, str) for p in pattern):
            pattern = self.attn_pattern = tuple(q.strip() for p in pattern for q in p.split(",") if q.strip())
        if not isinstance(pattern, tuple) or not pattern:
            raise ConfigError(f"model attn_pattern must be a list of {', '.join(ATTN_PATTERNS)}, got {pattern!r}")
        for kind in pattern:
            if kind not in ATTN_PATTERNS:
                raise ConfigError(
                    f"model attn_pattern entry {kind!r} is not supported; use one of {', '.join(ATTN_PATTERNS)}"
                )
        if self.n_layer % len(pattern):
            raise ConfigError(
                f"model attn_pattern has {len(pattern)} entries, which does not divide n_layer={self.n_layer}; "
                f"give one entry per layer or a cycle that repeats a whole number of times"
            )
        for name, kinds, what in (
            ("attn_window", ("local",), "local"),
            ("attn_stride", ("strided", "fixed"), "strided or fixed"),
        ):
            value = getattr(self, name)
            used = any(k in kinds for k in pattern)
            if value is None:
                if used:
                    raise ConfigError(f"model attn_pattern has {what} layers but {name} is not set; set {name}")
                continue
            if not used:
                raise ConfigError(
                    f"model {name}={value} is set but attn_pattern has no {what} layer; "
                    f"drop {name} or add {what} layers to attn_pattern"
                )
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model {name} must be a positive integer, got {value!r}")
            if value > self.context_length:
                raise ConfigError(
                    f"model {name}={value} is larger than context_length={self.context_length}; "
                    f"set {name} to at most the context (a window covering the context is dense attention)"
                )
        if self.attn_stride is not None and self.attn_stride < 2:
            raise ConfigError("model attn_stride must be at least 2 (a stride of 1 is dense attention)")
        if isinstance(self.attn_summary, bool) or not isinstance(self.attn_summary, int) or self.attn_summary < 1:
            raise ConfigError(f"model attn_summary must be a positive integer, got {self.attn_summary!r}")
        if "fixed" in pattern and self.attn_summary >= self.attn_stride:  # type: ignore[operator]
            raise ConfigError(
                f"model attn_summary={self.attn_summary} must be smaller than attn_stride={self.attn_stride} "
                "(summarising a whole block is dense attention)"
            )

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

    @property
    def layer_patterns(self) -> tuple[str, ...]:
        """The attention pattern of each layer: `attn_pattern` repeated over n_layer."""
        return self.attn_pattern * (self.n_layer // len(self.attn_pattern))

    # ---- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """Read `presets/model/<name>.yaml`, then apply keyword overrides as `replace` does."""
        config = from_dict(cls, load_preset_dict(name), where=f"model preset {name!r}")
        return config.replace(**overrides) if overrides else config

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again).

        A field whose default is derived (`n_kv_head` = n_head, `d_ff` = 4 * d_model) and that still holds its
        derived value is derived again from the new fields unless `changes` names it: `replace(n_head=8)` of a
        multi-head model stays multi-head, `replace(d_model=1024)` of GPT-2 gets d_ff 4096. A value set to
        something else (a GQA n_kv_head, Llama's d_ff) is kept.
        """
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, derived in _DERIVED.items():
            if name not in changes and data[name] == derived(self):
                data[name] = None  # __post_init__ derives it from the new fields
        data.update(changes)
        return from_dict(ModelConfig, data, where="model config")


SIZE_FIELDS = (  # must be positive integers
    "vocab_size",
    "context_length",
    "n_layer",
    "n_head",
    "n_kv_head",
    "d_model",
    "d_ff",
    "rope_original_context_length",
)
_DERIVED = {  # fields whose None default __post_init__ derives from other fields, and the rule it uses
    "n_kv_head": lambda c: c.n_head,
    "d_ff": lambda c: 4 * c.d_model,
}


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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _nearest_divisor(n: int, near: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - near), d))
