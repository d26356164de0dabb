"""Inference-time scaling: draw several samples, return one. Self-consistency and best-of-N.

    --n N --vote majority          N samples; each one's final answer (last \\boxed{}, else last number) is
                                   extracted; the answer most samples agree on (SymPy equality) wins, and its
                                   first sample is returned (Wang et al., 2022, "self-consistency")
    --best-of N --scorer logprob   N samples; the one with the highest MEAN token log-probability under the model
                                   (the sum would favour short answers)
    --best-of N --scorer reward:RM N samples; the one the reward model scores highest

The samples come from the one engine (`complete` with n = N, several prompts per batch); `sample_rows` draws
and chooses for a list of prompt records (`generate` and `eval verify` use it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from scratchlm.errors import ConfigError
from scratchlm.generate.chat import chat_prompt
from scratchlm.generate.config import SampleConfig
from scratchlm.generate.text import Completion, complete
from scratchlm.rl.mathanswer import answers_equal, extract_answer
from scratchlm.rl.records import prompt_messages
from scratchlm.tokenizer.chat import ChatTemplate

VOTES = ("none", "majority")


@dataclass(kw_only=True)
class SelectConfig:
    """How one answer is chosen among several samples (flags shared by generate and eval verify)."""

    vote: str = "none"
    """none, or majority: the final answer most of the --n samples agree on (self-consistency)."""
    best_of: int = 0
    """Draw this many samples and keep the best by --scorer (0: off)."""
    scorer: str = "logprob"
    """For --best-of: logprob (the sample's mean token log-probability) or reward:RM_PATH (a reward model)."""

    def __post_init__(self) -> None:
        if self.vote not in VOTES:
            raise ConfigError(f"--vote {self.vote!r} is unknown; use one of {', '.join(VOTES)}")
        if self.best_of < 0:
            raise ConfigError(f"--best-of must be >= 0 (0 is off), got {self.best_of}")
        if self.best_of and self.vote != "none":
            raise ConfigError("--vote and --best-of both choose among samples; pass one of them")
        if self.scorer != "logprob" and not (self.scorer.startswith("reward:") and len(self.scorer) > 7):
            raise ConfigError(f"--scorer {self.scorer!r} is unknown; use logprob or reward:RM_PATH")

    @property
    def active(self) -> bool:
        return self.vote != "none" or self.best_of > 0

    def samples(self, n: int) -> int:
        """Samples to draw per prompt: --best-of N, else --n."""
        return self.best_of or n


def mean_logprob(completion: Any) -> float:
    """The mean log-probability of a completion's tokens (its `.logprobs`); -inf for an empty one."""
    if not completion.logprobs:
        return -math.inf
    return sum(t.logprob for t in completion.logprobs) / len(completion.logprobs)


def majority_vote(texts: Sequence[str]) -> tuple[int, list[int]]:
    """(index of the chosen sample, votes per sample's answer group). Samples with no answer never win unless
    none has one (then the first); ties go to the answer seen first."""
    groups: list[tuple[str, list[int]]] = []  # (representative answer, member indices)
    for i, text in enumerate(texts):
        answer = extract_answer(text)
        if answer is None:
            continue
        for rep, members in groups:
            if answers_equal(answer, rep):
                members.append(i)
                break
        else:
            groups.append((answer, [i]))
    votes = [0] * len(texts)
    for _, members in groups:
        for i in members:
            votes[i] = len(members)
    if not groups:
        return 0, votes
    best = max(groups, key=lambda g: len(g[1]))  # max keeps the first of equal groups
    return best[1][0], votes


class Selector:
    """Chooses one completion per prompt according to a SelectConfig; loads the reward model once if needed."""

    def __init__(self, config: SelectConfig, tokenizer: Any = None, device: Any = None) -> None:
        self.config = config
        self.reward = None
        if config.best_of and config.scorer.startswith("reward:"):
            from scratchlm.rl.reward import RewardScorer

            self.reward = RewardScorer(config.scorer.split(":", 1)[1], device)
            if tokenizer is not None:
                self.reward.check_tokenizer(tokenizer, "the model that samples")

    @property
    def needs_logprobs(self) -> bool:
        return bool(self.config.best_of) and self.reward is None

    def choose(
        self, completions: Sequence[Completion], messages: Sequence[Mapping[str, str]] | None = None
    ) -> tuple[int, list[float] | None]:
        """(index of the chosen completion, the per-sample scores or votes behind the choice; None for none)."""
        texts = [c.text for c in completions]
        if self.config.vote == "majority":
            i, votes = majority_vote(texts)
            return i, [float(v) for v in votes]
        if not self.config.best_of:
            return 0, None
        if self.reward is not None:
            prompt = list(messages or [])
            scores = self.reward.score_completions([(prompt, t) for t in texts])
        else:
            scores = [mean_logprob(c) for c in completions]
        return max(range(len(scores)), key=lambda i: scores[i]), scores


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def sample_rows(
    model: nn.Module,
    tokenizer: Any,
    template: ChatTemplate | None,
    records: Sequence[dict[str, Any]],
    sample: SampleConfig,
    selector: Selector,
    batch_size: int = 8,
) -> Iterator[dict[str, Any]]:
    """Rows (without rewards) for `records`: n samples each, `batch_size` records per engine run.

    `template` None: the prompt text is continued as it is (a base model's few-shot prompt).
    """
    sample = dataclasses.replace(sample, n=selector.config.samples(sample.n))
    if selector.needs_logprobs and sample.logprobs is None:
        sample = dataclasses.replace(sample, logprobs=0)
    stop_ids = None
    if template is not None:
        sample = dataclasses.replace(sample, stop=[*template.stop_strings, *sample.stop])
        stop_ids = template.stop_ids(tokenizer)
    for s in range(0, len(records), batch_size):
        chunk = records[s : s + batch_size]
        messages = [prompt_messages(r, template) for r in chunk]
        if template is not None:
            prompts: list[Any] = [chat_prompt(template, tokenizer, m).ids for m in messages]
        else:
            prompts = ["\n\n".join(x["content"] for x in m) for m in messages]
        drawn = complete(model, tokenizer, prompts, sample, stop_ids)
        for i, (record, msgs, samples) in enumerate(zip(chunk, messages, drawn)):
            chosen, scores = selector.choose(samples, msgs)
            yield {
                "index": s + i,
                "record": record,
                "completions": [c.text for c in samples],
                "finish_reasons": [c.finish_reason for c in samples],
                "chosen": chosen,
                "selection_scores": None if scores is None else [_finite(x) for x in scores],  # votes or scores
                "completion": samples[chosen].text,
            }
