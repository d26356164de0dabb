"""How big and how expensive a `ModelConfig` is, before building it: parameters, FLOPs, memory, KV cache.

Pure arithmetic on the config (no torch), plus `check_fits_in_memory`, which `GPT` runs before it allocates.
`tests/model/test_sizing.py` checks every formula against the built model: parameter counts exactly, FLOPs
against `torch.utils.flop_counter`, weight/gradient/AdamW bytes against the tensors, activation bytes against the
tensors autograd saves.

Conventions:
- FLOPs count multiply-adds as 2 and only matmuls (the rest is a few percent). Attention counts the full T x T
  score matrix at context T, the usual convention (PaLM, nanoGPT's MFU); causal kernels can skip half of it.
  Local and sparse layers count the keys their pattern shows a query, in the same convention (`patterns.py`).
  Training = forward + backward = 3 x forward (the backward computes gradients for inputs and weights).
- Precision `fp32`: everything in 4 bytes. `bf16` / `fp16` mean mixed precision as the training loop runs it:
  fp32 weights, gradients and AdamW moments, 16-bit activations; the KV cache is 16-bit.
- Activations are the tensors autograd keeps for the backward pass of forward + cross-entropy, for the `sdpa`
  path (the `manual` path also keeps the (B, H, T, T) attention probabilities of every layer). Activation
  checkpointing per block keeps each block's input and recomputes one block at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from scratchlm.errors import ConfigError
from scratchlm.model.config import ModelConfig
from scratchlm.model.patterns import keys_per_query

PRECISIONS = {"fp32": 4, "bf16": 2, "fp16": 2}  # bytes of an activation / KV-cache element
CHINCHILLA_TOKENS_PER_PARAM = 20


@dataclass
class ParamCounts:
    total: int
    """Every parameter once (a tied head is the embedding)."""
    embedding: int
    """Token (and learned position) tables."""
    per_layer: int
    matmul: int
    """Weights multiplied in the forward pass (the head included, even when tied): the FLOPs count."""

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding


def param_counts(config: ModelConfig) -> ParamCounts:
    C, F, V, L = config.d_model, config.d_ff, config.vocab_size, config.n_layer
    assert F is not None
    b = 1 if config.bias else 0
    norm = C * (2 if config.norm == "layernorm" and config.bias else 1)
    attn_w = C * C + 2 * C * config.kv_dim + C * C  # q, k, v, o
    attn_b = b * (C + 2 * config.kv_dim + C)
    mlp_w = (3 if config.mlp == "swiglu" else 2) * C * F
    mlp_b = b * ((2 * F if config.mlp == "swiglu" else F) + C)
    per_layer = attn_w + attn_b + mlp_w + mlp_b + 2 * norm
    embedding = V * C + (config.context_length * C if config.positions == "learned" else 0)
    head = 0 if config.tie_embeddings else V * C
    total = embedding + L * per_layer + norm + head
    matmul = L * (attn_w + mlp_w) + V * C
    return ParamCounts(total=total, embedding=embedding, per_layer=per_layer, matmul=matmul)


def forward_flops_per_token(config: ModelConfig, context: int) -> int:
    """Matmul FLOPs of one token's forward pass at sequence length `context`.

    A local / strided / fixed layer counts the keys its pattern lets a query see (`patterns.keys_per_query`):
    what a block-sparse kernel computes. The masked dense kernels here compute the dense figure."""
    keys = sum(keys_per_query(kind, context, config) for kind in config.layer_patterns)
    attention = 2 * 2 * keys * config.n_head * config.head_dim  # QK^T and PV
    return 2 * param_counts(config).matmul + round(attention)


def kv_cache_bytes(config: ModelConfig, tokens: int, element_bytes: int) -> int:
    """KV-cache bytes of one sequence of `tokens` tokens when decoding with a rolling cache: local layers hold
    at most attn_window tokens (`kv_cache.py`), the others every token."""
    per_layer_token = 2 * config.kv_dim * element_bytes  # keys and values
    held = sum(min(tokens, config.attn_window or tokens) if kind == "local" else tokens
               for kind in config.layer_patterns)  # fmt: skip
    return per_layer_token * held


def train_flops_per_token(config: ModelConfig, context: int) -> int:
    """Forward + backward: 3 x the forward (about 6 x parameters + attention)."""
    return 3 * forward_flops_per_token(config, context)


def activation_elements_per_token(config: ModelConfig, context: int, attn_impl: str = "sdpa") -> dict[str, int]:
    """Elements saved for backward per token: {"layer": one block, "head": final norm + the loss's
    logsumexp, "input": one block's input}. Dropout 0 (dropout adds a mask per dropout)."""
    C, F, H, KV = config.d_model, config.d_ff, config.n_head, config.kv_dim
    assert F is not None
    # LayerNorm keeps its input and output (+ mean and rstd); our RMSNorm also keeps the normalised x before
    # the gain (its input, x / rms, the gained output; + 1/rms).
    norm = 2 * C + 2 if config.norm == "layernorm" else 3 * C + 1
    if attn_impl == "sdpa":
        # q, k, v (after RoPE), the output (+ logsumexp per head). The CPU/GPU flash kernels lay the output out
        # as (B, T, H, D), so merging heads is a view and o_proj's input is that same tensor.
        attn = C + 2 * KV + C + H
    else:
        kv = 2 * (C if config.n_rep > 1 else KV)  # repeat_interleave makes full-width copies for GQA
        # q, k, v, softmax probabilities (H x T per query), the merged-heads copy of weights @ v (o_proj's input)
        attn = C + kv + H * context + C
    mlp = 4 * F if config.mlp == "swiglu" else 2 * F
    layer = 2 * norm + attn + mlp
    rope = config.head_dim if config.positions == "rope" else 0  # cos and sin, shared by all layers
    # final norm, and of the chunked loss (model/loss.py) its logsumexp and the gradient of the hidden state it
    # makes in forward (C) per token: the logits themselves are never kept
    head = norm + 1 + C + rope
    return {"layer": layer, "head": head, "input": C}


@dataclass
class Sizing:
    config: ModelConfig
    batch: int
    context: int
    precision: str
    params: ParamCounts
    forward_flops_per_token: int
    train_flops_per_token: int
    weights_bytes: int
    grads_bytes: int
    adamw_bytes: int
    activations_bytes: int
    activations_checkpointed_bytes: int
    kv_cache_bytes_per_token: int
    """Every layer's keys and values of one token (a dense model's cache grows by this per token)."""
    kv_cache_bytes_per_sequence: int
    """One context_length-token sequence's cache, local layers holding only their window."""

    @property
    def chinchilla_tokens(self) -> int:
        """Compute-optimal training tokens (Hoffmann et al. 2022): about 20 per parameter."""
        return CHINCHILLA_TOKENS_PER_PARAM * self.params.total

    @property
    def chinchilla_flops(self) -> int:
        return self.chinchilla_tokens * self.train_flops_per_token

    @property
    def train_bytes(self) -> int:
        """Weights + gradients + AdamW + activations (no checkpointing)."""
        return self.weights_bytes + self.grads_bytes + self.adamw_bytes + self.activations_bytes


def size(config: ModelConfig, batch: int = 1, context: int | None = None, precision: str = "fp32") -> Sizing:
    """All the figures of `scratchlm model info` for one config at batch x context."""
    context = context or config.context_length
    act_bytes = PRECISIONS[precision]
    params = param_counts(config)
    acts = activation_elements_per_token(config, context, config.attn_impl)
    tokens = batch * context
    loss_grad = 4 * config.vocab_size * config.d_model  # the head's fp32 gradient, made by the loss in forward
    full = tokens * (config.n_layer * acts["layer"] + acts["head"]) * act_bytes + loss_grad
    ckpt = tokens * (config.n_layer * acts["input"] + acts["layer"] + acts["head"]) * act_bytes + loss_grad
    return Sizing(
        config=config,
        batch=batch,
        context=context,
        precision=precision,
        params=params,
        forward_flops_per_token=forward_flops_per_token(config, context),
        train_flops_per_token=train_flops_per_token(config, context),
        weights_bytes=4 * params.total,  # fp32 master weights in every precision
        grads_bytes=4 * params.total,
        adamw_bytes=2 * 4 * params.total,  # exp_avg and exp_avg_sq
        activations_bytes=full,
        activations_checkpointed_bytes=ckpt,
        kv_cache_bytes_per_token=2 * config.n_layer * config.kv_dim * act_bytes,
        kv_cache_bytes_per_sequence=kv_cache_bytes(config, config.context_length, act_bytes),
    )


# ---- per rank, for a parallel layout ----------------------------------------------------------------------------


@dataclass
class RankMemory:
    """What one rank of a pipeline stage holds (every rank of a stage holds about the same)."""

    stage: int
    blocks: tuple[int, int]
    """Blocks [start, stop) of this stage."""
    params: int
    """Parameter elements this rank holds (its shards)."""
    weights_bytes: int
    grads_bytes: int
    adamw_bytes: int
    activations_bytes: int
    activations_checkpointed_bytes: int

    @property
    def train_bytes(self) -> int:
        return self.weights_bytes + self.grads_bytes + self.adamw_bytes + self.activations_bytes


def plan_layout_memory(
    config: ModelConfig,
    batch: int = 1,
    context: int | None = None,
    precision: str = "fp32",
    world_size: int = 1,
    parallel: str = "ddp",
    tp: int = 1,
    pp: int = 1,
    dp_shard: int | None = None,
    pp_schedule: str = "1f1b",
    pp_microbatches: int | None = None,
) -> list[RankMemory]:
    """Per-rank bytes of weights, gradients, AdamW state and activations for a `--parallel/--tp/--pp` layout of
    `world_size` processes, one entry per pipeline stage. `batch` is the micro-batch of one data-parallel rank.

    What the training loop does (`train/distributed.py`, `train/pipeline.py`):
    - tp: q/k/v/o and the MLP matrices (and the column-wise biases) are split over tp ranks; norms, the row-wise
      biases, the embedding and the head stay whole. Activations inside attention and the MLP split too.
    - pp: stage s holds its blocks, the first also the embedding, the last the final norm and head. In flight:
      GPipe keeps all of a batch's micro-batches' activations, 1F1B at most pp - s of them on stage s.
    - ddp: everything whole; zero1: AdamW state / dp; zero2 and fsdp: weights, gradients, AdamW / dp; hsdp:
      / --dp-shard. Shards are rounded up per tensor (FSDP pads the first dimension to a multiple of dp).
    """
    from math import ceil

    context = context or config.context_length
    if world_size % (tp * pp):
        raise ConfigError(f"the world size {world_size} is not --pp {pp} x data-parallel x --tp {tp}")
    dp = world_size // (tp * pp)
    shard = {"zero2": dp, "fsdp": dp, "hsdp": dp_shard or dp}.get(parallel, 1)
    C, F, V, L, KV = config.d_model, config.d_ff, config.vocab_size, config.n_layer, config.kv_dim
    assert F is not None
    b = 1 if config.bias else 0
    norm = C * (2 if config.norm == "layernorm" and config.bias else 1)
    n_in = 2 if config.mlp == "swiglu" else 1
    # (rows, columns) of each tensor of a block as this tp rank holds it: a shard's elements round up per tensor
    block = [(C // tp, C), (KV // tp, C), (KV // tp, C), (C, C // tp)]
    block += [(F // tp, C)] * n_in + [(C, F // tp)]
    block += [(C // tp, 1), (KV // tp, 1), (KV // tp, 1), (C, 1)] * b + [(F // tp, 1)] * (n_in * b) + [(C, 1)] * b
    block += [(norm, 1)] * 2
    first = [(V, C)] + ([(config.context_length, C)] if config.positions == "learned" else [])
    last = [(norm, 1)] + ([] if config.tie_embeddings and pp == 1 else [(V, C)])

    def elements(tensors: list[tuple[int, int]], over: int) -> int:
        return sum(ceil(rows / over) * cols for rows, cols in tensors)

    acts = activation_elements_per_token(config, context, config.attn_impl)
    norm_acts = 2 * (2 * C + 2 if config.norm == "layernorm" else 3 * C + 1)
    layer = norm_acts + (acts["layer"] - norm_acts) / tp  # attention and MLP internals split over tp
    tokens = batch * context
    act_bytes = PRECISIONS[precision]
    micro = pp_microbatches or pp
    bounds = stage_bounds(L, pp)
    out = []
    for s, (start, stop) in enumerate(bounds):
        tensors = (first if s == 0 else []) + block * (stop - start) + (last if s == pp - 1 else [])
        local = elements(tensors, 1)
        sharded = elements(tensors, shard)
        # micro-batches of this stage in flight at once, as a fraction of the batch (one process: the batch)
        in_flight = 1.0 if pp == 1 or pp_schedule == "gpipe" else min(micro, pp - s) / micro
        one = 1.0 if pp == 1 else 1.0 / micro  # a checkpointed block is recomputed one micro-batch at a time
        n = stop - start
        head = tokens * acts["head"] * act_bytes + 4 * V * C if s == pp - 1 else 0  # + the head's fp32 gradient
        full = tokens * n * layer * in_flight * act_bytes + head
        ckpt = tokens * (n * acts["input"] * in_flight + layer * one) * act_bytes + head
        weights = 4 * sharded
        grads = 4 * (local if parallel in ("ddp", "zero1") else sharded)
        adamw = 8 * (ceil(local / dp) if parallel == "zero1" else sharded)
        out.append(RankMemory(s, (start, stop), sharded, weights, grads, adamw, int(full), int(ckpt)))
    return out


def stage_bounds(n_layer: int, stages: int) -> list[tuple[int, int]]:
    """Blocks [start, stop) per pipeline stage (`--pp`), as even as possible, earlier stages taking the remainder
    (the first also runs the embedding, the last the head: a rough balance for small models, close for large)."""
    if n_layer < stages:
        raise ConfigError(f"--pp {stages} needs at least {stages} blocks; the model has {n_layer} (use a smaller --pp)")
    base, extra = divmod(n_layer, stages)
    bounds, start = [], 0
    for s in range(stages):
        stop = start + base + (1 if s < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


# ---- does it fit? --------------------------------------------------------------------------------------------


def available_memory_bytes() -> int | None:
    """Bytes of RAM this process can still allocate, or None where it cannot be told.

    Linux: `MemAvailable` (free memory plus reclaimable caches), capped by the cgroup's limit (containers).
    Elsewhere: free physical pages from `os.sysconf`. No psutil.
    """
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024  # the figure is in kB
    except (OSError, ValueError, IndexError):
        available = None
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
    ):
        try:
            limit, usage = Path(limit_file).read_text().strip(), Path(usage_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and usage.isdigit():  # "max": no limit
            available = min(available, max(int(limit) - int(usage), 0))
        break
    return available


def check_fits_in_memory(config: ModelConfig, bytes_per_param: int = 4, available: int | None = None) -> None:
    """Refuse, before anything is allocated, a model whose parameters alone exceed the RAM still available.

    Without this a typo such as vocab_size 10000000000 asks the allocator for terabytes and the process dies
    (or the machine swaps) instead of printing one line. `available` defaults to `available_memory_bytes()`.
    """
    available = available_memory_bytes() if available is None else available
    n = param_counts(config).total
    need = n * bytes_per_param
    if available is not None and need > available:
        raise ConfigError(
            f"model has {n:,} parameters, {_gib(need)} at {bytes_per_param} bytes each, but this machine has "
            f"{_gib(available)} of memory available; choose a smaller model (vocab_size, d_model, d_ff, n_layer)"
        )


def _gib(n: int) -> str:
    return f"{n / 2**40:,.1f} TiB" if n >= 2**40 else f"{n / 2**30:,.1f} GiB"
