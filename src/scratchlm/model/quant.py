"""Weight-only int8 inference: each linear layer's weight as int8 with one scale per output channel.

    w[o, :] ~= scale[o] * q[o, :],   scale[o] = max_i |w[o, i]| / 127,   q = round(w / scale) in [-127, 127]

Activations stay in float (fp32 or bf16); only weights shrink, 4x against fp32. That is what decoding wants: a
decode step reads every weight once to produce one token per row, so at small batches it is bound by weight
bytes, not arithmetic. The product runs in `torch.ops.aten._weight_int8pack_mm` (the int8 weight-only kernel
PyTorch ships for CPU and CUDA, the one gpt-fast uses), which dequantizes inside the kernel; where a build lacks
it for a device or dtype, the weight is dequantized per call instead (same numbers, no speed-up).

Written here rather than through torchao: a dozen lines of rounding and one kernel call, no extra dependency,
and the same layer on CPU and CUDA. For inference only: a quantized model is not trained or saved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Int8Linear(nn.Module):
    """A frozen `nn.Linear` with int8 weights (out, in) and float scales (out,)."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self._kernel = True  # cleared the first time the fused kernel refuses a device or dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,); a zero row keeps a harmless scale
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        return cls(q, scale.to(linear.weight.dtype), bias)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The float weight these int8 values stand for, (out, in)."""
        dtype = dtype or self.scale.dtype
        return self.weight.to(dtype) * self.scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):  # as nn.Linear under autocast: compute in its dtype
            x = x.to(torch.get_autocast_dtype(x.device.type))
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        y = None
        if self._kernel:
            try:
                y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scale.to(x2.dtype))
            except (RuntimeError, NotImplementedError):  # this build has no kernel for the device or dtype
                self._kernel = False
        if y is None:
            y = F.linear(x2, self.dequantize(x2.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only"


def quantize_int8(model: nn.Module, head: bool = True) -> int:
    """Replace the model's linear layers (every block's projections, and the output head unless `head=False`)
    by `Int8Linear`, in place; returns how many. A tied head gets its own int8 copy (the embedding, a lookup,
    stays float). Call it on a loaded model in eval mode, after LoRA adapters are merged."""
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (head or name.rsplit(".", 1)[-1] != "lm_head")
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear.from_linear(module).to(module.weight.device))
    return len(targets)
