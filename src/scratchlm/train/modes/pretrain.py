"""Pretraining: next-token prediction on token shards, every position counts.

    batch = {"ids": (B, T), "targets": (B, T)}       targets = ids shifted left by one, from `TokenLoader`
    loss  = cross_entropy(model(ids) (B, T, V), targets)   mean over all B*T positions, in nats

The shards and their loader belong to `scratchlm.data`; this mode only adapts `TokenLoader`'s `(ids, targets)`
tuples into the loop's batch dicts and checks, before training starts, that the shards fit the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchlm.errors import ScratchlmError
from scratchlm.train.modes.base import Batch, BatchStream, Mode


class _DictStream:
    """`TokenLoader` -> {"ids", "targets"} dicts, forwarding the loader's resumable position."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self._it: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self._it is None:
            self._it = iter(self.loader)
        ids, targets = next(self._it)
        return {"ids": ids, "targets": targets}

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)
        self._it = None


class _EvalPass:
    """A re-iterable view of `TokenLoader.eval_batches(shuffled=True)` as {"ids", "targets"} dicts."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[Batch]:
        for ids, targets in self.loader.eval_batches(shuffled=True):
            yield {"ids": ids, "targets": targets}


class PretrainMode(Mode):
    """Next-token prediction over the shards in `shard_dir` (train and val splits)."""

    name = "pretrain"

    def __init__(self, shard_dir: str | Path, context_length: int, seed: int = 1337) -> None:
        self.shard_dir = Path(shard_dir)
        self._context_length = context_length
        self.seed = seed

    @property
    def context_length(self) -> int:
        return self._context_length

    def setup(self, model: nn.Module, tokenizer: Any) -> nn.Module:
        from scratchlm.data import read_manifest

        made_by = read_manifest(self.shard_dir)["tokenizer"]
        if tokenizer is not None and tokenizer.identity() != made_by["identity"]:
            raise ScratchlmError(
                f"the shards in {self.shard_dir} were made by another tokenizer ({made_by.get('source')}, "
                f"{made_by['vocab_size']} tokens) than the model's ({tokenizer.vocab_size} tokens); "
                "prepare the data with the model's tokenizer"
            )
        config = getattr(model, "config", None)
        if config is not None and tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
            raise ScratchlmError(
                f"the shards in {self.shard_dir} were made by a tokenizer of {tokenizer.vocab_size} tokens, more "
                f"than the model's vocab_size {config.vocab_size}: set --model.vocab-size {tokenizer.vocab_size} "
                "(or more) or use shards made with the model's tokenizer"
            )
        if config is not None and self._context_length > config.context_length:
            raise ScratchlmError(
                f"context {self._context_length} is longer than the model's context_length "
                f"{config.context_length}; lower the context or raise --model.context-length"
            )
        return model

    def _loader(self, split: str, micro_batch_size: int, seed: int, rank: int, world_size: int) -> Any:
        from scratchlm.data import TokenLoader

        return TokenLoader(self.shard_dir, split, micro_batch_size, self._context_length, seed, rank, world_size)

    def train_batches(self, micro_batch_size: int, seed: int, rank: int, world_size: int) -> BatchStream:
        return _DictStream(self._loader("train", micro_batch_size, seed, rank, world_size))

    def val_batches(self, micro_batch_size: int) -> Iterable[Batch] | None:
        """Every validation window once, in a fixed shuffled order (so --eval-batches N samples the whole split,
        and each evaluation scores the same windows: curves are comparable), the last batch possibly short (a
        split smaller than one batch is still scored). Finite: --eval-batches 0 scores the whole split once."""
        loader = self._loader("val", micro_batch_size, self.seed, 0, 1)
        return _EvalPass(loader)

    def loss(self, module: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        # the head and the cross-entropy fused chunk by chunk: no (B, T, V) logits
        return module(batch["ids"], targets=batch["targets"], reduction="mean"), {}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"data": {"shards": str(self.shard_dir), "context_length": self._context_length}}
