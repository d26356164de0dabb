"""Perplexity with the sliding-window protocol of the Hugging Face perplexity guide, word perplexity, bits/byte.

The protocol (https://huggingface.co/docs/transformers/perplexity): windows of `context` tokens start every
`stride` tokens; in each window only the tokens after the previous window's end are targets (the others are
masked with -100), so every token's loss is counted once and each is predicted with as much left context as the
window allows. The first token of the text is never a target (nothing precedes it); with `stride == context`
the first token of every window is not a target either, exactly as in the guide.

Three numbers come out of the summed negative log-likelihood `nll` (nats) over the scored tokens:
- token perplexity `exp(nll / scored_tokens)`, comparable only between models with the same tokenizer;
- word perplexity `exp(nll / words)` with `words = len(text.split())`, and bits per byte
  `nll / ln 2 / len(text.encode("utf-8"))`: both divide by a property of the raw text, so models with
  different tokenizers compare fairly (the convention of lm-evaluation-harness for WikiText).

This module knows nothing of checkpoints or files: it takes a model (`model(ids) -> logits (B, T, V)`) and ids.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.errors import ScratchlmError
from scratchlm.model.loss import full_cross_entropy

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Window:
    """One window of the protocol: input tokens `[begin, end)`; targets are tokens `[target_begin, end)`."""

    begin: int
    end: int
    target_begin: int

    @property
    def n_targets(self) -> int:
        """Scored tokens: a target needs a token before it inside the window (HF's label shift drops one)."""
        return self.end - max(self.target_begin, self.begin + 1)


def sliding_windows(n_tokens: int, context: int, stride: int) -> list[Window]:
    """The guide's loop: `for begin in range(0, n, stride)`, `end = min(begin + context, n)`, targets from the
    previous end, stop once a window reaches the end of the text.

    >>> sliding_windows(10, 4, 2)  # doctest: +NORMALIZE_WHITESPACE
    [Window(begin=0, end=4, target_begin=0), Window(begin=2, end=6, target_begin=4),
     Window(begin=4, end=8, target_begin=6), Window(begin=6, end=10, target_begin=8)]
    """
    if context < 1 or not 1 <= stride <= context:
        raise ScratchlmError(f"stride must be between 1 and the context ({context}), got {stride}; pick --stride")
    windows: list[Window] = []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + context, n_tokens)
        windows.append(Window(begin, end, prev_end))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def window_batch(ids: Sequence[int], windows: Sequence[Window]) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and shifted targets for a batch of windows, right-padded to the longest window.

    `targets[b, t]` is the token that position `t` predicts, or -100 where it is not scored (before the
    window's `target_begin`, or padding). Right padding is safe: causal attention never lets a real position see
    a pad that comes after it.
    """
    T = max(w.end - w.begin for w in windows)
    inputs = torch.zeros(len(windows), T, dtype=torch.long)  # (B, T)
    targets = torch.full((len(windows), T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for b, w in enumerate(windows):
        chunk = torch.as_tensor(ids[w.begin : w.end], dtype=torch.long)
        L = len(chunk)
        inputs[b, :L] = chunk
        # position t predicts absolute token begin + t + 1; keep those at or after target_begin
        first = max(w.target_begin - w.begin - 1, 0)
        targets[b, first : L - 1] = chunk[first + 1 :]
    return inputs, targets


def nll_at(model: nn.Module, ids: torch.Tensor, keep: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL (N,) float32 of `targets` (N,) at the positions where `keep` (B, T) is true.

    A `GPT` gives its final hidden states and `token_nll`: the output head (V x C, the largest matmul of a small
    model) then runs only on the positions that are scored (half of them at stride = context/2), chunk by chunk,
    so the logits of a batch never exist. Any other module (a test fake, a wrapped model) goes through `forward`.
    """
    if hasattr(model, "hidden_states") and hasattr(model, "token_nll"):
        return model.token_nll(model.hidden_states(ids)[keep], targets)  # (N, C) -> (N,)
    return full_cross_entropy(model(ids)[keep], targets)  # (B, T, V) -> (N, V) -> (N,)


def summed_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of the negative log-likelihoods of `targets` (N,) under `logits` (N, V), computed in float32."""
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def autocast_for(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[None]:
    """bf16/fp16 autocast on the device; float32 means none."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on a GPU that supports it, float32 elsewhere (CPU bf16 is slower and less exact)."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ScratchlmError(f"unknown dtype {name!r}; use one of auto, {', '.join(table)}")
    return table[name]


@dataclass
class PerplexityResult:
    nll: float
    """Summed negative log-likelihood of the scored tokens, in nats."""
    tokens: int
    """Scored tokens."""
    total_tokens: int
    """Tokens in the text."""
    words: int
    """Whitespace-separated words of the raw text (0 when only ids were given)."""
    bytes: int
    """UTF-8 bytes of the raw text (0 when only ids were given)."""
    windows: int
    context: int
    stride: int

    @property
    def token_perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def word_perplexity(self) -> float:
        return word_perplexity(self.nll, self.words)

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.nll, self.bytes)

    def summary(self) -> dict[str, float | int | None]:
        """The `--json` object."""
        out: dict[str, float | int | None] = {
            "token_perplexity": self.token_perplexity,
            "word_perplexity": self.word_perplexity if self.words else None,  # None: ids only, no raw text
            "bits_per_byte": self.bits_per_byte if self.bytes else None,
            "tokens": self.tokens,
            "total_tokens": self.total_tokens,
            "words": self.words,
            "bytes": self.bytes,
            "nll": self.nll,
            "windows": self.windows,
            "context": self.context,
            "stride": self.stride,
        }
        return out


def word_perplexity(nll: float, n_words: int) -> float:
    """exp(total loss in nats / whitespace-separated words of the raw text)."""
    return math.exp(nll / n_words)


def bits_per_byte(nll: float, n_bytes: int) -> float:
    """Total loss in nats / ln 2 / UTF-8 bytes of the raw text."""
    return nll / math.log(2) / n_bytes


def model_context_length(model: nn.Module) -> int | None:
    """The model's maximum context, when its config says so."""
    config = getattr(model, "config", None)
    return getattr(config, "context_length", None)


def _batches(windows: list[Window], batch_size: int) -> Iterator[list[Window]]:
    for i in range(0, len(windows), batch_size):
        yield windows[i : i + batch_size]


@torch.no_grad()
def perplexity_of_ids(
    model: nn.Module,
    ids: Sequence[int],
    context: int,
    stride: int,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "auto",
    progress: bool = False,
) -> PerplexityResult:
    """Sliding-window negative log-likelihood of a token sequence (see the module docstring)."""
    device = torch.device(device)
    if isinstance(dtype, str):
        dtype = resolve_dtype(dtype, device)
    max_context = model_context_length(model)
    if max_context is not None and context > max_context:
        raise ScratchlmError(
            f"--context {context} is longer than the model's context length {max_context}; "
            f"pass --context {max_context} or less"
        )
    if len(ids) < 2:
        raise ScratchlmError(f"the text has {len(ids)} token(s); perplexity needs at least 2, give a longer text")
    if batch_size < 1:
        raise ScratchlmError(f"--batch-size must be at least 1, got {batch_size}")
    windows = sliding_windows(len(ids), context, stride)
    was_training = model.training
    model.eval()
    nll = torch.zeros((), dtype=torch.float64, device=device)
    bar = _progress(len(windows), enabled=progress)
    try:
        for batch in _batches(windows, batch_size):
            inputs, targets = window_batch(ids, batch)
            inputs, targets = inputs.to(device), targets.to(device)
            keep = targets != IGNORE_INDEX  # (B, T)
            with autocast_for(device, dtype):
                nll += nll_at(model, inputs, keep, targets[keep]).sum().double()
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    return PerplexityResult(
        nll=float(nll),
        tokens=sum(w.n_targets for w in windows),
        total_tokens=len(ids),
        words=0,
        bytes=0,
        windows=len(windows),
        context=context,
        stride=stride,
    )


def perplexity_of_text(
    model: nn.Module,
    tokenizer: object,
    text: str,
    context: int,
    stride: int,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "auto",
    progress: bool = False,
) -> PerplexityResult:
    """Tokenize `text` as plain text (special-token strings are ordinary text here) and score it."""
    ids = tokenizer.encode_ordinary(text)  # type: ignore[attr-defined]
    result = perplexity_of_ids(model, ids, context, stride, batch_size, device, dtype, progress)
    result.words = len(text.split())
    result.bytes = len(text.encode("utf-8"))
    return result


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> object:
    """A tqdm bar on stderr (stdout stays clean for --json), or nothing."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="window", file=sys.stderr, dynamic_ncols=True, leave=False)
