"""Direct Preference Optimization (Rafailov et al., 2023) as a mode of the one loop.

For a prompt x with a chosen answer y_w and a rejected answer y_l, a policy pi (trained) and a frozen
reference pi_ref (the starting model):

    r_w = beta * (log pi(y_w|x) - log pi_ref(y_w|x))        implicit reward of the chosen answer
    r_l = beta * (log pi(y_l|x) - log pi_ref(y_l|x))        ... and of the rejected one
    loss = -log sigmoid(r_w - r_l)                          mean over pairs

log pi(y|x) is the SUM of the answer tokens' log-probabilities (prompt and padding excluded by the targets'
IGNORE). Logged: the loss, the reward margin mean(r_w - r_l) and the preference accuracy mean(r_w > r_l).

The reference never changes, so its log-probabilities are computed once at setup, from the starting model
before any adapter is injected, and cached with each pair: no second model in memory, no second forward per
step. On resume, setup runs again on the same starting checkpoint and recomputes the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.data.finetune import IGNORE, EpochBatches, collate_preferences, fixed_batches, load_preferences
from scratchlm.errors import ScratchlmError
from scratchlm.model.lora import LoRAConfig
from scratchlm.model.prefix import PrefixConfig
from scratchlm.tokenizer.chat import ChatTemplate
from scratchlm.train.modes.base import Batch, BatchStream
from scratchlm.train.modes.finetune import FinetuneMode
from scratchlm.train.modes.sft import prepare_chat_model, split_val


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over each row of log p(target), skipping IGNORE targets. logits (B, T, V), targets (B, T) -> (B,)."""
    B, T, V = logits.shape
    # cross_entropy's fused log-softmax + pick is -log p(target), and exactly 0 at IGNORE targets
    nll = F.cross_entropy(logits.reshape(B * T, V).float(), targets.reshape(B * T), ignore_index=IGNORE,
                          reduction="none")  # (B*T,)
    return -nll.view(B, T).sum(-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean DPO loss, chosen rewards (B,), rejected rewards (B,)) from sequence log-probabilities (B,) each."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)  # (B,)
    rejected_rewards = beta * (policy_rejected - ref_rejected)  # (B,)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards, rejected_rewards


class PairBatches:
    """The batch streams of a preference-pair mode (DPO, reward model): `train_pairs`/`val_pairs` collated by
    the mode's `_collate`, training batches grouped by the longer side's length."""

    max_length: int
    train_pairs: list[dict[str, Any]]
    val_pairs: list[dict[str, Any]]

    def _set_data(
        self, data: str | Path, template: ChatTemplate, max_length: int, val_fraction: float, data_seed: int,
        drop_equal: bool,
    ) -> None:
        """Record where the pairs come from; `setup` reads them (it needs the tokenizer)."""
        self.data_path, self.template, self.max_length = Path(data), template, max_length
        self.val_fraction, self.data_seed, self.drop_equal = val_fraction, data_seed, drop_equal
        self.train_pairs, self.val_pairs = [], []
        self.pad_id = 0

    @property
    def context_length(self) -> int:
        return self.max_length

    def _collate(self, pairs: list[dict[str, Any]]) -> Batch:
        raise NotImplementedError

    def train_batches(self, micro_batch_size: int, seed: int, rank: int, world_size: int) -> BatchStream:
        lengths = [max(len(p["chosen_ids"]), len(p["rejected_ids"])) for p in self.train_pairs]
        return EpochBatches(self.train_pairs, micro_batch_size, self._collate, seed, rank, world_size, lengths)

    def val_batches(self, micro_batch_size: int) -> Iterable[Batch] | None:
        return fixed_batches(self.val_pairs, micro_batch_size, self._collate) if self.val_pairs else None


class DPOMode(PairBatches, FinetuneMode):
    name = "dpo"

    def __init__(
        self,
        data: str | Path,
        template: ChatTemplate,
        beta: float = 0.1,
        max_length: int = 512,
        val_fraction: float = 0.05,
        data_seed: int = 0,
        drop_equal: bool = False,
        ref_batch_size: int = 8,
        lora: LoRAConfig | None = None,
        base_checkpoint: str | None = None,
        device: str | torch.device = "cpu",
        prefix: PrefixConfig | None = None,
        prefix_kind: str = "prefix",
    ) -> None:
        super().__init__(lora, base_checkpoint, prefix, prefix_kind)
        if beta <= 0:
            raise ScratchlmError(f"--beta must be positive, got {beta}")
        self._set_data(data, template, max_length, val_fraction, data_seed, drop_equal)
        self.beta, self.ref_batch_size, self.device = beta, ref_batch_size, torch.device(device)

    def setup(self, model: nn.Module, tokenizer: Any) -> nn.Module:
        prepare_chat_model(model, tokenizer, self.template)  # type: ignore[arg-type]
        pairs = load_preferences(self.data_path, tokenizer, self.template, self.max_length, self.drop_equal)
        self.pad_id = tokenizer.eot_id if tokenizer.eot_id is not None else 0
        self.cache_reference(model, pairs)
        self.train_pairs, self.val_pairs = split_val(pairs, self.val_fraction, self.data_seed)
        self.apply_adapters(model)  # type: ignore[arg-type]
        return model

    @torch.no_grad()
    def cache_reference(self, model: nn.Module, pairs: list[dict[str, Any]]) -> None:
        """Store the starting model's log-probabilities of each pair's answers in the pair (ref_*_logps).

        Computed in float32 without autocast: under bf16 training the first step's rewards are then close to,
        not exactly, zero.
        """
        was_training = model.training
        model.eval()
        device = self.device  # the training device: the loop would move the model there next anyway
        model.to(device)
        for s in range(0, len(pairs), self.ref_batch_size):
            chunk = pairs[s : s + self.ref_batch_size]
            batch = collate_preferences(chunk, self.pad_id)
            for side in ("chosen", "rejected"):
                targets = batch[f"{side}_targets"].to(device)
                logps = -model(batch[f"{side}_ids"].to(device), targets=targets).sum(-1)
                for pair, v in zip(chunk, logps.tolist()):
                    pair[f"ref_{side}_logps"] = v
        model.train(was_training)

    def _collate(self, pairs: list[dict[str, Any]]) -> Batch:
        return collate_preferences(pairs, self.pad_id)

    def loss(self, module: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        B = batch["chosen_ids"].shape[0]
        ids = torch.cat([batch["chosen_ids"], batch["rejected_ids"]])  # (2B, T): one forward for both sides
        targets = torch.cat([batch["chosen_targets"], batch["rejected_targets"]])  # (2B, T)
        logps = -module(ids, targets=targets).sum(-1)  # (2B,): sum of the answers' log p (IGNORE gives 0)
        loss, r_w, r_l = dpo_loss(logps[:B], logps[B:], batch["ref_chosen_logps"], batch["ref_rejected_logps"],
                                  self.beta)
        margin = (r_w - r_l).detach()
        return loss, {
            "reward_margin": margin.mean(),
            "reward_accuracy": (margin > 0).float().mean(),
            "chosen_reward": r_w.detach().mean(),
            "rejected_reward": r_l.detach().mean(),
        }

    def tokens_in(self, batch: Batch) -> int:
        return int(batch["chosen_ids"].numel() + batch["rejected_ids"].numel())

    def checkpoint_extra(self) -> dict[str, Any]:
        return {**super().checkpoint_extra(), "chat_template": self.template.to_dict(),
                "dpo": {"beta": self.beta}}
