"""GLUE and SuperGLUE in their official formats: the task table, the archives, and converters to `Record`s.

Each task's official archive (a named asset, or a zip / unpacked folder the user passes) is read as published:

    GLUE        SST-2.zip: SST-2/{train,dev}.tsv       TSV, header row (CoLA: none), QUOTE_NONE
                MNLI.zip:  MNLI/{train,dev_matched}.tsv  many columns; sentence1, sentence2, gold_label
                MRPC:      msr_paraphrase_train.txt + mrpc_dev_ids.tsv, or MRPC/{train,dev}.tsv (same columns)
    SuperGLUE   BoolQ.zip: BoolQ/{train,val}.jsonl     one JSON object per line; ReCoRD and MultiRC nested

A `Record` holds the fields a prompt template uses (strings), the gold label (class index, or the score for
STS-B), and what the metrics need beyond it (MultiRC's question group, ReCoRD's entities and answers). Labels of
the test splits are not public, so every task is evaluated on its dev/validation split, with shots and
finetuning data from the train split.

Knows nothing of prompts, models or metrics (`scratchlm.eval.glue` does); `finetune classify --task` reads the
classification tasks from here.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchlm import assets
from scratchlm.errors import ScratchlmError

SUITES = ("glue", "superglue")


@dataclass(frozen=True)
class Record:
    fields: dict[str, str]
    """Template fields: sentence, premise, question, ..."""
    label: float
    """Class index (int valued), or STS-B's similarity score in [0, 5]."""
    options: tuple[str, ...] = ()
    """Per-record candidates (COPA's two alternatives, ReCoRD's entities); empty for fixed label sets."""
    group: str = ""
    """Records scored together: MultiRC's question (paragraph:question)."""
    answers: tuple[str, ...] = ()
    """ReCoRD's gold answer texts (every surface form counts)."""


@dataclass(frozen=True)
class TaskSource:
    suite: str
    name: str
    folder: str
    """Folder inside the official zip (and inside an unpacked copy)."""
    files: dict[str, str]
    """split (train, eval) -> file name in `folder`."""
    asset: str
    convert: Callable[[Iterable[Any], str], list[Record]]
    """rows (dicts or JSON objects) of one file, `where` -> records."""
    labels: tuple[str, ...] = ()
    """Class names (for finetuning and reports); empty for regression and per-record options."""
    columns: tuple[str, ...] = ()
    """Column names of a TSV without a header row (CoLA)."""
    text_fields: tuple[str, ...] = field(default=())
    """Fields a classifier reads, in order (short ones first: truncation cuts the end); empty: not a text
    classification task (STS-B, COPA, ReCoRD)."""

    @property
    def key(self) -> str:
        return f"{self.suite}:{self.name}"


# ---- reading one file of an archive -----------------------------------------------------------------------------


def _open_member(source: Path, folder: str, name: str, what: str) -> str:
    """Text of `folder/name` inside a zip or an unpacked folder (`folder/name` or `name` directly)."""
    member = f"{folder}/{name}"
    if source.is_dir():
        for path in (source / member, source / name):
            if path.is_file():
                return path.read_text(encoding="utf-8-sig")
        raise ScratchlmError(f"{source} has no {member}; pass the official {what} or the folder it unpacks to")
    if not source.is_file():
        raise ScratchlmError(f"{source} does not exist; pass the official {what} or the folder it unpacks to")
    if not zipfile.is_zipfile(source):
        raise ScratchlmError(f"{source} is not a zip archive; pass the official {what} or the folder it unpacks to")
    with zipfile.ZipFile(source) as z:
        names = set(z.namelist())
        for candidate in (member, name):
            if candidate in names:
                return z.read(candidate).decode("utf-8-sig")
    raise ScratchlmError(f"archive {source} has no {member}; is it the official {what}?")


def _tsv_rows(text: str, where: str, columns: tuple[str, ...] = ()) -> Iterator[dict[str, str]]:
    """Dicts by header (or `columns`); QUOTE_NONE, as GLUE's files carry bare quotes inside sentences."""
    rows = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = list(columns) if columns else next(rows, [])
    for n, row in enumerate(rows, 1 if columns else 2):
        if not row:
            continue
        if len(row) < len(header):
            raise ScratchlmError(f"{where}:{n} has {len(row)} fields, expected {len(header)} ({', '.join(header)})")
        yield {"_line": str(n), **dict(zip(header, row))}


def _jsonl_rows(text: str, where: str) -> Iterator[dict[str, Any]]:
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ScratchlmError(f"{where}:{n}: not valid JSON ({e.msg}); one JSON object per line") from None
            yield {"_line": str(n), **obj}


def _need(row: dict[str, Any], keys: Iterable[str], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise ScratchlmError(f"{where}:{row.get('_line', '?')}: missing {', '.join(missing)}; is this the official file?")


def _index(value: Any, names: dict[str, int], row: dict[str, Any], where: str) -> int:
    key = str(value).strip()
    if key not in names:
        raise ScratchlmError(f"{where}:{row.get('_line', '?')}: label {value!r} is not one of {', '.join(names)}")
    return names[key]


# ---- converters: official rows -> records ------------------------------------------------------------------------


def _classify(text_keys: dict[str, str], label_key: str, names: dict[str, int]) -> Callable[[Iterable[Any], str], list[Record]]:
    """Rows whose `text_keys` (field name -> column) and `label_key` make a record; `names` maps label -> index."""

    def convert(rows: Iterable[Any], where: str) -> list[Record]:
        out = []
        for row in rows:
            _need(row, [*text_keys.values(), label_key], where)
            fields = {f: str(row[col]).strip() for f, col in text_keys.items()}
            out.append(Record(fields, _index(row[label_key], names, row, where)))
        return out

    return convert


def _stsb(rows: Iterable[Any], where: str) -> list[Record]:
    out = []
    for row in rows:
        _need(row, ["sentence1", "sentence2", "score"], where)
        try:
            score = float(row["score"])
        except ValueError:
            raise ScratchlmError(f"{where}:{row['_line']}: score {row['score']!r} is not a number") from None
        out.append(Record({"sentence1": row["sentence1"].strip(), "sentence2": row["sentence2"].strip()}, score))
    return out


def _copa(rows: Iterable[Any], where: str) -> list[Record]:
    """GPT-3's COPA: "premise-without-full-stop because|therefore" + the alternative, first letter lowercased."""
    out = []
    for row in rows:
        _need(row, ["premise", "choice1", "choice2", "question", "label"], where)
        if row["question"] not in ("cause", "effect"):
            raise ScratchlmError(f"{where}:{row['_line']}: question must be cause or effect, got {row['question']!r}")
        premise = row["premise"].strip()
        options = tuple(c[:1].lower() + c[1:] for c in (row["choice1"], row["choice2"]))
        fields = {"premise": premise, "premise_stem": premise.rstrip(".!?"), "question": row["question"]}
        out.append(Record(fields, _index(row["label"], {"0": 0, "1": 1}, row, where), options))
    return out


def _multirc(rows: Iterable[Any], where: str) -> list[Record]:
    """One record per answer option; the question's options share a group (for exact match per question)."""
    out = []
    for row in rows:
        _need(row, ["idx", "passage"], where)
        paragraph = row["passage"]
        text = paragraph["text"]
        for q in paragraph["questions"]:
            for a in q["answers"]:
                fields = {"paragraph": text, "question": q["question"], "answer": a["text"]}
                label = _index(a.get("label", ""), {"0": 0, "1": 1, "False": 0, "True": 1}, row, where)
                out.append(Record(fields, label, group=f"{row['idx']}:{q['idx']}"))
    return out


def record_passage(text: str) -> str:
    """ReCoRD's passage with its "@highlight" lines as a bullet list (lm-evaluation-harness's layout)."""
    body, *highlights = text.strip().split("\n@highlight\n")
    return body + "\n\n" + "".join(f"  - {h}.\n" for h in highlights)


def _record(rows: Iterable[Any], where: str) -> list[Record]:
    """One record per query; options are the passage's distinct entities (`end` is inclusive in the files)."""
    out = []
    for row in rows:
        _need(row, ["passage", "qas"], where)
        text = row["passage"]["text"]
        entities = tuple(sorted({text[e["start"] : e["end"] + 1] for e in row["passage"]["entities"]}))
        if not entities:
            raise ScratchlmError(f"{where}:{row['_line']}: the passage has no entities to choose from")
        for qa in row["qas"]:
            answers = tuple(sorted({a["text"] for a in qa.get("answers", [])}))
            if not answers:
                raise ScratchlmError(f"{where}:{row['_line']}: a query has no answers; evaluate the train or val split")
            label = next((i for i, e in enumerate(entities) if e in answers), 0)
            fields = {"passage": record_passage(text), "query": qa["query"]}
            out.append(Record(fields, label, entities, group=f"{row.get('idx', '')}:{qa.get('idx', '')}",
                              answers=answers))
    return out


def _wsc(rows: Iterable[Any], where: str) -> list[Record]:
    out = []
    for row in rows:
        _need(row, ["text", "target", "label"], where)
        target = row["target"]
        _need(target, ["span1_text", "span2_text"], where)
        fields = {"text": row["text"], "span1_text": target["span1_text"], "span2_text": target["span2_text"]}
        out.append(Record(fields, _index(row["label"], _BOOL, row, where)))
    return out


_BOOL = {"False": 0, "True": 1, "false": 0, "true": 1, "0": 0, "1": 1}
_ENTAIL2 = {"entailment": 0, "not_entailment": 1}

_TASKS = [
    # ---- GLUE: https://gluebenchmark.com/tasks; archives at dl.fbaipublicfiles.com/glue/data/
    TaskSource("glue", "cola", "CoLA", {"train": "train.tsv", "eval": "dev.tsv"}, "glue-cola",
               _classify({"sentence": "sentence"}, "label", {"0": 0, "1": 1}), ("unacceptable", "acceptable"),
               columns=("source", "label", "original_label", "sentence"), text_fields=("sentence",)),
    TaskSource("glue", "sst2", "SST-2", {"train": "train.tsv", "eval": "dev.tsv"}, "glue-sst2",
               _classify({"sentence": "sentence"}, "label", {"0": 0, "1": 1}), ("negative", "positive"),
               text_fields=("sentence",)),
    TaskSource("glue", "mrpc", "MRPC", {"train": "train.tsv", "eval": "dev.tsv"}, "glue-mrpc-train",
               _classify({"sentence1": "#1 String", "sentence2": "#2 String"}, "Quality", {"0": 0, "1": 1}),
               ("not_equivalent", "equivalent"), text_fields=("sentence1", "sentence2")),
    TaskSource("glue", "qqp", "QQP", {"train": "train.tsv", "eval": "dev.tsv"}, "glue-qqp",
               _classify({"question1": "question1", "question2": "question2"}, "is_duplicate", {"0": 0, "1": 1}),
               ("not_duplicate", "duplicate"), text_fields=("question1", "question2")),
    TaskSource("glue", "stsb", "STS-B", {"train": "train.tsv", "eval": "dev.tsv"}, "glue-stsb", _stsb),
    TaskSource("glue", "mnli", "MNLI", {"train": "train.tsv", "eval": "dev_matched.tsv"}, "glue-mnli",
               _classify({"premise": "sentence1", "hypothesis": "sentence2"}, "gold_label",
                         {"entailment": 0, "neutral": 1, "contradiction": 2}),
               ("entailment", "neutral", "contradiction"), text_fields=("premise", "hypothesis")),
    TaskSource("glue", "qnli", "QNLI", {"train": "train.tsv", "eval": "dev.tsv"}, "glue-qnli",
               _classify({"question": "question", "sentence": "sentence"}, "label", _ENTAIL2),
               ("entailment", "not_entailment"), text_fields=("question", "sentence")),
    TaskSource("glue", "rte", "RTE", {"train": "train.tsv", "eval": "dev.tsv"}, "glue-rte",
               _classify({"premise": "sentence1", "hypothesis": "sentence2"}, "label", _ENTAIL2),
               ("entailment", "not_entailment"), text_fields=("premise", "hypothesis")),
    TaskSource("glue", "wnli", "WNLI", {"train": "train.tsv", "eval": "dev.tsv"}, "glue-wnli",
               _classify({"sentence1": "sentence1", "sentence2": "sentence2"}, "label", {"0": 0, "1": 1}),
               ("not_entailment", "entailment"), text_fields=("sentence1", "sentence2")),
    # ---- SuperGLUE: https://super.gluebenchmark.com/tasks; archives at dl.fbaipublicfiles.com/glue/superglue/data/v2/
    TaskSource("superglue", "boolq", "BoolQ", {"train": "train.jsonl", "eval": "val.jsonl"}, "superglue-boolq",
               _classify({"passage": "passage", "question": "question"}, "label", _BOOL), ("False", "True"),
               text_fields=("question", "passage")),
    TaskSource("superglue", "cb", "CB", {"train": "train.jsonl", "eval": "val.jsonl"}, "superglue-cb",
               _classify({"premise": "premise", "hypothesis": "hypothesis"}, "label",
                         {"entailment": 0, "contradiction": 1, "neutral": 2}),
               ("entailment", "contradiction", "neutral"), text_fields=("premise", "hypothesis")),
    TaskSource("superglue", "copa", "COPA", {"train": "train.jsonl", "eval": "val.jsonl"}, "superglue-copa", _copa),
    TaskSource("superglue", "multirc", "MultiRC", {"train": "train.jsonl", "eval": "val.jsonl"},
               "superglue-multirc", _multirc, ("False", "True"), text_fields=("question", "answer", "paragraph")),
    TaskSource("superglue", "record", "ReCoRD", {"train": "train.jsonl", "eval": "val.jsonl"}, "superglue-record",
               _record),
    TaskSource("superglue", "rte", "RTE", {"train": "train.jsonl", "eval": "val.jsonl"}, "superglue-rte",
               _classify({"premise": "premise", "hypothesis": "hypothesis"}, "label", _ENTAIL2),
               ("entailment", "not_entailment"), text_fields=("premise", "hypothesis")),
    TaskSource("superglue", "wic", "WiC", {"train": "train.jsonl", "eval": "val.jsonl"}, "superglue-wic",
               _classify({"word": "word", "sentence1": "sentence1", "sentence2": "sentence2"}, "label", _BOOL),
               ("False", "True"), text_fields=("word", "sentence1", "sentence2")),
    TaskSource("superglue", "wsc", "WSC", {"train": "train.jsonl", "eval": "val.jsonl"}, "superglue-wsc", _wsc,
               ("False", "True"), text_fields=("span2_text", "span1_text", "text")),
]
TASKS: dict[str, TaskSource] = {t.key: t for t in _TASKS}
"""`suite:name` -> its source."""


def task_names(suite: str) -> list[str]:
    return [t.name for t in _TASKS if t.suite == suite]


def get_task(suite: str, name: str) -> TaskSource:
    """The task, or a one-line error listing the suite's tasks."""
    if suite not in SUITES:
        raise ScratchlmError(f"unknown benchmark {suite!r}; use glue or superglue")
    task = TASKS.get(f"{suite}:{name}")
    if task is None:
        raise ScratchlmError(f"unknown {suite} task {name!r}; use one of {', '.join(task_names(suite))}")
    return task


def _mrpc_from_assets(split: str) -> list[Record]:
    """GLUE's own split (its download script): msr_paraphrase_train.txt minus the pairs in mrpc_dev_ids.tsv is
    train, those pairs are dev. Both files have MRPC's train.tsv/dev.tsv columns."""
    task = TASKS["glue:mrpc"]
    text = assets.fetch("glue-mrpc-train").read_text(encoding="utf-8-sig")
    dev_ids = {tuple(r[:2]) for r in csv.reader(io.StringIO(assets.fetch("glue-mrpc-dev-ids").read_text()),
                                                delimiter="\t") if len(r) >= 2}
    rows = [r for r in _tsv_rows(text, "msr_paraphrase_train.txt")
            if ((r["#1 ID"], r["#2 ID"]) in dev_ids) == (split == "eval")]
    return task.convert(rows, "msr_paraphrase_train.txt")


def load_records(task: TaskSource, split: str, source: Path | None = None) -> list[Record]:
    """The `split` ("train" or "eval") of `task`, from `source` (the official zip or its unpacked folder) or, when
    None, from the task's named asset (mirror or cache, sha256-checked)."""
    if source is None and task.key == "glue:mrpc":
        return _mrpc_from_assets(split)
    path = Path(source) if source is not None else assets.fetch(task.asset)
    archive = "MRPC.zip" if task.key == "glue:mrpc" else assets.get_asset(task.asset).url.rsplit("/", 1)[1]
    what = archive if task.suite == "glue" else f"SuperGLUE {archive}"
    name = task.files[split]
    text = _open_member(path, task.folder, name, what)
    where = f"{path}:{task.folder}/{name}"
    rows = _jsonl_rows(text, where) if name.endswith(".jsonl") else _tsv_rows(text, where, task.columns)
    records = task.convert(rows, where)
    if not records:
        raise ScratchlmError(f"{where} holds no examples; is it the official file?")
    return records
