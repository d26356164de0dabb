"""Named multiple-choice tasks: their public files (through `scratchlm.assets`) converted to `MCItem`s.

Each converter reads the publisher's native format and builds the prompts lm-evaluation-harness uses, so the
numbers sit next to published ones:

| name            | evaluated split (asset)          | few-shot split                         |
|-----------------|----------------------------------|----------------------------------------|
| `hellaswag`     | validation (`hellaswag-val`)      | train (`hellaswag-train`)               |
| `arc-easy`      | test (`arc-easy-test`)            | the test set itself, never the item    |
| `arc-challenge` | test (`arc-challenge-test`)       | the test set itself, never the item    |
| `mmlu`          | test, 57 subjects (`mmlu`)        | dev: 5 per subject, same subject       |

ARC's train split is inside the same 680 MB release zip as its test split but its checksum is not pinned here,
so ARC's shots come from the other test items (lm-evaluation-harness uses the train split: with `--shots 0`,
the usual setting for ARC, the numbers are the same).
"""

from __future__ import annotations

import csv
import io
import json
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from scratchlm import assets
from scratchlm.errors import ScratchlmError
from scratchlm.eval.fewshot import MCItem, parse_item, read_jsonl

TASKS = ("hellaswag", "arc-easy", "arc-challenge", "mmlu")


# ---- HellaSwag: {"ctx_a", "ctx_b", "activity_label", "endings": [4], "label": int or str, ...} per line


def _hellaswag_clean(text: str) -> str:
    """lm-evaluation-harness's `preprocess`: WikiHow's "[title]" markers become sentence breaks, other
    bracketed markers go."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_items(lines: Iterable[str], where: str = "hellaswag") -> list[MCItem]:
    items = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        doc = json.loads(line)
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        context = _hellaswag_clean(doc["activity_label"] + ": " + ctx)
        choices = [_hellaswag_clean(e) for e in doc["endings"]]
        label = doc.get("label", "")
        if label == "":  # the public test split has no labels
            raise ScratchlmError(f"{where}:{n}: item has no label; evaluate the validation split")
        items.append(parse_item({"context": context, "choices": choices, "label": int(label)}, f"{where}:{n}"))
    return items


# ---- ARC: {"id", "question": {"stem", "choices": [{"text", "label"}]}, "answerKey"} per line


def arc_items(lines: Iterable[str], where: str = "arc") -> list[MCItem]:
    items = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        doc = json.loads(line)
        q = doc["question"]
        labels = [c["label"] for c in q["choices"]]
        if doc["answerKey"] not in labels:
            raise ScratchlmError(f"{where}:{n}: answerKey {doc['answerKey']!r} is not one of {labels}")
        items.append(
            MCItem(
                context=f"Question: {q['stem']}\nAnswer:",
                choices=tuple(c["text"] for c in q["choices"]),
                label=labels.index(doc["answerKey"]),
            )
        )
    return items


# ---- MMLU: data/{dev,val,test}/<subject>_<split>.csv, rows: question, A, B, C, D, answer letter


def mmlu_items(rows: Iterable[list[str]], subject: str, where: str = "mmlu") -> list[MCItem]:
    topic = subject.replace("_", " ")
    description = f"The following are multiple choice questions (with answers) about {topic}.\n\n"
    items = []
    for n, row in enumerate(rows, start=1):
        if len(row) != 6 or row[5].strip() not in "ABCD" or not row[5].strip():
            raise ScratchlmError(f"{where}:{n}: expected question, 4 options and an answer letter A-D")
        question, options = row[0].strip(), row[1:5]
        context = question + "".join(f"\n{letter}. {opt}" for letter, opt in zip("ABCD", options)) + "\nAnswer:"
        items.append(MCItem(context, ("A", "B", "C", "D"), "ABCD".index(row[5].strip()), description))
    return items


def mmlu_from_tar(path: Path) -> tuple[list[MCItem], dict[str, list[MCItem]], list[str]]:
    """Test items (subjects in name order), dev items by subject, and each test item's subject."""
    test: list[MCItem] = []
    subjects: list[str] = []
    dev: dict[str, list[MCItem]] = {}
    with tarfile.open(path) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".csv")), key=lambda m: m.name)
        for m in members:
            parts = m.name.split("/")
            if len(parts) < 3 or parts[-2] not in ("test", "dev"):
                continue
            split = parts[-2]
            subject = parts[-1][: -len(f"_{split}.csv")]
            f = tar.extractfile(m)
            assert f is not None
            rows = list(csv.reader(io.TextIOWrapper(f, encoding="utf-8")))
            items = mmlu_items(rows, subject, where=m.name)
            if split == "test":
                test += items
                subjects += [subject] * len(items)
            else:
                dev[subject] = items
    if not test:
        raise ScratchlmError(f"{path} holds no data/test/*_test.csv files; is it MMLU's data.tar?")
    return test, dev, subjects


# ---- loading by name or file


@dataclass
class Task:
    """Items to evaluate and where each item's shots come from."""

    name: str
    items: list[MCItem]
    pool: list[MCItem] | None = None
    """One few-shot pool for every item; None (and no `item_pools`): the other items of `items`."""
    item_pools: list[list[MCItem]] | None = None
    """A pool per item (MMLU: the dev questions of the item's subject)."""


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def load_task(name_or_path: str, fewshot_path: str | None = None) -> Task:
    """A named task (`TASKS`) or a JSONL file of `MCItem`s; `fewshot_path` is a JSONL file to draw shots from."""
    pool = read_jsonl(Path(fewshot_path)) if fewshot_path else None
    if name_or_path == "hellaswag":
        items = hellaswag_items(_read_lines(assets.fetch("hellaswag-val")), "hellaswag-val")
        if pool is None:
            pool = hellaswag_items(_read_lines(assets.fetch("hellaswag-train")), "hellaswag-train")
        return Task("hellaswag", items, pool)
    if name_or_path in ("arc-easy", "arc-challenge"):
        asset = f"{name_or_path}-test"
        return Task(name_or_path, arc_items(_read_lines(assets.fetch(asset)), asset), pool)
    if name_or_path == "mmlu":
        test, dev, subjects = mmlu_from_tar(assets.fetch("mmlu"))
        if pool is not None:
            return Task("mmlu", test, pool)
        return Task("mmlu", test, item_pools=[dev.get(s, []) for s in subjects])
    path = Path(name_or_path)
    if path.suffix != ".jsonl" and not path.exists():
        raise ScratchlmError(
            f"unknown task {name_or_path!r}; use one of {', '.join(TASKS)} or a .jsonl file of "
            "{context, choices, label} items"
        )
    return Task(path.stem, read_jsonl(path), pool)
