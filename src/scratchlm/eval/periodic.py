"""Evaluation tasks run by the training loop every `eval_every` steps (`TrainConfig.eval_tasks`).

A task is a short string:

| spec                          | runs                                                  | metrics                          |
|-------------------------------|-------------------------------------------------------|----------------------------------|
| `hellaswag`, `arc-easy`, ...  | zero-shot multiple choice on the first 200 items      | `<name>_acc`, `<name>_acc_norm`  |
| `FILE.jsonl`                  | the same on a task file of your own                   | `<stem>_acc`, `<stem>_acc_norm`  |
| `glue:sst2`, `superglue:cb`   | zero-shot GLUE/SuperGLUE task on the first 200 items  | `<suite>_<task>_<metric>`, and   |
|                               | of its dev split, official metrics                    | `<suite>_<task>_score`           |
| `ppl:wikitext-2`, `ppl:FILE`  | sliding-window perplexity (context = the model's,     | `<name>_word_ppl`, `<name>_bpb`, |
|                               | stride = context/2) on the first 100,000 characters   | `<name>_ppl`                     |

`@N` at the end sets the size: items for multiple choice (`hellaswag@500`), characters for perplexity
(`ppl:wikitext-2@20000`); `@0` means all. Loaded tasks are cached for the process, so only the model runs each
time. `check_tasks` validates the specs up front, so a typo fails at step 0, not at the first evaluation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from scratchlm import assets
from scratchlm.data.glue import Record, get_task, load_records
from scratchlm.errors import ScratchlmError
from scratchlm.eval.fewshot import evaluate_mc
from scratchlm.eval.glue import evaluate_task
from scratchlm.eval.perplexity import model_context_length, perplexity_of_text
from scratchlm.eval.tasks import TASKS, Task, load_task

MC_LIMIT = 200
PPL_CHARS = 100_000
TEXT_ALIASES = {"wikitext-2": "wikitext-2-test"}


@dataclass(frozen=True)
class TaskSpec:
    kind: str
    """mc, ppl, glue or superglue."""
    source: str
    """Task name / file (mc) or asset name / file (ppl)."""
    size: int
    """Items (mc) or characters (ppl); 0 = all."""

    @property
    def name(self) -> str:
        return Path(self.source).stem if self.source.endswith((".jsonl", ".txt")) else self.source


def parse_task(spec: str) -> TaskSpec:
    """`hellaswag@100` -> TaskSpec("mc", "hellaswag", 100); see the module docstring."""
    body, _, size_text = spec.partition("@")
    kind, source = ("ppl", body[4:]) if body.startswith("ppl:") else ("mc", body)
    if body.startswith(("glue:", "superglue:")):
        kind, source = body.split(":", 1)
        try:
            get_task(kind, source)  # an unknown task fails here, at step 0
        except ScratchlmError as e:
            raise ScratchlmError(f"eval task {spec!r}: {e}") from None
    try:
        size = int(size_text) if size_text else (PPL_CHARS if kind == "ppl" else MC_LIMIT)
    except ValueError:
        raise ScratchlmError(f"eval task {spec!r}: the size after @ must be an integer, e.g. {body}@100") from None
    if not source or size < 0:
        raise ScratchlmError(f"eval task {spec!r} is not valid; use e.g. hellaswag, tasks.jsonl@100, ppl:wikitext-2")
    if kind == "mc" and source not in TASKS and not source.endswith(".jsonl"):
        raise ScratchlmError(
            f"eval task {spec!r}: unknown task; use one of {', '.join(TASKS)}, glue:TASK, superglue:TASK, "
            "a .jsonl file, or ppl:TEXT"
        )
    if kind == "ppl" and not Path(source).is_file() and TEXT_ALIASES.get(source, source) not in assets.REGISTRY:
        raise ScratchlmError(f"eval task {spec!r}: {source} is neither a text file nor a named text asset")
    return TaskSpec(kind, source, size)


def check_tasks(tasks: list[str]) -> list[TaskSpec]:
    return [parse_task(t) for t in tasks]


@functools.lru_cache(maxsize=16)
def _mc_task(source: str) -> Task:
    return load_task(source)


@functools.lru_cache(maxsize=16)
def _bench_records(suite: str, name: str) -> list[Record]:
    return load_records(get_task(suite, name), "eval")


@functools.lru_cache(maxsize=16)
def _text(source: str) -> str:
    path = Path(source) if Path(source).is_file() else assets.fetch(TEXT_ALIASES.get(source, source))
    return path.read_bytes().decode("utf-8")


def _unwrap(model: nn.Module) -> nn.Module:
    """The GPT inside DDP (`.module`) or `torch.compile` (`._orig_mod`) wrappers, for its config."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def evaluate_tasks(model: nn.Module, tokenizer: object, tasks: list[str], device: str | torch.device) -> dict[str, float]:
    """Run each task on `model` and return flat metrics for `metrics.jsonl` (see the module docstring)."""
    results: dict[str, float] = {}
    core = _unwrap(model)
    for spec in check_tasks(tasks):
        if spec.kind == "mc":
            task = _mc_task(spec.source)
            r = evaluate_mc(core, tokenizer, task.items, task.pool, shots=0, limit=spec.size, device=device,
                            task=task.name, item_pools=task.item_pools)
            results[f"{spec.name}_acc"] = r.acc
            results[f"{spec.name}_acc_norm"] = r.acc_norm
        elif spec.kind in ("glue", "superglue"):
            task = get_task(spec.kind, spec.source)
            b = evaluate_task(core, tokenizer, task, _bench_records(spec.kind, spec.source), limit=spec.size,
                              device=device)
            results.update({f"{spec.kind}_{task.name}_{k}": v for k, v in b.metrics.items()})
            results[f"{spec.kind}_{task.name}_score"] = b.score
        else:
            text = _text(spec.source)
            text = text[: spec.size] if spec.size else text
            context = model_context_length(core)
            if context is None:
                raise ScratchlmError("perplexity eval tasks need a model with config.context_length")
            r = perplexity_of_text(core, tokenizer, text, context, max(context // 2, 1), batch_size=4, device=device)
            results[f"{spec.name}_ppl"] = r.token_perplexity
            results[f"{spec.name}_word_ppl"] = r.word_perplexity
            results[f"{spec.name}_bpb"] = r.bits_per_byte
    return results
