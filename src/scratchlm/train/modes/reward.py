"""Training a reward model (`scratchlm.model.classifier.RewardModel`) on chosen/rejected pairs, Bradley-Terry.

    prompt + chosen   --template--> ids --GPT--> hidden at the last real token --head--> r_w
    prompt + rejected --template--> ids --GPT--> hidden at the last real token --head--> r_l
    P(chosen preferred) = sigmoid(r_w - r_l)        (Bradley-Terry)
    loss = -log sigmoid(r_w - r_l)                   mean over pairs

Both sides of a micro-batch run as one (2B, T) forward. Logged: the loss, the pair accuracy mean(r_w > r_l) and
the margin mean(r_w - r_l). The data is the project's preference format, read by the same `load_preferences` as
DPO, and the chat template goes into the checkpoint, so scoring renders prompts exactly as training did.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.data.finetune import load_preferences
from scratchlm.errors import ScratchlmError
from scratchlm.model.classifier import RewardModel
from scratchlm.model.lora import LoRAConfig
from scratchlm.model.prefix import PrefixConfig
from scratchlm.tokenizer.chat import ChatTemplate
from scratchlm.train.modes.base import Batch
from scratchlm.train.modes.classify import TRAINABLE, prepare_head_model
from scratchlm.train.modes.dpo import PairBatches
from scratchlm.train.modes.finetune import FinetuneMode
from scratchlm.train.modes.sft import prepare_chat_model, split_val


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(r_w - r_l) over pairs; chosen and rejected scores are (B,) each."""
    return -F.logsigmoid(chosen - rejected).mean()


def collate_pairs(pairs: Sequence[dict[str, Any]], pad_id: int) -> Batch:
    """ids (2B, T): the B chosen texts, then the B rejected ones, right-padded; last (2B,): each last real token."""
    seqs = [p["chosen_ids"] for p in pairs] + [p["rejected_ids"] for p in pairs]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return {"ids": ids, "last": torch.tensor([len(s) - 1 for s in seqs], dtype=torch.long)}


class RewardMode(PairBatches, FinetuneMode):
    name = "reward"

    def __init__(
        self,
        data: str | Path,
        template: ChatTemplate,
        max_length: int = 512,
        val_fraction: float = 0.1,
        data_seed: int = 0,
        drop_equal: bool = False,
        train: str = "all",
        last_k: int = 1,
        lora: LoRAConfig | None = None,
        base_checkpoint: str | None = None,
        prefix: PrefixConfig | None = None,
        prefix_kind: str = "prefix",
    ) -> None:
        super().__init__(lora, base_checkpoint, prefix, prefix_kind)
        if train not in TRAINABLE:
            raise ScratchlmError(f"--train {train!r} is unknown; use one of {', '.join(TRAINABLE)}")
        self._set_data(data, template, max_length, val_fraction, data_seed, drop_equal)
        self.train, self.last_k = train, last_k

    def setup(self, model: nn.Module, tokenizer: Any) -> nn.Module:
        prepare_chat_model(model, tokenizer, self.template)  # type: ignore[arg-type]
        # max_length + 1: load_preferences keeps one token more for the LM's shift; a reward model reads them all
        pairs = load_preferences(self.data_path, tokenizer, self.template, self.max_length - 1, self.drop_equal)
        self.pad_id = tokenizer.eot_id if tokenizer.eot_id is not None else 0
        self.train_pairs, self.val_pairs = split_val(pairs, self.val_fraction, self.data_seed)
        module = RewardModel(model)  # type: ignore[arg-type]
        prepare_head_model(self, module, self.train, self.last_k)
        return module

    def _collate(self, pairs: list[dict[str, Any]]) -> Batch:
        return collate_pairs(pairs, self.pad_id)

    def loss(self, module: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        scores = module(batch["ids"], batch["last"]).float()  # (2B,)
        B = scores.shape[0] // 2
        chosen, rejected = scores[:B], scores[B:]
        margin = (chosen - rejected).detach()
        return bradley_terry_loss(chosen, rejected), {
            "accuracy": (margin > 0).float().mean(),
            "margin": margin.mean(),
        }

    def tokens_in(self, batch: Batch) -> int:
        return int(batch["ids"].numel())

    def checkpoint_extra(self) -> dict[str, Any]:
        return {
            **super().checkpoint_extra(),
            "chat_template": self.template.to_dict(),
            "reward": {"max_length": self.max_length, "pad_id": self.pad_id, "train": self.train,
                       "last_k": self.last_k},
        }
