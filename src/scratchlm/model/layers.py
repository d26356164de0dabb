"""The small building blocks of a block: linear layers, norms, MLPs and rotary position embeddings.

Each variant is its own small module or pure function; `make_norm` / `make_mlp` pick one from the config once,
at construction, so no forward pass ever branches on a config field.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.model.config import ModelConfig
from scratchlm.model.onednn import linear  # also LoRA's: every product of the model goes through it


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, same state-dict keys) whose forward is `onednn.linear`: oneDNN GEMMs on CPU
    fp32, else `F.linear` (see `model/onednn.py` for when, and the switch that turns it off)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: LayerNorm without centring or bias (Llama)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 even under bf16 autocast (as Llama does): the mean of squares loses precision.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def make_norm(config: ModelConfig) -> nn.Module:
    """The block/final norm chosen by `config.norm`."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


class GeluMLP(nn.Module):
    """GPT-2's MLP: fc_in (C -> F), GELU with the tanh approximation (GPT-2's "gelu_new"), fc_out (F -> C)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        assert config.d_ff is not None
        self.fc_in = Linear(config.d_model, config.d_ff, bias=config.bias)
        self.fc_out = Linear(config.d_ff, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc_out(F.gelu(self.fc_in(x), approximate="tanh")))


class SwiGLU(nn.Module):
    """Llama's gated MLP: down_proj(silu(gate_proj(x)) * up_proj(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        assert config.d_ff is not None
        self.gate_proj = Linear(config.d_model, config.d_ff, bias=config.bias)
        self.up_proj = Linear(config.d_model, config.d_ff, bias=config.bias)
        self.down_proj = Linear(config.d_ff, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


def make_mlp(config: ModelConfig) -> nn.Module:
    """The MLP chosen by `config.mlp`."""
    return SwiGLU(config) if config.mlp == "swiglu" else GeluMLP(config)


# ---- rotary position embeddings ---------------------------------------------------------------------------------
#
# Convention: the head dimension is split into two halves (x1, x2) and each pair (x1[i], x2[i]) is rotated by the
# angle position * inv_freq[i]. This is the "rotate_half" layout of Hugging Face Llama checkpoints (whose q/k
# weights were permuted from Meta's interleaved pairs (x[2i], x[2i+1]) when converted), so HF weights load
# without any permutation.


def rope_inv_freq(config: ModelConfig, device: torch.device | None = None) -> torch.Tensor:
    """inv_freq[i] = theta^(-2i/D), (D/2,), with Llama-3's frequency scaling when configured (fp32)."""
    D = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, D, 2, dtype=torch.int64, device=device).float() / D))
    if config.rope_scaling_factor is None:
        return inv_freq
    # Llama 3.1+: long wavelengths are slowed down by `factor`, short ones kept, and the band between smoothly
    # interpolated, so the model extends its context without retraining the high-frequency (local) dimensions.
    factor, low, high = config.rope_scaling_factor, config.rope_low_freq_factor, config.rope_high_freq_factor
    old_len = config.rope_original_context_length
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(is_medium, smoothed, scaled)


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """cos and sin of the rotation angles for absolute `positions` (B, T): each (B, T, 1, D/2) in `dtype`."""
    angles = positions[:, :, None, None].float() * inv_freq  # (B, T, 1, D/2), computed in fp32
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x1[i], x2[i]) of the two head-dim halves of x (B, T, H, D) by its angle.

    cos, sin: (B, T, 1, D/2), broadcast over the heads."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, T, H, D/2) each
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
