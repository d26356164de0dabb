"""Linear layers' GEMMs through oneDNN on CPU fp32: a fast path beside `F.linear`, behind a switch.

Why: on CPU torch hands fp32 matmuls to MKL, which on AMD processors takes generic code paths; oneDNN picks its
kernels by instruction set. On the project's 2-core AMD EPYC machine it runs GPT-2's layers 1.5-2.5x faster at
every batch size (docs/model.md, Speed). Both are fp32 GEMMs: results agree to rounding (~1e-6 relative), not
bit for bit.

`linear(x, weight, bias)` is `F.linear` unless every cheap check below says the fast path is safe:
- the switch: `set_enabled(False)`, or `SCRATCHLM_ONEDNN=0` in the environment (read once, at first use);
- a one-time self-check at first use against `F.linear` (one warning, then `F.linear` for good, if they differ);
- plain CPU fp32 tensors only: tensor subclasses (DTensor, ...) own their dispatch and have no rule for the op;
- not under autocast or `torch.compile`, whose handling of `F.linear` they own;
- not under torch.func transforms (grad, vmap, jvp) or forward-mode AD (`forward_ad.dual_level`): the op has no
  batching rule and no forward-mode formula, and the autograd function no functorch support.
Double backward is exact: when a graph of the backward is being built (`create_graph=True`), the backward is
written with differentiable ops (this `linear` again), so second derivatives equal `F.linear`'s.

This module knows nothing of models or configs.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter
from torch.utils._python_dispatch import _disable_current_modes

from scratchlm.errors import ConfigError

# oneDNN ships inside x86 and aarch64 builds of torch; its linear op is the one `torch.compile` emits on CPU.
AVAILABLE: bool = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
ENV_VAR = "SCRATCHLM_ONEDNN"

_PLAIN = (torch.Tensor, nn.Parameter)  # exact types: any subclass (DTensor, ...) takes F.linear
_switch: bool | None = None  # set_enabled's value; None: read ENV_VAR at first use
_works: bool | None = None  # the self-check's verdict; None: not run yet
_fast: bool | None = None  # _switch and _works, cached for the hot path; None: resolve at next call


def set_enabled(enabled: bool) -> None:
    """Turn the oneDNN path on or off for the whole process (overrides SCRATCHLM_ONEDNN); a failed self-check
    keeps it off."""
    global _switch, _fast
    _switch, _fast = bool(enabled), None


def is_enabled() -> bool:
    """Whether `linear` may take the oneDNN path: available, switched on, and its self-check passed."""
    return _fast if _fast is not None else _resolve()


def takes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether `linear(x, weight, bias)` runs on oneDNN here and now (else it is `F.linear`)."""
    return (
        x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and type(x) in _PLAIN
        and type(weight) in _PLAIN
        and (bias is None or (type(bias) in _PLAIN and bias.dtype == torch.float32))
        and not torch.compiler.is_compiling()  # before _resolve: a trace must not run the self-check
        and not torch._C._are_functorch_transforms_active()
        and forward_ad._current_level < 0  # no dual_level: the op has no forward-mode formula (tangents lost)
        and not torch.is_autocast_enabled("cpu")
        and (_fast if _fast is not None else _resolve())
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias, as `F.linear`; on CPU in fp32 through oneDNN's GEMM, and so are the gradients (the
    weight's through BLAS's `mm` unless a graph of the backward is being built: see `_OneDNNLinear`)."""
    if not takes(x, weight, bias):
        return F.linear(x, weight, bias)
    tracked = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    if tracked and torch.is_grad_enabled():
        return _OneDNNLinear.apply(x, weight, bias)
    return _gemm(x, weight, bias)


def _gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """oneDNN's x @ weight.T + bias for x (..., in), weight (out, in) of any strides; no autograd."""
    # oneDNN has no primitive for empty products (e.g. the grad_W of 0 rows)
    if x.numel() == 0 or weight.numel() == 0:
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
        # Grad mode is on inside backward only when its graph is being built (create_graph=True): then each
        # product is `linear` again, differentiable, so second derivatives are exact; else the bare GEMM.
        mm = linear if torch.is_grad_enabled() else _gemm
        grad_x = grad_w = grad_b = None
        g = grad_y.reshape(-1, grad_y.shape[-1])  # (M, out)
        if ctx.needs_input_grad[0]:
            grad_x = mm(grad_y, weight.t(), None)  # (..., out) @ W = (..., in)
        if ctx.needs_input_grad[1]:
            x2 = x.reshape(-1, x.shape[-1])
            # (out, M) @ (M, in) = (out, in): both operands transposed, which BLAS reads in place and oneDNN
            # copies first (measured 5-10% slower at GPT-2's shapes), so BLAS's mm unless a graph is being built
            grad_w = mm(g.t(), x2.t(), None) if torch.is_grad_enabled() else torch.mm(g.t(), x2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


def _resolve() -> bool:
    """Read the switch (once) and run the self-check (once); cache the verdict for the hot path."""
    global _switch, _works, _fast
    if _switch is None:
        _switch = _env_switch()
    if _switch and _works is None and AVAILABLE:
        _works = _self_check()
    _fast = bool(AVAILABLE and _switch and _works)
    return _fast


def _env_switch() -> bool:
    value = os.environ.get(ENV_VAR, "1").strip().lower()
    if value in ("1", "on", "true", "yes", ""):
        return True
    if value in ("0", "off", "false", "no"):
        return False
    raise ConfigError(
        f"{ENV_VAR}={value!r} is not a switch; set it to 1 (oneDNN linear layers) or 0 (F.linear)"
    )


def _self_check() -> bool:
    """oneDNN's products on a small fixed problem equal `F.linear`'s (forward and the two gradient shapes).

    Runs outside any active dispatch mode (a FlopCounterMode would count it) and on explicit CPU tensors.
    """
    try:
        with _disable_current_modes(), torch.no_grad():
            g = torch.Generator(device="cpu").manual_seed(0)
            x = torch.randn(3, 5, 33, generator=g, device="cpu", dtype=torch.float32)
            w = torch.randn(17, 33, generator=g, device="cpu", dtype=torch.float32)
            b = torch.randn(17, generator=g, device="cpu", dtype=torch.float32)
            y = F.linear(x, w, b)  # (3, 5, 17)
            y2, x2 = y.reshape(-1, 17), x.reshape(-1, 33)
            pairs = [
                (_gemm(x, w, b), y),  # forward, 3-d input, bias
                (_gemm(x[:, -1], w, None), F.linear(x[:, -1], w)),  # strided rows, no bias
                (_gemm(y, w.t(), None), y @ w),  # grad_x's layout: a transposed weight
                (_gemm(y2.t(), x2.t(), None), y2.t() @ x2),  # grad_w's layout: both operands transposed
            ]
            ok = all(torch.allclose(got, want, rtol=1e-4, atol=1e-4) for got, want in pairs)
    except RuntimeError as e:  # a build whose op refuses this CPU
        ok, why = False, f"raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    else:
        why = "gave results that differ from F.linear"
    if not ok:
        warnings.warn(
            f"scratchlm: oneDNN linear {why}; using F.linear for this process (set {ENV_VAR}=0 to skip the check)",
            RuntimeWarning,
            stacklevel=3,
        )
    return ok


if AVAILABLE and torch.ops.mkldnn._linear_pointwise not in flop_counter.flop_registry:

    @flop_counter.register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def _onednn_linear_flops(x_shape: tuple, w_shape: tuple, *args: object, **kwargs: object) -> int:
        """So that `FlopCounterMode` counts this GEMM as it counts `F.linear`'s (the sizing tests rely on it)."""
        return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]
