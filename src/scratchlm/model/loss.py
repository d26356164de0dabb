"""The output head and cross-entropy computed together, chunk by chunk: the (tokens x vocab) logits never exist.

At GPT-2's vocabulary the logits of one micro-batch are the largest tensor of a small model's step (12 x 256 x
50,257 fp32 = 617 MB, and as much again for their gradient). `linear_cross_entropy(h, W, targets)` instead walks
the tokens in chunks:

    forward   per chunk: logits = h_c W^T (+ b); keep lse = logsumexp(logits) and nll = lse - logits[target]
    backward  per chunk: recompute logits; dlogits = (softmax - onehot(target)) * grad_nll
              grad_h_c = dlogits W,   grad_W += dlogits^T h_c,   grad_b += sum(dlogits)
              (grad_nll, one number per row, scales grad_h_c's rows and h_c's, not the chunk's logits)

so the memory is one chunk's logits (32 MB at GPT-2's vocabulary in fp32) whatever the batch, for one more head
GEMM in backward (the idea of Liger's fused linear cross-entropy and of Cut Cross-Entropy, Wijmans et al. 2024).
It returns the per-token NLL (0 at `ignore_index` targets) for the modes that weigh tokens themselves (DPO's
per-row sums, perplexity, multiple choice), or their sum or mean (pretraining, SFT's masked mean): a scalar
whose upstream gradient is one number, so forward already makes the gradient and backward only scales it
(no recomputation: three head GEMMs per step instead of four).

Precision: the products run in the compute dtype (autocast's, else the inputs'), the softmax in float32, as
`F.cross_entropy(F.linear(h, W, b).float(), ...)` does; the weight's gradient is accumulated in float32.
The full-logit path (`GPT.forward` without targets, then `F.cross_entropy`) stays the reference in the tests.
This module knows nothing of models or training.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from scratchlm.model import onednn

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 1 << 23  # fp32 logits per chunk on CPU: 8M floats, 32 MB (166 tokens at GPT-2's vocabulary)
# Measured on the 2-core CPU (benchmarks/train_step.py): with freed memory retained (scratchlm.hostmem, as the
# trainer sets it) 32 to 1,536 tokens per chunk ran within 5% in fp32; without it, buffers above glibc's largest
# mmap threshold (32 MB) are fresh pages at every allocation and the step spends its time in page faults.
LOW_PRECISION_CHUNK_ELEMENTS = 1 << 25  # bf16/fp16 on CPU: 667 tokens of GPT-2 (64 MB of bf16 products). The
# wider chunks run the head 1.15x as fast as 166 tokens on the 2-core CPU: each chunk's low-precision weight
# gradient is converted and added to the float32 sum, 6 times a step instead of 19
ROW_BLOCK_ELEMENTS = 1 << 20  # CPU: the softmax's passes go over blocks of 4 MB of float32 (20 rows of GPT-2),
# which the cache holds: in bf16 the README configuration's step ran 1.1x as fast as with passes over whole
# chunks (2-core CPU, 32 MB L3; blocks of 16 to 32 rows ran alike)
GPU_CHUNK_ELEMENTS = 1 << 28  # 1 GB of fp32 logits: a GPU's caching allocator reuses it; few, large chunks keep
# the GEMMs wide and the graph `torch.compile` unrolls short (16 x 1024 tokens of GPT-2 in 4 chunks)


def chunk_tokens(vocab_size: int, chunk_elements: int = CHUNK_ELEMENTS, device_type: str = "cpu",
                 dtype: torch.dtype = torch.float32) -> int:
    """Tokens per chunk: as many as keep one chunk's logits at `chunk_elements` (at least 16); in a lower
    compute precision on CPU at least LOW_PRECISION_CHUNK_ELEMENTS, on an accelerator GPU_CHUNK_ELEMENTS."""
    if device_type != "cpu":
        chunk_elements = max(chunk_elements, GPU_CHUNK_ELEMENTS)
    elif dtype != torch.float32:
        chunk_elements = max(chunk_elements, LOW_PRECISION_CHUNK_ELEMENTS)
    return max(16, chunk_elements // max(vocab_size, 1))


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    chunk: int | None = None,
    reduction: str = "none",
) -> torch.Tensor:
    """NLL (float32) of `targets` under logits `hidden @ weight.T + bias`: per token (`reduction="none"`, the
    shape of `targets`), or their "sum" or "mean" over the valid targets (a scalar, as `F.cross_entropy`).

    hidden (..., C), weight (V, C), targets (...) of token ids; `ignore_index` targets give 0 and no gradient.
    A scalar reduction is also faster to train through: its gradient is computed in the forward pass.
    """
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"reduction must be none, sum or mean, got {reduction!r}")
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} do not match")
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    n = chunk or chunk_tokens(weight.shape[0], device_type=device_type, dtype=dtype)
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_t = targets.reshape(-1)
    tracked = hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    # a scalar loss and a backward to follow: the gradient for a unit upstream gradient is made in forward
    precompute = reduction != "none" and torch.is_grad_enabled() and tracked
    nll = _LinearCrossEntropy.apply(flat_h, weight, bias, flat_t, ignore_index, n, dtype, precompute, reduction)
    return nll.view(targets.shape) if reduction == "none" else nll


LOG2E = 1.4426950408889634  # exp(x) = exp2(x * log2(e)): torch's CPU exp2 is 2.5x as fast as its exp (AVX512)


class _Chunks:
    """The head's per-chunk work and the buffers every chunk reuses.

    On CPU in fp32 oneDNN writes each chunk's logits into its own output (at these short, wide shapes it runs the
    logits 1.5x and grad_h 1.2x as fast as BLAS on the project's AMD CPU, benchmarks/train_step.py) and the
    softmax works in place there; otherwise the products go into `raw` (chunk, V) in the compute dtype. The
    softmax's passes (the max, a shift that also changes to base 2, exp2, the sum, the target's term) go over
    blocks of `rows` rows: a chunk is larger than the cache, a block is not, so only the first pass over a block
    goes to memory. In a lower precision a block is converted into the float32 `work` buffer and the gradient
    back into `raw`, for the products. The rows' scale of the gradient goes on the small side of each product
    instead of over the chunk."""

    def __init__(self, h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, chunk: int) -> None:
        n, V = min(chunk, h.shape[0]), w.shape[0]
        self.fast = onednn.takes(h[:1], w, bias)
        self.raw = None if self.fast else torch.empty(n, V, dtype=w.dtype, device=h.device)
        # blocks in the cache on CPU; an accelerator takes the chunk at once (few kernels), and so does a compiled
        # graph (its fused kernels make one pass; unrolled blocks would only lengthen the graph)
        eager_cpu = h.device.type == "cpu" and not torch.compiler.is_compiling()
        self.rows = max(1, ROW_BLOCK_ELEMENTS // V) if eager_cpu else n
        low = w.dtype != torch.float32
        self.work = torch.empty(min(self.rows, n), V, dtype=torch.float32, device=h.device) if low else None
        self.w, self.bias = w, bias.to(w.dtype) if bias is not None else None

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(n, V) logits in the compute dtype (rounded as autocast's `F.linear` rounds them)."""
        if self.fast:
            return onednn.linear(h, self.w, self.bias)
        out = self.raw[: h.shape[0]]
        if self.bias is None:
            return torch.mm(h, self.w.t(), out=out)
        return torch.addmm(self.bias, h, self.w.t(), out=out)

    def softmax(self, z: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
                lse: torch.Tensor | None = None, grad_b: torch.Tensor | None = None) -> tuple[torch.Tensor | None, ...]:
        """e = exp(z - shift) in float32 over the chunk's logits z (n, V), block by block: the shift is each row's
        max (forward; returns it as `top` and the rows' sums of e as `total`) or the given `lse` (backward: e is
        the softmax). With `weights` (n,), z becomes the gradient's direction in the compute dtype, in place:
        e - total * onehot(target) (forward) or e - onehot (backward), whose rows the returned `scale`
        (weights / total, or weights) turns into d loss / d logits; `grad_b` accumulates that gradient's column
        sums. Returns (top, total, scale); None for what was not asked."""
        n, dev, f32 = z.shape[0], z.device, torch.float32
        forward = lse is None
        top = torch.empty(n, dtype=f32, device=dev) if forward else None
        total = torch.empty(n, dtype=f32, device=dev) if forward else None
        scale = torch.empty(n, dtype=f32, device=dev) if weights is not None and forward else weights
        for r in range(0, n, self.rows):
            zr = z[r : r + self.rows]
            m = zr.shape[0]
            shift = zr.amax(dim=1).float() if forward else lse[r : r + m]
            e = zr if zr.dtype == f32 else self.work[:m].copy_(zr)  # a plain copy: a mixed-dtype op would
            # convert through a temporary
            torch.add((shift * -LOG2E)[:, None], e, alpha=LOG2E, out=e).exp2_()  # shift and base 2: one pass
            if forward:
                top[r : r + m] = shift
                sums = total[r : r + m] = e.sum(dim=1)
            if weights is None:
                continue
            e[torch.arange(m, device=dev), targets[r : r + m]] -= sums if forward else 1.0
            if forward:
                scale[r : r + m] = weights[r : r + m] / sums
            if grad_b is not None:
                grad_b += torch.mv(e.t(), scale[r : r + m])
            if e is not zr:
                zr.copy_(e)
        return top, total, scale

    def backward_into(self, grad_h: torch.Tensor | None, grad_w: torch.Tensor | None, g: torch.Tensor,
                      scale: torch.Tensor, h: torch.Tensor) -> None:
        """grad_h (n, C) = (g * scale[:, None]) @ w and grad_w (V, C) += (g * scale[:, None])^T @ h, with `g`
        (n, V) from `softmax`: the rows' scale goes on the two small sides of the products, not over the chunk."""
        if grad_h is not None:
            if self.fast:
                grad_h.copy_(onednn.linear(g, self.w.t()))
            else:
                torch.mm(g, self.w, out=grad_h)
            grad_h.mul_(scale[:, None])  # in float32, rounded once
        if grad_w is not None:
            _accumulate(grad_w, g, (h * scale[:, None]).to(h.dtype))


class _LinearCrossEntropy(torch.autograd.Function):
    """Products through oneDNN on CPU in fp32 (the logits and grad_h, see `_Chunks`), else `torch.mm`, and
    grad_W through BLAS's `addmm_` (it takes the transposes without copies and accumulates in place); the softmax
    as in-place passes over blocks of each chunk's rows (`_Chunks.softmax`).

    Per-token output: backward recomputes each chunk's logits (four head GEMMs per step). A scalar output (sum
    or mean): its upstream gradient is one number, so forward already turns each chunk into the gradient for a
    unit upstream gradient (grad_h rows, grad_W, grad_b), as Liger's fused linear cross-entropy does, and
    backward only multiplies: three head GEMMs per step, no recomputation, no data-dependent branch."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                ignore_index: int, chunk: int, dtype: torch.dtype, precompute: bool, reduction: str) -> torch.Tensor:
        N, V = h.shape[0], weight.shape[0]
        nll = torch.zeros(N, dtype=torch.float32, device=h.device)
        lse = torch.zeros(N, dtype=torch.float32, device=h.device)
        valid = targets != ignore_index
        safe = targets.clamp(min=0)
        unit = valid.float()  # the unit upstream gradient: 1 on valid tokens, 0 on ignored ones
        w = weight.to(dtype)
        if precompute:
            grad_h = torch.empty(h.shape, dtype=dtype, device=h.device)
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device)
            grad_b = torch.zeros(V, dtype=torch.float32, device=h.device) if bias is not None else None
        with torch.autocast(h.device.type, enabled=False):
            chunks = _Chunks(h, w, bias, chunk)
            for s in range(0, N, chunk):
                h_c, t_c = h[s : s + chunk].to(dtype), safe[s : s + chunk]
                z = chunks.logits(h_c)  # (n, V)
                picked = z.gather(1, t_c[:, None])[:, 0].float()
                # with a gradient to make: softmax - onehot = (e - total * onehot) / total, 0 on ignored rows
                top, total, scale = chunks.softmax(z, t_c, unit[s : s + chunk] if precompute else None,
                                                   grad_b=grad_b if precompute else None)
                lse_c = top + total.log()
                lse[s : s + chunk] = lse_c
                nll[s : s + chunk] = torch.where(valid[s : s + chunk], lse_c - picked, 0.0)
                if precompute:
                    chunks.backward_into(grad_h[s : s + chunk], grad_w, z, scale, h_c)
                del z  # before the next chunk's: its memory is reused, not a second block
        if precompute:
            ctx.save_for_backward(h, weight, bias, targets, lse, grad_h, grad_w, grad_b)
        else:
            ctx.save_for_backward(h, weight, bias, targets, lse)
        ctx.chunk, ctx.dtype, ctx.ignore_index, ctx.precompute = chunk, dtype, ignore_index, precompute
        ctx.reduction = reduction
        # mean: over the valid targets, as F.cross_entropy (an all-ignored batch gives 0 here, not nan)
        ctx.denominator = valid.sum().clamp(min=1) if reduction == "mean" else None
        if reduction == "none":
            return nll
        total = nll.sum()
        return total / ctx.denominator if reduction == "mean" else total

    @staticmethod
    def backward(ctx: Any, grad_nll: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, weight, bias, targets, lse, *pre = ctx.saved_tensors
        chunk, dtype = ctx.chunk, ctx.dtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        valid = targets != ctx.ignore_index
        grad_h = grad_w = grad_b = None
        upstream = grad_nll.float()
        if ctx.reduction != "none":  # one number for every token
            upstream = upstream / ctx.denominator if ctx.reduction == "mean" else upstream
            if ctx.precompute:
                unit_h, unit_w, unit_b = pre
                grad_h = unit_h * upstream.to(unit_h.dtype) if need_h else None
                grad_w = unit_w * upstream if need_w else None
                grad_b = unit_b * upstream if need_b and unit_b is not None else None
                need_h = need_w = need_b = False
            upstream = upstream.expand(targets.shape)
        scale = torch.where(valid, upstream, 0.0)  # (N,)
        if need_h or need_w or need_b:
            N, V = h.shape[0], weight.shape[0]
            safe = targets.clamp(min=0)
            w = weight.to(dtype)
            if need_h:
                grad_h = torch.empty(h.shape, dtype=dtype, device=h.device)
            if need_w:
                grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if need_b:
                grad_b = torch.zeros(V, dtype=torch.float32, device=weight.device)
            with torch.no_grad(), torch.autocast(h.device.type, enabled=False):
                chunks = _Chunks(h, w, bias, chunk)
                for s in range(0, N, chunk):
                    h_c, t_c = h[s : s + chunk].to(dtype), safe[s : s + chunk]
                    z = chunks.logits(h_c)  # recomputed: (n, V)
                    sc = scale[s : s + chunk]
                    chunks.softmax(z, t_c, sc, lse=lse[s : s + chunk], grad_b=grad_b)
                    chunks.backward_into(grad_h[s : s + chunk] if need_h else None, grad_w, z, sc, h_c)
                    del z  # before the next chunk's (see forward)
        return (
            grad_h.to(h.dtype) if grad_h is not None else None,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(bias.dtype) if grad_b is not None and bias is not None else None,
            None, None, None, None, None, None,
        )


def _accumulate(grad_w: torch.Tensor, g: torch.Tensor, h_c: torch.Tensor) -> None:
    """grad_w (V, C) fp32 += g^T (V, n) @ h_c (n, C)."""
    if g.dtype == torch.float32:
        grad_w.addmm_(g.t(), h_c)  # accumulated in place
    else:
        grad_w.add_(torch.mm(g.t(), h_c))  # converted as it is added


def full_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                       reduction: str = "none") -> torch.Tensor:
    """The reference: NLL from materialised logits (..., V) in float32, 0 at ignored targets; reductions as
    `linear_cross_entropy`'s."""
    nll = F.cross_entropy(logits.flatten(0, -2).float(), targets.reshape(-1), ignore_index=ignore_index,
                          reduction="none").view(targets.shape)
    if reduction == "none":
        return nll
    return nll.sum() / ((targets != ignore_index).sum().clamp(min=1) if reduction == "mean" else 1)
