"""Group Relative Policy Optimization (GRPO; Shao et al., 2024, DeepSeekMath) as a mode of the one loop.

For each prompt x of a micro-batch, k completions o_1..o_k are sampled from the current policy with the
sampling engine (`generate.complete`) and scored by a verifier, rewards r_1..r_k in [0, 1]. Then

    A_i = r_i - mean(r)                      group-relative advantage (`/ (std(r) + 1e-4)` with std_normalize;
                                             std is the sample standard deviation, n - 1, as TRL)
    ratio_it = exp(logp_it - old_logp_it)    per completion token t; old = the policy that sampled
    pg_it = -min(ratio_it * A_i, clip(ratio_it, 1 - eps, 1 + eps) * A_i)       PPO's clipped surrogate
    kl_it = exp(ref_it - logp_it) - (ref_it - logp_it) - 1                       k3 estimator, >= 0
    l_it = pg_it + kl_coef * kl_it
    loss = mean_i (sum_t l_it / |o_i|)       loss_norm "sequence" (GRPO's)
         = sum_it l_it / sum_i |o_i|         loss_norm "token" (DAPO's: long answers weigh more)

Decisions:
- A rollout is one micro-batch of prompts times k completions; the stream yields it `updates` times in a row
  (one optimizer step each, several PPO updates per batch). With one update, old_logp is the policy's own
  log-probability detached, so the ratio is exactly 1 and no extra forward runs; with more, the sampling
  policy's log-probabilities are computed once, in the stream, right after sampling.
- Groups whose k rewards are all equal have advantage 0 everywhere: they are dropped before the batch is built
  (no forward, and they do not dilute the normalisation, so a skipped group changes nothing). When a whole
  micro-batch is skipped the stream samples the next one (their rewards still count in the logged means).
- The KL reference is a frozen copy of the starting model (kept only when kl_coef > 0), so the KL term is 0
  while the policy equals it. log-probabilities use the raw logits (temperature 1): sample at temperature 1
  for the ratio to be the importance weight it claims to be.
- Exact resume: the sampling seed of a rollout is a function of the run seed and the rollout's index (prompt j
  of a rollout samples from seed + j * k: its own draws), the prompt order is `EpochBatches`', and a rollout
  with updates still to go is stored in the stream's state.

What it does not know: how a reward is computed (a `reward(record, completion) -> (reward, error)` callable,
`scratchlm.rl.verifiers.safe_reward` over a verifier), argv, or the optimizer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.data.finetune import IGNORE, EpochBatches, read_records
from scratchlm.errors import ScratchlmError
from scratchlm.model.lora import LoRAConfig
from scratchlm.tokenizer.chat import ChatTemplate
from scratchlm.train.modes.base import Batch, BatchStream
from scratchlm.train.modes.finetune import FinetuneMode
from scratchlm.train.modes.sft import prepare_chat_model

Reward = Callable[[dict, str], "tuple[float, str | None]"]
LOSS_NORMS = ("sequence", "token")
MAX_DRAWS = 64
"""Micro-batches of prompts sampled in a row, all of whose groups had equal rewards, before giving up."""
PASS_REWARD = 0.5
"""A completion with at least this reward counts as a pass (verifiers give 0 or 1)."""


# ---- the objective (pure functions) -------------------------------------------------------------------------


def group_advantages(rewards: torch.Tensor, std_normalize: bool = False, eps: float = 1e-4) -> torch.Tensor:
    """rewards (G, k) -> advantages (G, k): minus the group mean, divided by (sample std + eps) if asked."""
    adv = rewards - rewards.mean(dim=1, keepdim=True)
    if std_normalize:
        adv = adv / (rewards.std(dim=1, keepdim=True) + eps)
    return adv


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and the entropy of each position, both (B, T) float32, 0 where the target is IGNORE."""
    logp_all = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    mask = targets != IGNORE
    logps = logp_all.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask  # (B, T)
    entropy = -(logp_all.exp() * logp_all).sum(-1) * mask  # (B, T)
    return logps, entropy


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    kl_coef: float = 0.0,
    loss_norm: str = "sequence",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, {kl, clip_fraction}) from per-token log-probabilities (B, T), advantages (B,) and mask (B, T).

    See the module docstring for the formula. kl is the mean k3 estimate over completion tokens (0 without a
    reference); clip_fraction the share of tokens whose ratio left [1 - eps, 1 + eps].
    """
    mask = mask.float()
    ratio = torch.exp(logps - old_logps)  # (B, T)
    adv = advantages[:, None]  # (B, 1)
    per_token = -torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)  # (B, T)
    kl = torch.zeros_like(per_token)
    if ref_logps is not None:
        log_ratio = ref_logps - logps
        kl = torch.exp(log_ratio) - log_ratio - 1
        per_token = per_token + kl_coef * kl
    n_tokens = mask.sum()
    if loss_norm == "token":
        loss = (per_token * mask).sum() / n_tokens.clamp(min=1)
    else:
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    clipped = ((ratio < 1 - clip_eps) | (ratio > 1 + clip_eps)).float()
    stats = {
        "kl": ((kl * mask).sum() / n_tokens.clamp(min=1)).detach(),
        "clip_fraction": ((clipped * mask).sum() / n_tokens.clamp(min=1)).detach(),
    }
    return loss, stats


# ---- the mode -----------------------------------------------------------------------------------------------


class GRPOMode(FinetuneMode):
    name = "grpo"

    def __init__(
        self,
        data: str | Path,
        template: ChatTemplate,
        reward: Reward,
        k: int = 8,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_k: int = 0,
        std_normalize: bool = False,
        loss_norm: str = "sequence",
        kl_coef: float = 0.0,
        clip_eps: float = 0.2,
        updates: int = 1,
        lora: LoRAConfig | None = None,
        base_checkpoint: str | None = None,
    ) -> None:
        super().__init__(lora, base_checkpoint)
        if k < 2:
            raise ScratchlmError(
                f"--k {k}: GRPO compares the k completions of a prompt with each other, so with one the advantage "
                "is always 0 and nothing trains; use --k 2 or more (8 is typical)"
            )
        if loss_norm not in LOSS_NORMS:
            raise ScratchlmError(f"--loss-norm {loss_norm!r} is unknown; choose {' or '.join(LOSS_NORMS)}")
        if updates < 1:
            raise ScratchlmError(f"--updates must be at least 1, got {updates}")
        if kl_coef < 0 or clip_eps <= 0:
            raise ScratchlmError(f"--kl-coef must be >= 0 and --clip-eps > 0, got {kl_coef} and {clip_eps}")
        self.data_path, self.template, self.reward = Path(data), template, reward
        self.k, self.max_new_tokens, self.temperature, self.top_k = k, max_new_tokens, temperature, top_k
        self.std_normalize, self.loss_norm = std_normalize, loss_norm
        self.kl_coef, self.clip_eps, self.updates = kl_coef, clip_eps, updates
        self.prompts: list[dict[str, Any]] = []
        self.policy: nn.Module | None = None
        self.reference: nn.Module | None = None
        self.tokenizer: Any = None
        self.context = 0

    @property
    def context_length(self) -> int:
        return self.context

    def setup(self, model: nn.Module, tokenizer: Any) -> nn.Module:
        prepare_chat_model(model, tokenizer, self.template)  # type: ignore[arg-type]
        self.tokenizer, self.context = tokenizer, model.config.context_length  # type: ignore[union-attr]
        self.prompts = load_prompts(self.data_path, tokenizer, self.template, self.context)
        if self.kl_coef > 0:  # the starting model, before adapters: what the KL term holds the policy near
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.apply_adapters(model)  # type: ignore[arg-type]
        self.policy = model
        return model

    def train_batches(self, micro_batch_size: int, seed: int, rank: int, world_size: int) -> BatchStream:
        prompts = EpochBatches(self.prompts, micro_batch_size, list, seed, rank, world_size)  # type: ignore[arg-type]
        return Rollouts(self, prompts, seed, rank)

    def loss(self, module: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        targets = batch["targets"]
        logps, entropy = token_logps(module(batch["ids"]), targets)  # (N, T) each
        mask = targets != IGNORE
        old = batch["old_logps"] if "old_logps" in batch else logps.detach()
        loss, stats = grpo_loss(logps, old, batch.get("ref_logps"), batch["advantages"], mask, self.clip_eps,
                                self.kl_coef, self.loss_norm)
        stats["entropy"] = entropy.detach().sum() / mask.sum().clamp(min=1)
        stats.update({k[len("stat_"):]: v for k, v in batch.items() if k.startswith("stat_")})
        return loss, stats

    def checkpoint_extra(self) -> dict[str, Any]:
        return {**super().checkpoint_extra(), "chat_template": self.template.to_dict(),
                "grpo": {"k": self.k, "kl_coef": self.kl_coef, "clip_eps": self.clip_eps,
                         "loss_norm": self.loss_norm, "std_normalize": self.std_normalize, "updates": self.updates}}

    # -- rollouts -------------------------------------------------------------------------------------------------

    def stop_strings(self) -> list[str]:
        """Where an answer ends: the template's stop strings, plus its assistant end marker when that is plain
        text (the plain template's newline); a template with stop tokens stops on those."""
        suffix = self.template.assistant_suffix
        plain_end = [suffix] if suffix and not self.template.stop else []
        return [*self.template.stop_strings, *plain_end]

    @torch.no_grad()
    def rollout(self, records: list[dict[str, Any]], seed: int) -> tuple[Batch | None, dict[str, float]]:
        """Sample k completions per prompt, score them; (the batch of the groups kept or None, rollout stats)."""
        from scratchlm.generate import SampleConfig
        from scratchlm.generate.text import complete

        assert self.policy is not None
        stops = self.stop_strings()
        stop_ids = self.template.stop_ids(self.tokenizer)
        config = SampleConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                              stop=stops, seed=seed, n=self.k)
        # one seed per prompt: with config.seed alone, sample i of every prompt would draw the same uniforms
        seeds = [seed + j * self.k for j in range(len(records))]
        groups = complete(self.policy, self.tokenizer, [r["ids"] for r in records], config, stop_ids=stop_ids,
                          seeds=seeds)
        rows, rewards, errors, lengths = [], [], 0, []
        for rec, group in zip(records, groups):
            for c in group:
                r, err = self.reward(rec["record"], c.text)
                errors += err is not None
                ids = list(c.ids)
                # a stop token ends the sequence without being in `ids`: train it, so the policy learns to stop
                if c.finish_reason == "stop" and stop_ids and not any(
                        s in self.tokenizer.decode(ids) for s in stops):
                    ids.append(stop_ids[0])
                rows.append((rec["ids"], ids))
                rewards.append(r)
                lengths.append(len(ids))
        R = torch.tensor(rewards, dtype=torch.float32).view(len(records), self.k)  # (P, k)
        keep = (R.max(dim=1).values > R.min(dim=1).values).tolist()  # all-equal groups carry no signal
        stats = {"reward_mean": float(R.mean()), "pass_at_1": float((R >= PASS_REWARD).float().mean()),
                 "response_length": sum(lengths) / len(lengths), "skipped_groups": keep.count(False),
                 "groups": len(keep), "reward_errors": errors}
        if not any(keep):
            return None, stats
        adv = group_advantages(R, self.std_normalize)
        kept_rows = [rows[g * self.k + i] for g in range(len(keep)) if keep[g] for i in range(self.k)]
        batch = collate_rollout(kept_rows, self.tokenizer.eot_id or 0)
        batch["advantages"] = adv[torch.tensor(keep)].reshape(-1)  # (N,)
        device = next(self.policy.parameters()).device
        if self.reference is not None:
            self.reference.to(device)
            batch["ref_logps"] = self._logps(self.reference, batch, device)
        if self.updates > 1:
            was_training = self.policy.training
            self.policy.eval()
            batch["old_logps"] = self._logps(self.policy, batch, device)
            self.policy.train(was_training)
        return batch, stats

    @staticmethod
    def _logps(model: nn.Module, batch: Batch, device: torch.device) -> torch.Tensor:
        logps, _ = token_logps(model(batch["ids"].to(device)), batch["targets"].to(device))
        return logps.cpu()


def load_prompts(path: Path, tokenizer: Any, template: ChatTemplate, context: int) -> list[dict[str, Any]]:
    """Each record's prompt ({"prompt": text} or {"messages": [...]} without the answer) encoded for generation.

    A prompt that leaves no room for an answer in the model's context is an error naming the record.
    """
    out = []
    for i, rec in enumerate(read_records(path)):
        if "answer" not in rec:
            raise ScratchlmError(f"{path}: record {i} has no 'answer' field; the verifier compares against it")
        if isinstance(rec.get("messages"), list):
            messages = [m for m in rec["messages"] if m.get("role") != "assistant"]
        elif isinstance(rec.get("prompt"), str):
            messages = [{"role": "user", "content": rec["prompt"]}]
        else:
            raise ScratchlmError(f"{path}: record {i} has no 'prompt' text (or 'messages' list); add one")
        ids, _ = template.encode_messages(tokenizer, messages, add_generation_prompt=True)
        if len(ids) >= context:
            raise ScratchlmError(
                f"{path}: record {i}'s prompt is {len(ids)} tokens but the model's context is {context}, leaving "
                "no room for an answer; shorten or drop that prompt"
            )
        out.append({"record": rec, "ids": ids})
    return out


def collate_rollout(rows: list[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    """(prompt ids, completion ids) pairs -> right-padded ids (N, T) and targets (N, T), IGNORE off the answer."""
    seqs = [(p + c)[:-1] for p, c in rows]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)  # (N, T)
    targets = torch.full((len(rows), T), IGNORE, dtype=torch.long)  # (N, T)
    for n, ((p, c), s) in enumerate(zip(rows, seqs)):
        ids[n, : len(s)] = torch.tensor(s)
        targets[n, len(p) - 1 : len(p) - 1 + len(c)] = torch.tensor(c, dtype=torch.long)
    return {"ids": ids, "targets": targets}


class Rollouts:
    """The mode's batch stream: each rollout `updates` times in a row; resumable (see the module docstring)."""

    def __init__(self, mode: GRPOMode, prompts: EpochBatches, seed: int, rank: int) -> None:
        self.mode, self.prompts, self.seed, self.rank = mode, prompts, seed, rank
        self.drawn = 0  # micro-batches of prompts sampled so far: the next one's seed derives from it
        self.pending: Batch | None = None
        self.left = 0  # updates still to do on `pending`

    def __iter__(self) -> Rollouts:
        return self

    def __next__(self) -> Batch:
        if self.left == 0:
            self.pending, self.left = self._draw(), self.mode.updates
        assert self.pending is not None
        self.left -= 1
        return dict(self.pending)

    def _draw(self) -> Batch:
        totals: dict[str, float] = {}
        for _ in range(MAX_DRAWS):
            seed = (self.seed * 1_000_003 + self.drawn * 1_009 + self.rank) % 2**62
            self.drawn += 1
            batch, stats = self.mode.rollout(next(self.prompts), seed)
            n = totals.get("groups", 0.0)
            for key in ("reward_mean", "pass_at_1", "response_length"):  # means over every group sampled
                totals[key] = (totals.get(key, 0.0) * n + stats[key] * stats["groups"]) / (n + stats["groups"])
            for key in ("groups", "skipped_groups", "reward_errors"):
                totals[key] = totals.get(key, 0.0) + stats[key]
            if batch is not None:
                batch.update({f"stat_{k}": torch.tensor(float(v)) for k, v in totals.items() if k != "groups"})
                batch["stat_skipped_groups"] = torch.tensor(totals["skipped_groups"] / totals["groups"])
                return batch
        raise ScratchlmError(
            f"every group of {MAX_DRAWS} micro-batches of prompts had k equal rewards (all solved or all failed), "
            "so GRPO has nothing to learn from; use prompts of the right difficulty, a higher --temperature or --k"
        )

    def state_dict(self) -> dict[str, Any]:
        pending = None
        if self.left and self.pending is not None:
            pending = {k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape),
                           "data": v.reshape(-1).tolist()} for k, v in self.pending.items()}
        return {"prompts": self.prompts.state_dict(), "drawn": self.drawn, "left": self.left, "pending": pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prompts.load_state_dict(state["prompts"])
        self.drawn, self.left = int(state["drawn"]), int(state["left"])
        self.pending = None
        if state["pending"] is not None:  # float32 -> Python float -> JSON -> float32 is exact
            self.pending = {k: torch.tensor(v["data"], dtype=getattr(torch, v["dtype"])).reshape(v["shape"])
                            for k, v in state["pending"].items()}
