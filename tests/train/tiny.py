"""A tiny, self-contained training setup for the loop's tests: random tokens, a 2-layer GPT, a mode whose data
position is one integer and whose loss can be poisoned at chosen steps (spike-guard tests)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.model import GPT, ModelConfig
from scratchlm.tokenizer import CharTokenizer
from scratchlm.train.modes.base import Batch, Mode

VOCAB = "abcdefghijklmnopqrstuvwxyz .,;!\n"  # 32 characters
T = 16


def tiny_config(dropout: float = 0.1) -> ModelConfig:
    return ModelConfig(vocab_size=32, context_length=T, n_layer=2, n_head=2, d_model=32, d_ff=64, dropout=dropout)


def tiny_model(seed: int = 0, dropout: float = 0.1) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config(dropout))


def tokenizer() -> CharTokenizer:
    return CharTokenizer(list(VOCAB))


class Stream:
    """Micro-batch k of the whole run is a pure function of (seed, k); rank r draws k = i * world + r."""

    def __init__(self, b: int, seed: int, rank: int, world: int, split: str = "train") -> None:
        self.b, self.seed, self.rank, self.world, self.i = b, seed, rank, world, 0
        self.offset = 0 if split == "train" else 10**6

    def batch(self, k: int) -> Batch:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.offset + k)
        # a learnable signal: each row repeats a short random pattern
        period = torch.randint(2, 5, (self.b, 1), generator=g)
        base = torch.randint(0, 32, (self.b, 5), generator=g)
        pos = torch.arange(T + 1)[None, :] % period
        seq = torch.gather(base, 1, pos)
        return {"ids": seq[:, :-1], "targets": seq[:, 1:]}

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Batch:
        k = self.i * self.world + self.rank
        self.i += 1
        return self.batch(k)

    def state_dict(self) -> dict[str, Any]:
        return {"i": self.i}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.i = state["i"]


class TinyMode(Mode):
    name = "tiny"

    def __init__(self, poison: dict[int, float] | None = None, accum: int = 1, delay: float = 0.0,
                 save_delay: float = 0.0, save_marker: Path | None = None, fail_at: tuple[int, int] | None = None) -> None:
        self.poison = poison or {}  # optimizer step -> factor on the loss and its gradients (nan allowed)
        self.accum = accum
        self.delay = delay  # seconds of sleep per training micro-batch: a slow run to interrupt, same numbers
        self.save_delay, self.save_marker = save_delay, save_marker  # a slow save, announced by a marker file
        self.calls = 0
        self.fail_at = fail_at  # (rank, optimizer step): that rank raises in its forward there (stop-all test)
        self.rank = 0

    def save_weights(self, module: nn.Module, path: Path, tokenizer: Any, extra: dict[str, Any],
                     train_state: Any) -> None:
        if self.save_marker is not None:
            self.save_marker.write_text(path.name)
        if self.save_delay:
            import time

            time.sleep(self.save_delay)
        super().save_weights(module, path, tokenizer, extra, train_state)

    @property
    def context_length(self) -> int:
        return T

    def train_batches(self, micro_batch_size: int, seed: int, rank: int, world_size: int) -> Stream:
        self.rank = rank
        return Stream(micro_batch_size, seed, rank, world_size)

    def val_batches(self, micro_batch_size: int) -> Iterable[Batch]:
        s = Stream(micro_batch_size, 0, 0, 1, split="val")
        return [s.batch(k) for k in range(2)]

    def loss(self, module: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = module(batch["ids"])
        loss = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())
        if module.training:
            if self.delay:
                import time

                time.sleep(self.delay)
            step = self.calls // self.accum
            self.calls += 1
            if self.fail_at == (self.rank, step):
                raise RuntimeError(f"injected failure on rank {self.rank} at step {step}")
            if step in self.poison:
                loss = loss * self.poison[step]  # a spike in the loss and in the gradient norm
        return loss, {}


def main(argv: list[str] | None = None) -> None:
    """`python tests/train/tiny.py --out DIR ...` (or under torchrun): a real process running the loop."""
    import argparse

    from scratchlm.train.config import TrainConfig
    from scratchlm.train.loop import train

    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-steps", type=int, default=8)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--global-batch-tokens", type=int, default=None)
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--resume", default=None)
    p.add_argument("--step-delay", type=float, default=0.0)
    p.add_argument("--save-delay", type=float, default=0.0)
    p.add_argument("--save-marker", type=Path, default=None)
    p.add_argument("--parallel", default="ddp")
    p.add_argument("--fail-rank", type=int, default=None)
    p.add_argument("--fail-step", type=int, default=None)
    a = p.parse_args(argv)
    cfg = TrainConfig(
        out=a.out, max_steps=a.max_steps, micro_batch_size=a.micro_batch_size, global_batch_tokens=a.global_batch_tokens,
        save_every=a.save_every, resume=a.resume, warmup_steps=2, lr=3e-3, min_lr=3e-4, eval_every=0, log_every=1,
        progress=False, spike_window=0, device="cpu", parallel=a.parallel,
    )
    fail_at = (a.fail_rank, a.fail_step) if a.fail_rank is not None else None
    mode = TinyMode(delay=a.step_delay, save_delay=a.save_delay, save_marker=a.save_marker, fail_at=fail_at)
    result = train(cfg, mode, tiny_model(dropout=a.dropout), tokenizer())
    raise SystemExit({"SIGTERM": 143, "SIGINT": 130}.get(result.stopped, 0))


if __name__ == "__main__":
    main()
