"""Training a text classifier (`scratchlm.model.classifier.ClassifierModel`: a head on the last real token).

    ids (B, T) --GPT.hidden_states--> (B, T, C) --pick row b at last[b]--> (B, C) --head--> logits (B, K)

Why the last real token: with causal attention it is the only position that has seen the whole text, and it
has seen nothing after it, so right-padding a batch to 20 or 200 tokens cannot change the prediction (a test
checks it). What trains (`train`): `head` only, `last` K blocks + the final norm + the head, or `all`; with
adapters (LoRA, a prefix or a soft prompt) the adapters and the head train.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.data.finetune import ClassificationData, EpochBatches, collate_classification, fixed_batches
from scratchlm.errors import ScratchlmError
from scratchlm.model.classifier import ClassifierModel
from scratchlm.model.lora import LoRAConfig
from scratchlm.model.prefix import PrefixConfig
from scratchlm.train.modes.base import Batch, BatchStream
from scratchlm.train.modes.finetune import FinetuneMode, trainable

TRAINABLE = ("head", "last", "all")


def set_trainable(module: ClassifierModel, what: str, last_k: int = 1) -> None:
    """Freeze everything, then unfreeze the head and (for `last`) the last K blocks + final norm, or `all`."""
    if what not in TRAINABLE:
        raise ScratchlmError(f"--train {what!r} is unknown; use one of {', '.join(TRAINABLE)}")
    model = module.model
    if what == "last" and not 1 <= last_k <= len(model.blocks):
        raise ScratchlmError(f"--last-k must lie in 1..{len(model.blocks)} (the model's blocks), got {last_k}")
    for p in module.parameters():
        p.requires_grad_(what == "all")
    trainable(module.head.parameters())
    if what == "last":
        for block in model.blocks[-last_k:]:
            trainable(block.parameters())
        trainable(model.norm.parameters())


def prepare_head_model(mode: FinetuneMode, module: ClassifierModel, what: str, last_k: int) -> None:
    """With adapters (LoRA, prefix, prompt): they go on the frozen base, and the head trains; without:
    `set_trainable(what, last_k)`."""
    if mode.adapters:
        mode.apply_adapters(module.model)  # freezes the base
        trainable(module.head.parameters())
    else:
        set_trainable(module, what, last_k)


@dataclass
class ClassifierSpec:
    """What a classifier checkpoint records in config.json's `classifier` section."""

    labels: list[str]
    max_length: int
    pad_id: int
    train: str = "last"
    last_k: int = 1


class ClassifyMode(FinetuneMode):
    name = "classify"

    def __init__(
        self,
        data: ClassificationData,
        pad_id: int,
        max_length: int,
        train: str = "last",
        last_k: int = 1,
        lora: LoRAConfig | None = None,
        base_checkpoint: str | None = None,
        prefix: PrefixConfig | None = None,
        prefix_kind: str = "prefix",
    ) -> None:
        super().__init__(lora, base_checkpoint, prefix, prefix_kind)
        if train not in TRAINABLE:
            raise ScratchlmError(f"--train {train!r} is unknown; use one of {', '.join(TRAINABLE)}")
        self.data, self.pad_id, self.max_length = data, pad_id, max_length
        self.spec = ClassifierSpec(list(data.labels), max_length, pad_id, train, last_k)
        self.weights = None if data.class_weights is None else torch.tensor(data.class_weights)

    @property
    def context_length(self) -> int:
        return self.max_length

    def setup(self, model: nn.Module, tokenizer: Any) -> nn.Module:
        module = ClassifierModel(model, len(self.data.labels))  # type: ignore[arg-type]
        prepare_head_model(self, module, self.spec.train, self.spec.last_k)
        return module

    def _collate(self, examples: list[tuple[list[int], int]]) -> Batch:
        return collate_classification(examples, self.pad_id)

    def train_batches(self, micro_batch_size: int, seed: int, rank: int, world_size: int) -> BatchStream:
        lengths = [len(ids) for ids, _ in self.data.train]
        return EpochBatches(self.data.train, micro_batch_size, self._collate, seed, rank, world_size, lengths)

    def val_batches(self, micro_batch_size: int) -> Iterable[Batch] | None:
        return fixed_batches(self.data.val, micro_batch_size, self._collate) if self.data.val else None

    def test_batches(self, micro_batch_size: int) -> list[Batch]:
        return fixed_batches(self.data.test, micro_batch_size, self._collate)

    def loss(self, module: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = module(batch["ids"], batch["last"]).float()  # (B, K)
        weight = None if self.weights is None else self.weights.to(logits.device)
        loss = F.cross_entropy(logits, batch["labels"], weight=weight)
        accuracy = (logits.argmax(-1) == batch["labels"]).float().mean()
        return loss, {"accuracy": accuracy.detach()}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {**super().checkpoint_extra(), "classifier": self.spec}
