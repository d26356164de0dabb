"""Few-shot multiple choice, scored by log-likelihood as lm-evaluation-harness does.

An item is a context, a list of choices and the index of the right one (`MCItem`; the JSONL schema is in
`docs/eval.md`). The prompt for an item is

    description + (shot.context + " " + shot.right_choice + "\\n\\n") * K + item.context

and each choice is scored by the summed log-probability of `" " + choice` after that prompt. `acc` picks the
highest sum; `acc_norm` divides each sum by the choice's length in characters (of the choice text, without the
joining space: lm-evaluation-harness's `acc_norm`) so long choices are not penalised for their length.

Shots come from a separate pool (a task's train/dev split) and are drawn with `random.Random(f"{seed}:{i}")`
for item `i`: the same seed gives the same prompts in every run, whatever `--limit` is. When the pool is the
evaluated set itself, the item is never its own shot.

This module knows nothing of files or task names (see `scratchlm.eval.tasks`).
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchlm.errors import ScratchlmError
from scratchlm.eval.perplexity import autocast_for, model_context_length, nll_at, resolve_dtype
from scratchlm.model.loss import full_cross_entropy

DELIMITER = " "
"""Joins a context to a choice (lm-evaluation-harness's `target_delimiter`)."""
SHOT_SEPARATOR = "\n\n"
"""Ends each few-shot example."""


@dataclass(frozen=True)
class MCItem:
    context: str
    choices: tuple[str, ...]
    label: int
    description: str = ""
    """Printed once at the top of the prompt (MMLU's subject line); empty for most tasks."""

    def right_choice(self) -> str:
        return self.choices[self.label]


def parse_item(obj: Any, where: str) -> MCItem:
    """One JSON object -> `MCItem`; `where` ("FILE:LINE") starts every error."""
    if not isinstance(obj, dict):
        raise ScratchlmError(f"{where}: expected a JSON object with context, choices, label")
    missing = [k for k in ("context", "choices", "label") if k not in obj]
    if missing:
        raise ScratchlmError(f"{where}: missing {', '.join(missing)}; each line needs context, choices, label")
    context, choices, label = obj["context"], obj["choices"], obj["label"]
    if not isinstance(context, str):
        raise ScratchlmError(f"{where}: context must be a string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise ScratchlmError(f"{where}: choices must be a list of at least 2 strings")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        raise ScratchlmError(
            f"{where}: label {label!r} is out of range for {len(choices)} choices; use an index 0..{len(choices) - 1}"
        )
    description = obj.get("description", "")
    if not isinstance(description, str):
        raise ScratchlmError(f"{where}: description must be a string")
    return MCItem(context, tuple(choices), label, description)


def read_jsonl(path: Path) -> list[MCItem]:
    """Items of a JSONL task file; a bad line is a one-line error naming the file and line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ScratchlmError(f"task file {path} does not exist; pass a JSONL file or a task name") from None
    items = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ScratchlmError(f"{path}:{n}: not valid JSON ({e.msg}); one JSON object per line") from None
        items.append(parse_item(obj, f"{path}:{n}"))
    if not items:
        raise ScratchlmError(f"task file {path} has no items; one JSON object per line")
    return items


def sample_shots(pool: Sequence[MCItem], k: int, seed: int, index: int, exclude: int | None = None) -> list[MCItem]:
    """`k` examples from `pool` for item `index`, the same for the same seed; `exclude` is a pool index to skip."""
    if k == 0:
        return []
    candidates = [i for i in range(len(pool)) if i != exclude]
    if k > len(candidates):
        raise ScratchlmError(f"--shots {k} needs {k} few-shot examples but the pool has {len(candidates)}")
    rng = random.Random(f"{seed}:{index}")  # str seeds hash with sha512: stable across processes
    return [pool[i] for i in rng.sample(candidates, k)]


def build_prompt(item: MCItem, shots: Sequence[MCItem]) -> str:
    """The context all choices of `item` are scored after (see the module docstring)."""
    examples = "".join(s.context + DELIMITER + s.right_choice() + SHOT_SEPARATOR for s in shots)
    return item.description + examples + item.context


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation, split where the whole text's tokens split.

    Encoding the whole string once and cutting after the context's tokens keeps the merges BPE makes across
    the boundary; trailing spaces move from the context to the continuation first (lm-evaluation-harness).
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode_ordinary(context + continuation)
    ctx = tokenizer.encode_ordinary(context)
    if whole[: len(ctx)] != ctx:  # a merge crossed the boundary: fall back to separate encodings
        return ctx, tokenizer.encode_ordinary(continuation)
    return ctx, whole[len(ctx) :]


def continuation_logprobs(
    model: nn.Module,
    requests: Sequence[tuple[list[int], list[int]]],
    max_len: int,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[float]:
    """Summed log P(continuation | context) for each (context ids, continuation ids) pair (see
    `continuation_scores`)."""
    return [lp for lp, _ in continuation_scores(model, requests, max_len, batch_size, device, dtype)]


@torch.no_grad()
def continuation_scores(
    model: nn.Module,
    requests: Sequence[tuple[list[int], list[int]]],
    max_len: int,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    greedy: bool = False,
) -> list[tuple[float, bool]]:
    """(summed log P(continuation | context), is_greedy) for each (context ids, continuation ids) pair.

    The input is `(context + continuation)[-(max_len + 1):][:-1]` (the context is cut from the left when too
    long); the last `len(continuation)` positions predict the continuation. Requests are batched longest first,
    right-padded (padding after a row's tokens never changes its logits under causal attention). With `greedy`,
    is_greedy says whether every continuation token is the argmax at its position (lm-evaluation-harness's
    second loglikelihood value; it needs the logits of the scored positions), else it is False.
    """
    device = torch.device(device)
    rows: list[list[int]] = []
    for ctx, cont in requests:
        if not cont:
            raise ScratchlmError("a choice encodes to no tokens; every choice needs text")
        if len(cont) > max_len:
            raise ScratchlmError(f"a choice of {len(cont)} tokens does not fit the context of {max_len} tokens")
        if not ctx:
            raise ScratchlmError("an item has an empty context; give each item some context text")
        rows.append((ctx + cont)[-(max_len + 1) :][:-1])
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out = [(0.0, False)] * len(rows)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            T = len(rows[idx[0]])
            inputs = torch.zeros(len(idx), T, dtype=torch.long)  # (B, T)
            for b, i in enumerate(idx):
                inputs[b, : len(rows[i])] = torch.tensor(rows[i])
            keep = torch.zeros(len(idx), T, dtype=torch.bool)  # (B, T): the positions that predict a choice
            targets = []
            for b, i in enumerate(idx):
                cont, L = requests[i][1], len(rows[i])
                keep[b, L - len(cont) : L] = True
                targets += cont
            target_ids = torch.tensor(targets, device=device)
            with autocast_for(device, dtype):  # (N,) in (b, t) order
                if greedy:
                    token_logp, hits = _nll_and_argmax_hits(model, inputs.to(device), keep.to(device), target_ids)
                    token_logp = -token_logp
                else:
                    token_logp = -nll_at(model, inputs.to(device), keep.to(device), target_ids)
                    hits = torch.zeros_like(target_ids, dtype=torch.bool)
            sizes = [len(requests[i][1]) for i in idx]
            for b, (chunk, hit) in enumerate(zip(token_logp.split(sizes), hits.split(sizes))):
                out[idx[b]] = (float(chunk.sum()), bool(hit.all()))
    finally:
        model.train(was_training)
    return out


def _nll_and_argmax_hits(
    model: nn.Module, ids: torch.Tensor, keep: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`nll_at`'s NLL (N,) (the same computation, so the numbers equal `eval mc`'s) and whether each target is the
    argmax of its logits (N,) bool; the head runs on the scored positions only."""
    if hasattr(model, "hidden_states") and hasattr(model, "token_nll"):
        h = model.hidden_states(ids)[keep]  # (N, C)
        return model.token_nll(h, targets), model.lm_head(h).argmax(-1) == targets
    logits = model(ids)[keep]  # (N, V)
    return full_cross_entropy(logits, targets), logits.argmax(-1) == targets


@dataclass
class MCResult:
    task: str
    shots: int
    seed: int
    acc: float
    acc_norm: float
    n: int
    items: list[dict[str, Any]] = field(default_factory=list)
    """Per item: index, label, pred, pred_norm, loglikelihoods."""

    def summary(self) -> dict[str, Any]:
        return {"task": self.task, "shots": self.shots, "seed": self.seed, "n": self.n,
                "acc": self.acc, "acc_norm": self.acc_norm}


def evaluate_mc(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[MCItem],
    fewshot_pool: Sequence[MCItem] | None = None,
    shots: int = 0,
    seed: int = 1234,
    limit: int = 0,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "auto",
    task: str = "task",
    progress: bool = False,
    item_pools: Sequence[Sequence[MCItem]] | None = None,
) -> MCResult:
    """Accuracy and length-normalised accuracy over `items[:limit]` (0: all).

    Shots come from `item_pools[i]` when given (a pool per item), else from `fewshot_pool` (a separate split),
    else from `items` itself, never an item's own.
    """
    device = torch.device(device)
    if isinstance(dtype, str):
        dtype = resolve_dtype(dtype, device)
    if shots < 0:
        raise ScratchlmError(f"--shots must be >= 0, got {shots}")
    chosen = list(items[:limit] if limit else items)
    max_len = model_context_length(model) or 1024
    requests: list[tuple[list[int], list[int]]] = []
    owners: list[int] = []
    for i, item in enumerate(chosen):
        if item_pools is not None:
            shot_items = sample_shots(item_pools[i], shots, seed, i)
        elif fewshot_pool is not None:
            shot_items = sample_shots(fewshot_pool, shots, seed, i)
        else:
            shot_items = sample_shots(items, shots, seed, i, exclude=i)
        prompt = build_prompt(item, shot_items)
        for choice in item.choices:
            ctx, cont = encode_pair(tokenizer, prompt, DELIMITER + choice)
            if not ctx and getattr(tokenizer, "eot_id", None) is not None:
                ctx = [tokenizer.eot_id]  # an empty context: condition on end-of-text (lm-evaluation-harness)
            requests.append((ctx, cont))
            owners.append(i)
    if progress:
        print(f"{task}: scoring {len(chosen)} items ({len(requests)} choices)", file=sys.stderr)
    lls = continuation_logprobs(model, requests, max_len, batch_size, device, dtype)
    per_item: list[list[float]] = [[] for _ in chosen]
    for i, ll in zip(owners, lls):
        per_item[i].append(ll)
    records = []
    for i, (item, ll) in enumerate(zip(chosen, per_item)):
        norm = [v / max(len(c), 1) for v, c in zip(ll, item.choices)]
        pred = max(range(len(ll)), key=ll.__getitem__)
        pred_norm = max(range(len(norm)), key=norm.__getitem__)
        records.append({"index": i, "label": item.label, "pred": pred, "pred_norm": pred_norm, "loglikelihoods": ll})
    n = len(records)
    return MCResult(
        task=task,
        shots=shots,
        seed=seed,
        acc=sum(r["pred"] == r["label"] for r in records) / n,
        acc_norm=sum(r["pred_norm"] == r["label"] for r in records) / n,
        n=n,
        items=records,
    )
