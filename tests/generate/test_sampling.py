"""Each sampling filter on hand-made logits, against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from scratchlm.errors import ConfigError
from scratchlm.generate.config import SampleConfig
from scratchlm.generate.sampling import (
    RowSettings,
    apply_frequency_presence_penalty,
    apply_repetition_penalty,
    apply_temperature,
    draw,
    logprobs_of,
    min_p_filter,
    next_token,
    top_k_filter,
    top_p_filter,
)

INF = float("inf")


def _logits_for(probs: list[float]) -> torch.Tensor:
    return torch.tensor([probs]).log()


def test_top_k_keeps_the_k_largest_per_row() -> None:
    """(A tie with the k-th value is kept: the first assertion.)"""
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0], [9.0, 0.0, 1.0, 2.0]])
    assert torch.isfinite(top_k_filter(torch.tensor([[1.0, 2.0, 2.0, 0.0]]), 1)).tolist() == [
        [False, True, True, False]
    ]
    out = top_k_filter(logits, 2)
    assert out.tolist() == [[-INF, 5.0, -INF, 4.0], [9.0, -INF, -INF, 2.0]]
    # per-row k, and 0 = keep all
    out = top_k_filter(logits, torch.tensor([1, 0]))
    assert out.tolist() == [[-INF, 5.0, -INF, -INF], [9.0, 0.0, 1.0, 2.0]]


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = _logits_for([0.1, 0.5, 0.3, 0.1])  # sorted: 0.5, 0.3, 0.1, 0.1
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.5) == [False, True, False, False]  # 0.5 alone reaches 0.5
    assert kept(0.6) == [False, True, True, False]  # 0.5 < 0.6 <= 0.8
    assert kept(0.8) == [False, True, True, False]  # exactly 0.8: no third token needed
    assert kept(0.81) == [True, True, True, True]  # a 0.1 joins, and the other 0.1 ties with it
    assert kept(0.01) == [False, True, False, False]  # the top token is always kept
    assert kept(1.0) == [True, True, True, True]


def test_top_p_per_row() -> None:
    logits = torch.cat([_logits_for([0.6, 0.3, 0.1]), _logits_for([0.6, 0.3, 0.1])])
    out = top_p_filter(logits, torch.tensor([0.5, 0.95]))
    assert torch.isfinite(out).tolist() == [[True, False, False], [True, True, True]]


@pytest.mark.parametrize("p", [0.3, 0.9, 0.999])
def test_top_p_candidate_shortcut_equals_a_plain_loop(p: float) -> None:
    """The topk shortcut and the full-sort fallback both equal a loop over the sorted probabilities."""
    torch.manual_seed(0)
    logits = torch.randn(3, 1000) * torch.tensor([[0.5], [3.0], [8.0]])  # flat, medium, peaked rows
    expected = torch.zeros(3, 1000, dtype=torch.bool)
    for b in range(3):
        probs = logits[b].double().softmax(-1)
        mass = 0.0
        for i in probs.argsort(descending=True).tolist():
            if mass >= p - 1e-6:
                break
            expected[b, i] = True
            mass += probs[i].item()
    for candidates in (1000, 256, 4):
        assert torch.equal(torch.isfinite(top_p_filter(logits, p, candidates=candidates)), expected)


def test_min_p_drops_tokens_below_a_fraction_of_the_best() -> None:
    logits = _logits_for([0.5, 0.3, 0.15, 0.05])
    out = min_p_filter(logits, 0.2)  # threshold 0.1
    assert torch.isfinite(out)[0].tolist() == [True, True, True, False]
    out = min_p_filter(logits, 0.7)  # threshold 0.35
    assert torch.isfinite(out)[0].tolist() == [True, False, False, False]
    assert torch.equal(min_p_filter(logits, 0.0), logits)


def test_temperature_scales_and_leaves_greedy_rows_alone() -> None:
    logits = torch.tensor([[2.0, -4.0], [2.0, -4.0]])
    assert apply_temperature(logits, torch.tensor([0.5, 0.0])).tolist() == [[4.0, -8.0], [2.0, -4.0]]


def test_repetition_penalty_divides_positive_multiplies_negative() -> None:
    logits = torch.tensor([[2.0, -1.0, 3.0]])
    seen = torch.tensor([[True, True, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -2.0, 3.0]]


def test_frequency_and_presence_penalties() -> None:
    logits = torch.tensor([[1.0, 1.0, 1.0]])
    counts = torch.tensor([[0, 1, 3]])
    out = apply_frequency_presence_penalty(logits, counts, frequency=0.5, presence=0.25)
    assert out.tolist() == [[1.0, 1.0 - 0.5 - 0.25, 1.0 - 1.5 - 0.25]]


def test_draw_follows_the_distribution_and_the_seed() -> None:
    logits = _logits_for([0.7, 0.2, 0.1]).expand(4000, 3)
    g = torch.Generator().manual_seed(0)
    ids = draw(logits, [g] * 4000)
    freq = torch.bincount(ids, minlength=3).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.03)
    a = draw(logits[:50], [torch.Generator().manual_seed(i) for i in range(50)])
    b = draw(logits[:50], [torch.Generator().manual_seed(i) for i in range(50)])
    assert torch.equal(a, b)


def test_filtered_tokens_are_never_drawn() -> None:
    logits = _logits_for([0.4, 0.3, 0.2, 0.1]).expand(500, 4)
    g = torch.Generator().manual_seed(1)
    ids = draw(top_k_filter(logits, 2), [g] * 500)
    assert set(ids.tolist()) == {0, 1}


def test_logprobs_of_chosen_and_top() -> None:
    logits = _logits_for([0.5, 0.25, 0.25])
    chosen, top_v, top_i = logprobs_of(logits, torch.tensor([1]), top_n=2)
    assert chosen.item() == pytest.approx(math.log(0.25))
    assert top_v[0].tolist() == pytest.approx([math.log(0.5), math.log(0.25)])
    assert top_i[0, 0].item() == 0


def test_next_token_mixes_greedy_and_sampled_rows() -> None:
    cfgs = [SampleConfig(temperature=0.0), SampleConfig(temperature=1.0, top_k=1)]
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    gens = [None, torch.Generator().manual_seed(0)]
    ids = next_token(logits, RowSettings.stack(cfgs), gens)
    assert ids.tolist() == [1, 0]


def test_next_token_applies_penalties_before_greedy() -> None:
    logits = torch.tensor([[3.0, 2.5, 0.0]])
    seen = torch.tensor([[True, False, False]])
    cfg = SampleConfig(temperature=0.0, repetition_penalty=2.0)
    assert next_token(logits, RowSettings.stack([cfg]), [None], seen=seen).tolist() == [1]
    cfg = SampleConfig(temperature=0.0, presence_penalty=1.0)
    counts = torch.tensor([[1, 0, 0]])
    assert next_token(logits, RowSettings.stack([cfg]), [None], counts=counts).tolist() == [1]


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"min_p": 2}, {"n": 0}, {"max_new_tokens": -1}],
)
def test_sample_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        SampleConfig(**kwargs)


# ---- float32 only (Apple MPS has no float64) ------------------------------------------------------------------


class _DtypeRecorder(TorchDispatchMode):
    """Records the dtype of every tensor an op produces (factories such as torch.rand included)."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.dtypes.add(t.dtype)
        return out


def _reference_draw(logits: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """The float64 inverse-CDF draw scratchlm used before: the oracle for seeded results."""
    probs = logits.double().softmax(dim=-1)
    cdf = probs.cumsum(dim=-1)
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0].clamp(max=probs.shape[-1] - 1)


def test_sampling_creates_no_float64_tensor() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 300) * 3
    cfgs = [
        SampleConfig(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.2, seed=1),
        SampleConfig(temperature=1.3, top_p=0.5, frequency_penalty=0.5, presence_penalty=0.3, seed=2),
        SampleConfig(temperature=0.0),
        SampleConfig(temperature=1.0, top_p=0.999, seed=3),  # the nucleus outgrows the top-k shortcut
    ]
    seen = torch.zeros(4, 300, dtype=torch.bool)
    seen[:, :10] = True
    counts = seen.to(torch.int32)
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    with _DtypeRecorder() as rec:
        ids = next_token(logits, RowSettings.stack(cfgs), gens, seen=seen, counts=counts)
        logprobs_of(logits, ids, top_n=5)
        draw(logits, gens)
    assert torch.float32 in rec.dtypes
    assert torch.float64 not in rec.dtypes


def test_engine_decoding_creates_no_float64_tensor(tiny_gpt) -> None:  # noqa: ANN001
    from scratchlm.generate.engine import generate_ids

    model = tiny_gpt()
    cfg = SampleConfig(
        temperature=0.9, top_p=0.9, repetition_penalty=1.1, max_new_tokens=6, seed=0, logprobs=2
    )
    with _DtypeRecorder() as rec:
        [[seq]] = generate_ids(model, [[1, 2, 3]], cfg)
    assert len(seq.output) == 6
    assert torch.float64 not in rec.dtypes


@pytest.mark.parametrize(
    "probs",
    [[0.7, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25], [0.5, 0.0, 0.3, 0.0, 0.2], [0.95, 0.05], [0.1] * 10],
)
def test_float32_draw_gives_the_float64_draws_seeded_tokens(probs: list[float]) -> None:
    """Same seeds, same tokens as the float64 draw, on hand-made distributions (500 seeds each)."""
    logits = _logits_for(probs).expand(500, len(probs))
    new = draw(logits, [torch.Generator().manual_seed(s) for s in range(500)])
    ref = _reference_draw(logits, [torch.Generator().manual_seed(s) for s in range(500)])
    assert torch.equal(new, ref)
    assert set(new.tolist()) == {i for i, p in enumerate(probs) if p > 0}  # never a zero-probability token


def test_float32_draw_on_a_large_vocabulary_rarely_differs_from_float64() -> None:
    """50k tokens: float32 rounding of the CDF (~1e-7) may move a draw across a boundary, rarely."""
    torch.manual_seed(0)
    logits = torch.randn(400, 50257) * 2.0
    new = draw(logits, [torch.Generator().manual_seed(s) for s in range(400)])
    ref = _reference_draw(logits, [torch.Generator().manual_seed(s) for s in range(400)])
    assert (new != ref).sum().item() <= 2


def test_huge_top_k_keeps_every_token() -> None:
    cfg = SampleConfig(temperature=1.0, top_k=2**70)
    settings = RowSettings.stack([cfg])
    assert settings.top_k.tolist() == [2**62]
    logits = _logits_for([0.5, 0.3, 0.2])
    assert torch.equal(top_k_filter(logits, settings.top_k), logits)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": math.nan}, "temperature must be a finite number, got nan"),
        ({"temperature": math.inf}, "temperature must be a finite number, got inf"),
        ({"top_p": math.nan}, "top_p must be a finite number, got nan"),
        ({"min_p": -math.inf}, "min_p must be a finite number, got -inf"),
        ({"repetition_penalty": math.nan}, "repetition_penalty must be a finite number, got nan"),
        ({"frequency_penalty": math.inf}, "frequency_penalty must be a finite number, got inf"),
        ({"presence_penalty": math.nan}, "presence_penalty must be a finite number, got nan"),
        (
            {"seed": 2**64},
            f"seed must be an integer from {-(2**63)} to {2**63 - 1} (64-bit signed), got {2**64}",
        ),
        (
            {"seed": 10**23},
            f"seed must be an integer from {-(2**63)} to {2**63 - 1} (64-bit signed), got {10**23}",
        ),
        ({"seed": 1.5}, f"seed must be an integer from {-(2**63)} to {2**63 - 1} (64-bit signed), got 1.5"),
        ({"top_k": 2.5}, "top_k must be an integer, got 2.5"),
        ({"stop_ids": [-1]}, "stop_ids must be token ids >= 0, got [-1]"),
        ({"logprobs": 21}, "logprobs must be between 0 and 20, got 21"),
    ],
)
def test_sample_config_names_the_bad_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        SampleConfig(**kwargs)
    assert str(e.value) == message
    assert e.value.param == next(iter(kwargs))


def test_sample_config_keeps_the_edges_of_each_range() -> None:
    cfg = SampleConfig(
        seed=2**63 - 1, n=16, temperature=0.0, top_p=1.0, frequency_penalty=-50, presence_penalty=1e4
    )
    assert cfg.seed == 2**63 - 1
    assert SampleConfig(seed=-(2**63)).seed == -(2**63)
