"""GLUE and SuperGLUE, zero- and few-shot as in the GPT-3 paper: prompts from templates, options scored by
log-likelihood, each task's official metric.

    official file --scratchlm.data.glue--> Records --template--> MCItems --fewshot.evaluate_mc--> log-likelihoods
        --> predictions --scratchlm.eval.metrics--> acc / F1 / MCC / Pearson-Spearman / EM-F1

Decisions:
- One scorer: items go through `fewshot.evaluate_mc` (`eval mc`'s code): the same prompt layout
  (shot.context + " " + shot.right_choice + "\\n\\n", K times, then the item), the same seeded shot draw, from the
  task's train split. The prediction is the option with the largest summed log-probability (GPT-3's choice for
  these tasks; no length normalisation).
- Templates are data (`templates/glue.json`, `templates/superglue.json`): a prompt with {fields}, and either a
  fixed list of choices (verbalizers, one per class) or a `choice` pattern rendered per record option (COPA's
  alternatives, ReCoRD's entities substituted for @placeholder).
- STS-B is regression: the choices are the digits 0-5 and the prediction is their probability-weighted mean
  (softmax over the six log-likelihoods); a shot's answer is its score rounded.
- A task's `score` is the mean of its official metrics (GLUE's convention for MRPC, QQP, STS-B; SuperGLUE's for
  CB, MultiRC, ReCoRD); the summary's average is the mean of the task scores.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchlm.data.glue import Record, TaskSource, load_records
from scratchlm.errors import ScratchlmError
from scratchlm.eval import metrics as M
from scratchlm.eval.fewshot import MCItem, evaluate_mc

TEMPLATES = Path(__file__).with_name("templates")

METRICS: dict[str, tuple[str, ...]] = {
    "glue:cola": ("mcc",), "glue:sst2": ("acc",), "glue:mrpc": ("acc", "f1"), "glue:qqp": ("acc", "f1"),
    "glue:stsb": ("pearson", "spearman"), "glue:mnli": ("acc",), "glue:qnli": ("acc",), "glue:rte": ("acc",),
    "glue:wnli": ("acc",),
    "superglue:boolq": ("acc",), "superglue:cb": ("acc", "f1"), "superglue:copa": ("acc",),
    "superglue:multirc": ("em", "f1a"), "superglue:record": ("em", "f1"), "superglue:rte": ("acc",),
    "superglue:wic": ("acc",), "superglue:wsc": ("acc",),
}  # fmt: skip
"""Each task's official metrics (GLUE and SuperGLUE papers); cb's f1 is the macro F1 over its 3 classes."""


@dataclass(frozen=True)
class Template:
    prompt: str
    choices: tuple[str, ...] = ()
    """Fixed verbalizers, one per class index."""
    choice: str = "{option}"
    """Pattern for per-record options; "@placeholder" in the result becomes the option."""
    maps: dict[str, dict[str, str]] = field(default_factory=dict)
    """field -> {value: replacement} applied before formatting (COPA's cause/effect -> because/therefore)."""
    values: tuple[float, ...] = ()
    """Regression: the number each choice stands for (STS-B)."""


@functools.lru_cache(maxsize=4)
def load_templates(suite: str, path: str | None = None) -> dict[str, Template]:
    """The suite's templates (`templates/<suite>.json`, or the JSON file `path`)."""
    file = Path(path) if path else TEMPLATES / f"{suite}.json"
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScratchlmError(f"template file {file} does not exist; pass a JSON file of task templates") from None
    except json.JSONDecodeError as e:
        raise ScratchlmError(f"template file {file} is not valid JSON ({e}); fix it") from None
    out = {}
    for name, t in raw.items():
        if name.startswith("_"):
            continue
        if not isinstance(t, dict) or not isinstance(t.get("prompt"), str):
            raise ScratchlmError(f"{file}: template {name!r} needs a \"prompt\" string")
        out[name] = Template(t["prompt"], tuple(t.get("choices", ())), t.get("choice", "{option}"),
                             t.get("maps", {}), tuple(float(v) for v in t.get("values", ())))
    return out


def template_for(task: TaskSource, path: str | None = None) -> Template:
    templates = load_templates(task.suite, path)
    if task.name not in templates:
        raise ScratchlmError(f"no template for {task.key} in {path or TEMPLATES / (task.suite + '.json')}")
    return templates[task.name]


def _format(pattern: str, fields: dict[str, str], task: str, **extra: str) -> str:
    try:
        return pattern.format(**fields, **extra)
    except KeyError as e:
        raise ScratchlmError(
            f"the {task} template names the field {e.args[0]!r}, which its records lack; use {', '.join(fields)}"
        ) from None


def render(template: Template, record: Record, task: str = "task") -> MCItem:
    """A record as a multiple-choice item: the prompt, its choices, the index of the right one."""
    fields = {k: template.maps.get(k, {}).get(v, v) for k, v in record.fields.items()}
    context = _format(template.prompt, fields, task)
    if record.options:
        choices = tuple(_format(template.choice, fields, task, option=o).replace("@placeholder", o)
                        for o in record.options)
    else:
        choices = template.choices
    label = int(round(record.label))
    if template.values:  # regression: the right choice of a shot is the nearest value
        label = min(range(len(template.values)), key=lambda i: abs(template.values[i] - record.label))
    if len(choices) < 2 or not 0 <= label < len(choices):
        raise ScratchlmError(f"{task}: label {record.label} does not fit the template's {len(choices)} choices")
    return MCItem(context, choices, label)


def score_metrics(key: str, records: Sequence[Record], preds: Sequence[float]) -> dict[str, float]:
    """The task's official metrics of `preds` (class or option indices; STS-B: predicted scores)."""
    if key == "glue:stsb":
        gold = [r.label for r in records]
        return {"pearson": M.pearson(preds, gold), "spearman": M.spearman(preds, gold)}
    if key == "superglue:record":
        texts = [r.options[int(p)] for r, p in zip(records, preds)]
        return {"em": sum(M.max_over_answers(M.exact_match, t, r.answers) for t, r in zip(texts, records)) / len(texts),
                "f1": sum(M.max_over_answers(M.token_f1, t, r.answers) for t, r in zip(texts, records)) / len(texts)}
    y_true, y_pred = [int(r.label) for r in records], [int(p) for p in preds]
    if key == "superglue:multirc":
        return {"em": M.group_exact_match([r.group for r in records], y_true, y_pred), "f1a": M.f1(y_true, y_pred)}
    if key == "glue:cola":
        return {"mcc": M.matthews(y_true, y_pred)}
    out = {"acc": M.accuracy(y_true, y_pred)}
    if key in ("glue:mrpc", "glue:qqp"):
        out["f1"] = M.f1(y_true, y_pred)
    if key == "superglue:cb":
        out["f1"] = M.macro_f1(y_true, y_pred, 3)
    return out


def task_score(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values)


@dataclass
class BenchResult:
    suite: str
    task: str
    shots: int
    seed: int
    n: int
    metrics: dict[str, float]
    score: float
    items: list[dict[str, Any]] = field(default_factory=list)
    """Per item: index, label, pred, loglikelihoods (and the predicted score for STS-B)."""

    def summary(self) -> dict[str, Any]:
        return {"suite": self.suite, "task": self.task, "shots": self.shots, "seed": self.seed, "n": self.n,
                **self.metrics, "score": self.score}


def predictions(template: Template, lls: Sequence[Sequence[float]]) -> list[float]:
    """Argmax of each item's log-likelihoods, or for regression the softmax-weighted mean of `values`."""
    out: list[float] = []
    for ll in lls:
        if template.values:
            p = torch.tensor(ll, dtype=torch.float64).softmax(-1)
            out.append(float(p @ torch.tensor(template.values, dtype=torch.float64)))
        else:
            out.append(max(range(len(ll)), key=ll.__getitem__))
    return out


def evaluate_task(
    model: nn.Module,
    tokenizer: Any,
    task: TaskSource,
    records: Sequence[Record],
    pool: Sequence[Record] | None = None,
    shots: int = 0,
    seed: int = 1234,
    limit: int = 0,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "auto",
    template: Template | None = None,
    progress: bool = False,
) -> BenchResult:
    """Official metrics of `model` on `records[:limit]` (0: all), `shots` examples from `pool` before each."""
    template = template or template_for(task)
    items = [render(template, r, task.key) for r in (records[:limit] if limit else records)]
    if shots and not pool:
        raise ScratchlmError(f"--shots {shots} needs the {task.key} train split; none was loaded")
    shot_items = [render(template, r, task.key) for r in pool] if shots and pool else None
    r = evaluate_mc(model, tokenizer, items, shot_items or [], shots, seed, 0, batch_size, device, dtype,
                    task.key, progress)
    chosen = records[: len(items)]
    preds = predictions(template, [it["loglikelihoods"] for it in r.items])
    values = score_metrics(task.key, chosen, preds)
    details = [{"index": it["index"], "label": rec.label, "pred": p, "loglikelihoods": it["loglikelihoods"]}
               for it, rec, p in zip(r.items, chosen, preds)]
    return BenchResult(task.suite, task.name, shots, seed, len(items), values, task_score(values), details)


def load_task_data(task: TaskSource, source: Path | None, shots: int) -> tuple[list[Record], list[Record] | None]:
    """The evaluated split, and the train split when shots are drawn."""
    records = load_records(task, "eval", source)
    return records, (load_records(task, "train", source) if shots else None)


def average(results: Sequence[BenchResult]) -> float:
    """Mean task score; a nan score (STS-B with constant predictions) counts as 0, as on the leaderboards."""
    return sum(0.0 if math.isnan(r.score) else r.score for r in results) / len(results)
