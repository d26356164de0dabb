"""Pure parts of training: LR schedules (known answers), AdamW parameter groups, the spike guard."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scratchlm.errors import ConfigError
from scratchlm.train.config import TrainConfig
from scratchlm.train.guard import OK, ROLLBACK, SKIP, SpikeGuard
from scratchlm.train.optim import build_optimizer, lr_at, param_groups

KW = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=110)


def test_warmup_known_answers() -> None:
    assert lr_at(0, **KW) == pytest.approx(1e-4)
    assert lr_at(4, **KW) == pytest.approx(5e-4)
    assert lr_at(9, **KW) == pytest.approx(1e-3)  # the last warm-up step runs at the peak


@pytest.mark.parametrize(
    "schedule, step, expected",
    [
        ("cosine", 10, 1e-3),
        ("cosine", 60, 1e-4 + 0.5 * 9e-4),  # half-way: cos(pi/2) = 0
        ("cosine", 35, 1e-4 + 0.5 * (1 + math.cos(math.pi / 4)) * 9e-4),
        ("cosine", 110, 1e-4),
        ("cosine", 500, 1e-4),  # past the end: holds the minimum
        ("linear", 60, 5.5e-4),
        ("linear", 110, 1e-4),
        ("wsd", 60, 1e-3),  # stable phase
        ("wsd", 88, 1e-3),  # decay starts at 110 - 22 = 88
        ("wsd", 99, 1e-3 - 9e-4 * 0.5),
        ("wsd", 110, 1e-4),
        ("constant", 100, 1e-3),
    ],
)
def test_schedules_known_answers(schedule: str, step: int, expected: float) -> None:
    assert lr_at(step, schedule=schedule, **KW) == pytest.approx(expected, rel=1e-12)


def test_unknown_total_holds_peak() -> None:
    assert lr_at(1000, lr=1e-3, min_lr=0.0, warmup_steps=10, total_steps=None) == 1e-3


def test_cosine_is_monotone_after_warmup() -> None:
    lrs = [lr_at(s, **KW) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_weight_decay_only_on_matrices() -> None:
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 4, bias=False))
    model[0].weight.requires_grad_(False)  # frozen parameters are left out altogether
    groups = param_groups(model, weight_decay=0.1)
    by_name = {g["name"]: g for g in groups}
    assert [p.shape for p in by_name["decay"]["params"]] == [(8, 8), (4, 8)]
    assert by_name["decay"]["weight_decay"] == 0.1
    assert sorted(p.shape for p in by_name["no_decay"]["params"]) == [(8,), (8,), (8,)]
    assert by_name["no_decay"]["weight_decay"] == 0.0
    opt = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), 1e-8, "cpu")
    assert isinstance(opt, torch.optim.AdamW)


def test_fused_adamw_matches_reference() -> None:
    """Whatever implementation build_optimizer picks computes the plain AdamW update."""
    torch.manual_seed(0)
    a = nn.Linear(6, 5)
    b = nn.Linear(6, 5)
    b.load_state_dict(a.state_dict())
    opt_a = build_optimizer(a, 1e-2, 0.1, (0.9, 0.95), 1e-8, "cpu")
    opt_b = torch.optim.AdamW(param_groups(b, 0.1), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    for _ in range(3):
        x = torch.randn(4, 6)
        for m, o in ((a, opt_a), (b, opt_b)):
            m(x).square().mean().backward()
            o.step()
            o.zero_grad()
    torch.testing.assert_close(a.weight, b.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a.bias, b.bias, atol=1e-6, rtol=1e-5)


def _warm(guard: SpikeGuard, n: int = 20) -> None:
    for i in range(n):
        assert guard.check(i, 2.0 + 0.01 * (i % 3), 1.0 + 0.05 * (i % 2)) == (OK, "")


def test_guard_skips_spike_and_nan() -> None:
    guard = SpikeGuard(window=20, zscore=6.0, patience=3)
    _warm(guard)
    verdict, reason = guard.check(20, 50.0, 1.0)
    assert verdict == SKIP and "loss 50" in reason
    assert guard.check(21, 2.0, 80.0)[0] == SKIP  # a grad-norm spike alone
    assert len(guard.losses) == 20  # skipped steps never enter the history
    assert guard.check(22, 2.01, 1.0) == (OK, "")


def test_guard_nonfinite_always_skips_even_when_disabled() -> None:
    guard = SpikeGuard(window=0, zscore=6.0, patience=0)
    assert guard.check(0, float("nan"), 1.0)[0] == SKIP
    assert guard.check(1, 1.0, float("inf"))[0] == SKIP
    assert guard.check(2, 1e9, 1e9)[0] == OK  # no statistics when disabled


def test_guard_repeated_spikes_roll_back_and_state_round_trips() -> None:
    guard = SpikeGuard(window=20, zscore=6.0, patience=3)
    _warm(guard)
    assert guard.check(20, float("nan"), 1.0)[0] == SKIP
    assert guard.check(21, 99.0, 1.0)[0] == SKIP
    clone = SpikeGuard(window=20, zscore=6.0, patience=3)
    clone.load_state_dict(guard.state_dict())
    assert clone.check(22, 99.0, 1.0)[0] == ROLLBACK
    assert guard.check(22, 99.0, 1.0)[0] == ROLLBACK


def test_config_errors_are_one_line() -> None:
    with pytest.raises(ConfigError, match="--schedule 'cosin' is unknown"):
        TrainConfig(schedule="cosin")
    with pytest.raises(ConfigError, match="no end"):
        TrainConfig(max_steps=None)
    with pytest.raises(ConfigError, match="--min-lr"):
        TrainConfig(lr=1e-4, min_lr=1e-3)


def test_with_clipping_a_grad_norm_jump_alone_is_accepted_and_learned() -> None:
    """Found with the quickstart at --lr 1.5e-3: the gradient norm rose from ~1.5 to ~30 as the model left its
    first plateau (loss steady), every step was skipped as a spike, and the run never trained again. Clipping
    already bounds such a step, so with clipping only the loss (and non-finite values) makes a spike."""
    guard = SpikeGuard(window=20, zscore=6.0, patience=3, clipped=True)
    _warm(guard)
    assert guard.check(20, 2.0, 80.0) == (OK, "")  # accepted: enters the history
    assert guard.norms[-1] == 80.0
    assert guard.check(21, 50.0, 1.0)[0] == SKIP  # a loss spike still is one
    assert guard.check(22, 2.0, float("inf"))[0] == SKIP  # and so is a non-finite norm
