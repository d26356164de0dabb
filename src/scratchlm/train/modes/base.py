"""The mode protocol: what a kind of training (pretraining, classification, SFT, LoRA, DPO, reward models)
supplies to the loop.

There is ONE loop (`train/loop.py`). It owns the optimizer, the schedule, accumulation, precision, DDP, the spike
guard, evaluation, checkpoints and resume. A mode owns only what differs between kinds of training:

    setup(model, tokenizer)       -> the nn.Module to train (add a head, inject LoRA, freeze parameters)
    train_batches(b, seed, r, w)  -> a resumable stream of batches (dicts of tensors) for rank r of w
    val_batches(b)                -> an iterable of validation batches (or None)
    loss(module, batch)           -> (scalar loss, {name: metric})
    tokens_in(batch)              -> tokens in the batch, for tokens/s and --max-tokens
    checkpoint_extra()            -> extra config.json sections (data, lora, classifier, chat_template, ...)
    save_weights(module, ...)     -> write the checkpoint folder's weights (default: the whole module)
    load_weights(module, path)    -> read them back on resume (default: the whole module)

Rules the loop relies on:
- `loss` must call `module(...)` (its `forward`), never another method: the loop may hand it a DDP or compiled
  wrapper, and only `forward` is hooked for gradient sync. So the module returned by `setup` has a `forward`
  that serves the mode (e.g. a classifier wrapper whose forward returns class logits).
- The loss is the mean over the micro-batch; the loop divides by the accumulation steps itself.
- Batches come on CPU; the loop moves every tensor value to the device.
- `train_batches(...)` is called once; its `state_dict()` is saved in each checkpoint and restored with
  `load_state_dict()`, so that a resumed run sees exactly the batches the uninterrupted run would have seen.
  Across ranks, the union of the ranks' micro-batches at one step must equal what one process would draw over
  `world_size` accumulation steps (the DDP parity test relies on it; `TokenLoader` does this).
- Metrics in the loss's dict may be tensors; the loop only calls `.item()` on them at log intervals.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


@runtime_checkable
class BatchStream(Protocol):
    """An endless (or long) iterator of batches that can report and restore its exact position."""

    def __iter__(self) -> Iterator[Batch]: ...

    def __next__(self) -> Batch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Mode(abc.ABC):
    """Base class of the training modes; override the abstract methods, keep or override the defaults."""

    name: str = "mode"
    """Short name recorded in config.json's `train_mode` and in the logs."""

    @property
    @abc.abstractmethod
    def context_length(self) -> int:
        """Tokens per sequence in a (padded) batch; the loop derives accumulation steps from it."""

    def setup(self, model: nn.Module, tokenizer: Any) -> nn.Module:
        """The module to train, built around the loaded/new model. Default: the model itself."""
        return model

    @abc.abstractmethod
    def train_batches(self, micro_batch_size: int, seed: int, rank: int, world_size: int) -> BatchStream:
        """The resumable stream of this rank's training micro-batches."""

    def val_batches(self, micro_batch_size: int) -> Iterable[Batch] | None:
        """A fresh iterable of validation batches (same batches every call), or None when there is no val set."""
        return None

    @abc.abstractmethod
    def loss(self, module: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        """(mean loss over the batch, extra metrics such as accuracy or reward margin)."""

    def tokens_in(self, batch: Batch) -> int:
        """Tokens processed in this batch (for tokens/s, MFU and --max-tokens). Default: ids.numel()."""
        return int(batch["ids"].numel())

    def checkpoint_extra(self) -> dict[str, Any]:
        """Extra sections for the checkpoint's config.json (e.g. {"data": {...}} or {"lora": {...}})."""
        return {}

    def save_weights(
        self,
        module: nn.Module,
        path: Path,
        tokenizer: Any,
        extra: dict[str, Any],
        train_state: Any,
    ) -> None:
        """Write one checkpoint folder at `path` (atomically). Default: the whole module via checkpoint.save.

        `train_state` is a `scratchlm.checkpoint.TrainState`; pass it on to `checkpoint.save` unchanged.
        `module` is unwrapped (no DDP/compile prefixes). Adapter-only modes override this to save less
        (`checkpoint.save_finetuned`); `load_weights` reads any of these folders back.
        """
        from scratchlm import checkpoint

        checkpoint.save(path, module, tokenizer, extra=extra, train_state=train_state)

    def load_weights(self, module: nn.Module, path: Path) -> None:
        """Load the weights written by `save_weights` into `module` (resume): whatever the folder holds."""
        from scratchlm import checkpoint

        checkpoint.fill(module, Path(path))
