"""Scoring texts with a reward-model checkpoint (`scratchlm finetune reward`), and the `reward:RM_PATH` verifier.

    prompt messages + completion --RM's chat template--> ids --RewardModel--> score (any real number)
    verifier reward = sigmoid(score)  in (0, 1)

The prompt is rendered with the template stored in the reward checkpoint, the way its training pairs were, and
texts longer than the reward model's `max_length` keep their first `max_length` tokens, as in training.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from scratchlm.errors import ScratchlmError
from scratchlm.rl.records import prompt_messages


def vocabulary_identity(tokenizer: Any) -> str:
    """A hash of the regular vocabulary (the bytes of each regular id): equal means ids mean the same text.

    Special tokens are left out: a chat template adds its own, and texts are scored through the template anyway.
    """
    h = hashlib.sha256(f"{tokenizer.kind}:{tokenizer.n_regular}".encode())
    for i in range(tokenizer.n_regular):
        b = tokenizer.token_bytes(i)
        h.update(len(b).to_bytes(4, "little") + b)
    return h.hexdigest()


class RewardScorer:
    """A loaded reward model: `score(texts)` for raw texts, `score_completions(pairs)` for (prompt, answer)."""

    def __init__(self, path: str | os.PathLike[str], device: Any = None, batch_size: int = 16) -> None:
        from scratchlm import checkpoint
        from scratchlm.device import resolve_device
        from scratchlm.tokenizer.chat import ChatTemplate

        self.path, self.batch_size = path, batch_size
        self.device = resolve_device("auto" if device is None else str(device))
        loaded = checkpoint.read(path, self.device, expect="reward")
        self.model, self.tokenizer, self.step = loaded.model.requires_grad_(False), loaded.tokenizer, loaded.step
        section = loaded.config["reward"]
        self.max_length, self.pad_id = int(section["max_length"]), int(section["pad_id"])
        self.template = ChatTemplate.from_config(loaded.config.get("chat_template"))

    def encode(self, messages: Sequence[Mapping[str, str]], completion: str) -> list[int]:
        ids, _ = self.template.encode_messages(self.tokenizer, [*messages, {"role": "assistant", "content": completion}])
        return ids[: self.max_length]

    @torch.no_grad()
    def score_ids(self, seqs: Sequence[list[int]]) -> list[float]:
        """One score per id sequence, batched, right-padded (the head reads each sequence's last real token)."""
        scores: list[float] = []
        for s in range(0, len(seqs), self.batch_size):
            chunk = seqs[s : s + self.batch_size]
            T = max(len(q) for q in chunk)
            ids = torch.full((len(chunk), T), self.pad_id, dtype=torch.long)
            for i, q in enumerate(chunk):
                ids[i, : len(q)] = torch.tensor(q, dtype=torch.long)
            last = torch.tensor([len(q) - 1 for q in chunk], dtype=torch.long)
            scores += self.model(ids.to(self.device), last.to(self.device)).float().tolist()
        return scores

    def score(self, texts: Sequence[str]) -> list[float]:
        """Scores of raw texts, tokenized as they are (no template)."""
        seqs = [self.tokenizer.encode(t, allowed_special="all")[: self.max_length] or [self.pad_id] for t in texts]
        return self.score_ids(seqs)

    def score_completions(self, pairs: Sequence[tuple[Sequence[Mapping[str, str]], str]]) -> list[float]:
        """Scores of (prompt messages, completion) pairs, rendered with the reward model's chat template."""
        return self.score_ids([self.encode(m, c) for m, c in pairs])

    def check_tokenizer(self, tokenizer: Any, where: str = "the policy") -> None:
        """A one-line error when `tokenizer` has another vocabulary than the reward model's."""
        if vocabulary_identity(tokenizer) != vocabulary_identity(self.tokenizer):
            raise ScratchlmError(
                f"the reward model {self.step} was trained with another tokenizer than {where} "
                f"({self.tokenizer.kind}, {self.tokenizer.n_regular} regular tokens vs {tokenizer.kind}, "
                f"{tokenizer.n_regular}); train the reward model from a checkpoint of the same family "
                "(scratchlm finetune reward --checkpoint ...)"
            )


class RewardVerifier:
    """The `reward:RM_PATH` verifier: sigmoid of the reward model's score of the record's prompt + completion."""

    def __init__(self, path: str, device: Any = None) -> None:
        self.scorer = RewardScorer(path, device)

    def score(self, record: dict, completion: str) -> float:
        """The raw score (a real number), for best-of-N ranking."""
        return self.scorer.score_completions([(prompt_messages(record, self.scorer.template), completion)])[0]

    def __call__(self, record: dict, completion: str) -> float:
        return 0.5 * (1.0 + math.tanh(self.score(record, completion) / 2))  # sigmoid, no overflow

    def check_tokenizer(self, tokenizer: Any, where: str = "the policy") -> None:
        self.scorer.check_tokenizer(tokenizer, where)


def pair_accuracy(scorer: RewardScorer, pairs: Sequence[Mapping[str, list[int]]]) -> dict[str, float]:
    """Held-out preference accuracy: the fraction of pairs whose chosen ids score above the rejected ids."""
    chosen = scorer.score_ids([p["chosen_ids"] for p in pairs])
    rejected = scorer.score_ids([p["rejected_ids"] for p in pairs])
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {"pairs": len(pairs), "accuracy": sum(m > 0 for m in margins) / max(1, len(pairs)),
            "mean_margin": sum(margins) / max(1, len(pairs))}
