"""Pure functions on logits: penalties, temperature, top-k, top-p, min-p, the draw itself, and logprobs.

Every function takes a (B, V) logits tensor and per-row settings, either one Python number for every row or a
tensor with one value per row, so that one decoding step can serve rows with different settings (continuous
batching mixes requests). Filters never drop a token by setting its probability to zero in place; they set its
logit to -inf, so they compose in any order and the draw is a plain softmax.

The order used by `next_token` is the usual one (Hugging Face and vLLM agree):
penalties -> temperature -> top-k -> top-p -> min-p -> draw. Temperature 0 means greedy: the argmax of the
penalised logits, with no draw and no random numbers used.

These functions know nothing of tokenizers, models or caches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

NEG_INF = float("-inf")


def _per_row(value: float | Tensor, logits: Tensor) -> Tensor:
    """A setting as a (B, 1) tensor on the logits' device, whether given as a number or as one value per row."""
    if isinstance(value, Tensor):
        return value.to(device=logits.device, dtype=logits.dtype).reshape(-1, 1)
    return torch.full((logits.shape[0], 1), float(value), device=logits.device, dtype=logits.dtype)


# ---------------------------------------------------------------------------------------------- penalties


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float | Tensor) -> Tensor:
    """CTRL's repetition penalty: a token already seen (prompt or output) is made less likely.

    A positive logit is divided by `penalty`, a negative one multiplied, so penalty > 1 always lowers it
    (dividing a negative logit would raise it). `seen` is a (B, V) bool mask; penalty 1 changes nothing.
    """
    p = _per_row(penalty, logits)
    penalised = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen, penalised, logits)


def apply_frequency_presence_penalty(
    logits: Tensor, counts: Tensor, frequency: float | Tensor, presence: float | Tensor
) -> Tensor:
    """OpenAI's penalties on generated tokens: `logit - frequency * count - presence * (count > 0)`.

    `counts` is (B, V): how many times each token has been generated so far in that row.
    """
    f, pr = _per_row(frequency, logits), _per_row(presence, logits)
    counts = counts.to(logits.dtype)
    return logits - f * counts - pr * (counts > 0).to(logits.dtype)


# ---------------------------------------------------------------------------------------------- filters


def apply_temperature(logits: Tensor, temperature: float | Tensor) -> Tensor:
    """Divide by the temperature (> 0): below 1 sharpens the distribution, above 1 flattens it.

    Rows with temperature 0 (greedy) are left unchanged here; `next_token` takes their argmax instead.
    """
    t = _per_row(temperature, logits)
    return logits / torch.where(t > 0, t, torch.ones_like(t))


def top_k_filter(logits: Tensor, k: int | Tensor) -> Tensor:
    """Keep the k highest logits of each row (k <= 0 keeps all); a tie with the k-th value is kept too.

    `topk` with the largest k of the batch, not a full sort: a full sort of 50k logits costs ~100x more.
    """
    B, V = logits.shape
    k_row = (k.to(logits.device).reshape(-1) if isinstance(k, Tensor) else torch.full((B,), int(k))).long()
    k_row = torch.where((k_row <= 0) | (k_row > V), torch.full_like(k_row, V), k_row).to(logits.device)
    if bool((k_row >= V).all()):
        return logits
    top = logits.topk(int(k_row.max()), dim=-1).values  # (B, k_max), descending
    kth = top.gather(-1, (k_row.clamp(max=top.shape[-1]) - 1)[:, None])  # (B, 1): each row's k-th value
    kth = torch.where(k_row[:, None] >= V, torch.full_like(kth, NEG_INF), kth)
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: Tensor, p: float | Tensor, candidates: int = 256) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose total probability is >= p.

    A token is dropped when the tokens ranked above it already hold mass >= p, so the most likely token is
    always kept and the set is the smallest one reaching p. p >= 1 keeps everything. Cumulative sums in float32
    are off by ~1e-7 (0.5 + 0.3 -> 0.79999995), hence the small tolerance: a set reaching p within it counts.

    Speed: the nucleus of a trained model is usually a few dozen tokens, so the `candidates` most likely are
    ranked first (`topk`); only when they do not reach p in some row is the whole vocabulary sorted.
    """
    p_row = _per_row(p, logits)
    if bool((p_row >= 1).all()):
        return logits
    B, V = logits.shape
    probs = logits.float().softmax(dim=-1)
    m = min(candidates, V)
    top_probs, order = probs.topk(m, dim=-1)  # (B, m), descending
    if m < V and bool((top_probs.sum(-1, keepdim=True) < p_row).any()):
        top_probs, order = _sort_descending(probs)  # (B, V)
    mass_before = top_probs.cumsum(dim=-1) - top_probs
    n_keep = (
        (mass_before < p_row - 1e-6).sum(dim=-1, keepdim=True).clamp(min=1)
    )  # (B, 1), a prefix by construction
    threshold = top_probs.gather(-1, n_keep - 1)  # (B, 1): the least likely kept probability
    threshold = torch.where(p_row >= 1, torch.zeros_like(threshold), threshold)
    return logits.masked_fill(probs < threshold, NEG_INF)  # a tie with the last kept token is kept too


def _sort_descending(x: Tensor) -> tuple[Tensor, Tensor]:
    """`x.sort(descending=True)`; on CPU through numpy, whose argsort of 50k floats is ~15x faster than torch's."""
    if x.device.type != "cpu":
        return x.sort(dim=-1, descending=True)
    order = torch.from_numpy(np.argsort(-x.numpy(), axis=-1))
    return x.gather(-1, order), order


def min_p_filter(logits: Tensor, min_p: float | Tensor) -> Tensor:
    """Drop tokens whose probability is below `min_p` times the most likely token's (0 keeps all)."""
    m = _per_row(min_p, logits)
    if bool((m <= 0).all()):
        return logits
    probs = logits.softmax(dim=-1)
    threshold = m * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, NEG_INF)


# ---------------------------------------------------------------------------------------------- the draw


def draw(logits: Tensor, generators: Sequence[torch.Generator | None]) -> Tensor:
    """One token per row from softmax(logits), each row with its own generator -> (B,) ids.

    Inverse-CDF sampling: one uniform number u per row, and the token where the cumulative probability first
    exceeds u. One generator per row (per request) is what makes "same seed, same text" hold whatever else
    shares the batch: a row's random numbers never depend on the other rows. (`torch.multinomial` draws the
    same distribution but is ~50x slower on a 50k vocabulary on CPU.)

    float32 only: Apple's MPS has no float64. u is drawn as a Python float from the row's (CPU) generator
    (`_uniform`), the very number `torch.rand(dtype=float64)` gives, so seeded text is what it was with the old
    float64 CDF except when u lands within float32 rounding (~1e-7) of a token boundary.
    """
    probs = logits.float().softmax(dim=-1)  # (B, V)
    cdf = probs.cumsum(dim=-1)  # on CPU the running sum is accumulated in double, then rounded to float32
    u = torch.tensor([_uniform(g) for g in generators], dtype=torch.float32, device=logits.device)  # (B,)
    ids = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]  # (B,)
    ids = ids.clamp(max=probs.shape[-1] - 1)
    # u * total can round up to the total itself, landing past the last possible token: take the best instead
    bad = probs.gather(-1, ids[:, None])[:, 0] == 0
    return torch.where(bad, probs.argmax(-1), ids) if bool(bad.any()) else ids


def _uniform(generator: torch.Generator | None) -> float:
    """A uniform number in [0, 1) with 53 random bits, without a float64 tensor.

    Equal to `torch.rand(1, dtype=torch.float64, generator=g)` on a CPU generator (both take the low 53 bits of
    one 64-bit draw), so seeds keep their meaning. Generators live on the CPU (see `engine.py`).
    """
    return int(torch.randint(0, 2**53, (1,), generator=generator)) / 2**53


def logprobs_of(logits: Tensor, ids: Tensor, top_n: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Log-probabilities of the chosen `ids` (B,) under softmax(logits), and the `top_n` best alternatives.

    Returns (chosen (B,), top_values (B, top_n), top_ids (B, top_n)). These are the model's own probabilities
    (before penalties, temperature and filters), as OpenAI and vLLM report them.
    """
    logp = logits.float().log_softmax(dim=-1)  # (B, V)
    chosen = logp.gather(-1, ids[:, None])[:, 0]
    top = logp.topk(top_n, dim=-1) if top_n > 0 else (logp[:, :0], ids[:, None][:, :0])
    return chosen, top[0], top[1]


# ---------------------------------------------------------------------------------------------- all together


@dataclass
class RowSettings:
    """Per-row sampling settings as (B,) tensors, built once when the batch changes (see `RowSettings.stack`)."""

    temperature: Tensor
    top_k: Tensor
    top_p: Tensor
    min_p: Tensor
    repetition_penalty: Tensor
    frequency_penalty: Tensor
    presence_penalty: Tensor

    @classmethod
    def stack(cls, configs: Sequence[object], device: torch.device | str = "cpu") -> RowSettings:
        """From one object per row with the same attribute names (a `SampleConfig`)."""

        def col(name: str, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.tensor([getattr(c, name) for c in configs], dtype=dtype, device=device)

        # any k beyond the vocabulary keeps every token; clamped so that a huge k still fits an int64
        return cls(
            temperature=col("temperature"),
            top_k=torch.tensor([min(c.top_k, 2**62) for c in configs], dtype=torch.long, device=device),
            top_p=col("top_p"),
            min_p=col("min_p"),
            repetition_penalty=col("repetition_penalty"),
            frequency_penalty=col("frequency_penalty"),
            presence_penalty=col("presence_penalty"),
        )

    def select(self, rows: Tensor | list[int]) -> RowSettings:
        return RowSettings(**{k: v[rows] for k, v in vars(self).items()})


def next_token(
    logits: Tensor,
    settings: RowSettings,
    generators: Sequence[torch.Generator | None],
    seen: Tensor | None = None,
    counts: Tensor | None = None,
) -> Tensor:
    """The next token of every row -> (B,) ids. `logits` is (B, V) float; `seen`/`counts` (B, V) feed penalties.

    Each step is skipped when no row uses it, so plain greedy decoding costs one argmax.
    """
    s = settings
    if seen is not None and bool((s.repetition_penalty != 1).any()):
        logits = apply_repetition_penalty(logits, seen, s.repetition_penalty)
    if counts is not None and bool(((s.frequency_penalty != 0) | (s.presence_penalty != 0)).any()):
        logits = apply_frequency_presence_penalty(logits, counts, s.frequency_penalty, s.presence_penalty)
    greedy_rows = s.temperature <= 0  # (B,)
    greedy_ids = logits.argmax(dim=-1)
    if bool(greedy_rows.all()):
        return greedy_ids
    logits = apply_temperature(logits, s.temperature)
    logits = top_k_filter(logits, s.top_k)
    logits = top_p_filter(logits, s.top_p)
    logits = min_p_filter(logits, s.min_p)
    sampled = torch.zeros_like(greedy_ids)
    rows = (~greedy_rows).nonzero()[:, 0].tolist()
    sampled[rows] = draw(logits[rows], [generators[i] for i in rows])
    return torch.where(greedy_rows.to(logits.device), greedy_ids, sampled)
