"""The small building blocks of a block: linear layers, norms, MLPs and rotary position embeddings.

Each variant is its own small module or pure function; `make_norm` / `make_mlp` pick one from the config once,
at construction, so no forward pass ever branches on a config field.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter

from scratchlm.model.config import ModelConfig

# oneDNN ships inside x86 and aarch64 builds of torch; its linear op is the one `torch.compile` emits on CPU.
_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias, as `F.linear`; on CPU in fp32, forward and backward through oneDNN's GEMM.

    Why: on CPU torch hands fp32 matmuls to MKL, which on AMD processors takes generic code paths; oneDNN picks
    its kernels by instruction set. On the project's 2-core AMD EPYC machine it runs GPT-2's layers 1.5-2.5x
    faster at every batch size (the model guide's Speed section). Both are fp32 GEMMs: results agree to rounding
    (~1e-6 relative), not bit for bit. Autocast and `torch.compile` keep `F.linear`, whose handling they own.
    """
    if not (
        _ONEDNN_LINEAR
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    ):
        return F.linear(x, weight, bias)
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _OneDNNLinear.apply(x, weight, bias)
    return _gemm(x, weight, bias)


def _gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """oneDNN's x @ weight.T + bias for x (..., in), weight (out, in) of any strides; no autograd."""
    if x.numel() == 0 or weight.numel() == 0:  # oneDNN has no primitive for empty products (e.g. 0 rows' grad_W)
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """`linear` with its three gradients written out, each product a oneDNN GEMM (the op has no backward)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _gemm(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        g = grad_y.reshape(-1, grad_y.shape[-1])  # (M, out)
        if ctx.needs_input_grad[0]:
            grad_x = _gemm(grad_y, weight.t(), None)  # (..., out) @ W = (..., in)
        if ctx.needs_input_grad[1]:
            grad_w = _gemm(g.t(), x.reshape(-1, x.shape[-1]).t(), None)  # (out, M) @ (M, in) = (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


if _ONEDNN_LINEAR and torch.ops.mkldnn._linear_pointwise not in flop_counter.flop_registry:

    @flop_counter.register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def _onednn_linear_flops(x_shape: tuple, w_shape: tuple, *args: object, **kwargs: object) -> int:
        """So that `FlopCounterMode` counts this GEMM as it counts `F.linear`'s (the sizing tests rely on it)."""
        return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, same state-dict keys) whose forward is `linear` above."""

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
