"""Instruction tuning (SFT): next-token loss on the responses of chat/Alpaca examples, through the one loop.

    messages --ChatTemplate--> ids + loss mask --collate--> ids (B, T), targets (B, T) with IGNORE on
    prompt and padding tokens --GPT--> logits (B, T, V) --cross-entropy over the learned targets--> loss

Setup adds the template's control tokens to the tokenizer and grows the embeddings to fit (new rows start at
the mean embedding); the template goes into the checkpoint (`chat_template`), so `generate`, `chat` and
`serve` format prompts exactly as training did.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchlm.data.finetune import (
    EpochBatches,
    collate_sft,
    fixed_batches,
    load_instructions,
    pack_examples,
)
from scratchlm.errors import ScratchlmError
from scratchlm.model import GPT
from scratchlm.model.lora import LoRAConfig
from scratchlm.model.prefix import PrefixConfig
from scratchlm.model.vocab import resize_vocab
from scratchlm.tokenizer.chat import ChatTemplate
from scratchlm.train.modes.base import Batch, BatchStream
from scratchlm.train.modes.finetune import FinetuneMode


def prepare_chat_model(model: GPT, tokenizer: Any, template: ChatTemplate) -> None:
    """Add the template's control tokens to the tokenizer and resize the model's vocabulary to hold them."""
    template.add_special_tokens(tokenizer)
    resize_vocab(model, tokenizer.vocab_size)


def split_val(examples: list[Any], val_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Shuffle (by seed) and hold out a validation fraction (at least one example when the fraction is > 0)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(len(order) * val_fraction)) if val_fraction > 0 and len(order) > 1 else 0
    return [examples[i] for i in order[n_val:]], [examples[i] for i in order[:n_val]]


class SFTMode(FinetuneMode):
    name = "sft"

    def __init__(
        self,
        data: str | Path,
        template: ChatTemplate,
        max_length: int = 512,
        mask_prompt: bool = True,
        pack: bool = False,
        group_by_length: bool = True,
        val_fraction: float = 0.05,
        data_seed: int = 0,
        lora: LoRAConfig | None = None,
        base_checkpoint: str | None = None,
        prefix: PrefixConfig | None = None,
        prefix_kind: str = "prefix",
    ) -> None:
        super().__init__(lora, base_checkpoint, prefix, prefix_kind)
        self.data_path, self.template, self.max_length = Path(data), template, max_length
        self.mask_prompt, self.pack, self.group_by_length = mask_prompt, pack, group_by_length
        self.val_fraction, self.data_seed = val_fraction, data_seed
        self.train_examples: list[dict[str, list[int]]] = []
        self.val_examples: list[dict[str, list[int]]] = []
        self.pad_id = 0

    @property
    def context_length(self) -> int:
        return self.max_length

    def load_data(self, tokenizer: Any) -> None:
        """Encode the data file with the (already extended) tokenizer; split; pack if asked."""
        examples = load_instructions(self.data_path, tokenizer, self.template, self.max_length, self.mask_prompt)
        train, val = split_val(examples, self.val_fraction, self.data_seed)
        if self.pack:
            train = pack_examples(train, self.max_length)
        self.train_examples, self.val_examples = train, val
        self.pad_id = tokenizer.eot_id if tokenizer.eot_id is not None else 0

    def setup(self, model: nn.Module, tokenizer: Any) -> nn.Module:
        if model.config.context_length < self.max_length:  # type: ignore[union-attr]
            raise ScratchlmError(
                f"--max-length {self.max_length} exceeds the model's context length "
                f"{model.config.context_length}; lower it"  # type: ignore[union-attr]
            )
        prepare_chat_model(model, tokenizer, self.template)  # type: ignore[arg-type]
        self.load_data(tokenizer)
        self.apply_adapters(model)  # type: ignore[arg-type]
        return model

    def _collate(self, examples: list[dict[str, list[int]]]) -> Batch:
        return collate_sft(examples, self.pad_id)

    def train_batches(self, micro_batch_size: int, seed: int, rank: int, world_size: int) -> BatchStream:
        lengths = [len(ex["ids"]) for ex in self.train_examples] if self.group_by_length and not self.pack else None
        return EpochBatches(self.train_examples, micro_batch_size, self._collate, seed, rank, world_size, lengths)

    def val_batches(self, micro_batch_size: int) -> Iterable[Batch] | None:
        return fixed_batches(self.val_examples, micro_batch_size, self._collate) if self.val_examples else None

    def loss(self, module: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        # packed rows pass positions; the mean is over the answer tokens (the prompt's targets are IGNORE)
        return module(batch["ids"], positions=batch.get("positions"), targets=batch["targets"], reduction="mean"), {}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {**super().checkpoint_extra(), "chat_template": self.template.to_dict()}
