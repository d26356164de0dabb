"""Finetuning data: classification, instruction and preference datasets, their collators and batch streams.

Files in, token ids out, then padded batches of tensors for the modes in `scratchlm.train.modes`:

    classification  CSV / TSV / JSONL rows (text, label)        -> {"ids", "last", "labels"}
    instruction     Alpaca JSON or chat JSONL                   -> {"ids", "targets"}   (+ "positions" packed)
    preference      instruction/input/chosen/rejected or chat   -> {"chosen_ids", "chosen_targets",
                                                                    "rejected_ids", "rejected_targets"}

Decisions:
- Targets are the ids shifted left by one; a target that carries no loss (prompt, padding, the boundary between
  packed examples) is `IGNORE` (-100, PyTorch's cross-entropy default), so the loss needs no separate mask.
- Batches are right-padded. A classifier reads the hidden state at `last` (the last real token), which causal
  attention makes independent of any padding after it.
- `EpochBatches` is the resumable stream the loop asks for: each epoch's order comes from (seed, epoch) alone,
  so a state of (epoch, position) restores it exactly. Rank r of w takes global micro-batches r, r+w, ...: the
  union over ranks equals what one process would draw (docs/contracts.md).
- Length grouping sorts examples by length inside windows of 64 micro-batches, then shuffles the micro-batches:
  batches of similar lengths waste little padding, and the order stays random.
- Packing concatenates examples into rows of `context_length`, ignores the target across each boundary and
  restarts `positions` at 0 for each example. The model reads a position reset as a document boundary and
  masks attention block-diagonally, so a packed example sees exactly what it would see alone.

Knows nothing of models: ids, masks and tensors only.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scratchlm.errors import ScratchlmError
from scratchlm.tokenizer.chat import ChatTemplate, validate_messages

IGNORE = -100
"""Target id that carries no loss (torch.nn.functional.cross_entropy's default ignore_index)."""

Batch = dict[str, torch.Tensor]

# ------------------------------------------------------------------------------------------------ reading files


def read_text_file(path: str | Path) -> str:
    """The UTF-8 text of a --data file (a byte-order mark is dropped); binary or non-UTF-8 files are one-line
    errors naming the line, not a UnicodeDecodeError traceback."""
    path = Path(path)
    if path.is_dir():
        raise ScratchlmError(f"--data {path} is a folder; pass a data file")
    if not path.is_file():
        raise ScratchlmError(f"data file {path} does not exist; pass an existing --data file")
    raw = path.read_bytes()
    if b"\0" in raw[:8192]:
        raise ScratchlmError(f"data file {path} looks binary (a NUL byte in its first 8192 bytes); pass a text file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ScratchlmError(
            f"{path}:{line} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); save the file as "
            "UTF-8 (or fix that byte)"
        ) from None


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """A JSON list of objects, or JSONL (one object per line)."""
    path = Path(path)
    text = read_text_file(path)
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise ScratchlmError(f"{path} is not valid JSON ({e}); fix the file") from None
    else:
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ScratchlmError(f"{path}:{n} is not valid JSON ({e.msg}); one JSON object per line") from None
    if not records:
        raise ScratchlmError(f"{path} holds no records; give a JSON list or JSONL with at least one object")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise ScratchlmError(f"{path}: record {i} is a {type(r).__name__}, not an object; use JSON objects")
    return records


def read_table(path: str | Path, columns: Sequence[str] | None = None) -> list[dict[str, str]]:
    """Rows of a CSV/TSV (by extension; header row unless `columns` names them) or JSONL/JSON file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return [{k: v for k, v in r.items()} for r in read_records(path)]
    text = read_text_file(path)
    delimiter = "\t" if suffix in (".tsv", ".tab") or suffix == "" else ","
    # QUOTE_NONE for TSV: the SMS spam file has unbalanced quotes inside messages
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting) if r]
    if not rows:
        raise ScratchlmError(f"{path} holds no rows; give a CSV/TSV with at least one row")
    header = list(columns) if columns else rows.pop(0)
    out = []
    for n, row in enumerate(rows, 1 if columns else 2):
        if len(row) < len(header):
            raise ScratchlmError(f"{path}:{n} has {len(row)} fields, the header names {len(header)}; fix the row")
        # extra fields (a delimiter inside the last column) are joined back into the last column
        row = row[: len(header) - 1] + [("\t" if delimiter == "\t" else ",").join(row[len(header) - 1 :])]
        out.append(dict(zip(header, row)))
    return out


# ------------------------------------------------------------------------------------------------ classification


@dataclass
class ClassificationData:
    """Tokenized splits: each example is (ids, label index); `labels[i]` is the name of class i."""

    labels: list[str]
    train: list[tuple[list[int], int]]
    val: list[tuple[list[int], int]]
    test: list[tuple[list[int], int]]
    class_weights: list[float] | None = None
    """Per-class loss weights (balance="weight"), or None."""


BALANCE = ("none", "undersample", "weight")


PAIR_SEPARATOR = "\n"
"""Joins the texts of a sentence pair (`--pair-field`, GLUE's MRPC/RTE/...) into the one text a classifier reads."""


def load_classification(
    path: str | Path,
    tokenizer: Any,
    text_field: str = "text",
    label_field: str = "label",
    columns: Sequence[str] | None = None,
    max_length: int = 256,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    balance: str = "none",
    seed: int = 0,
    pair_field: str = "",
) -> ClassificationData:
    """Read, check, split (shuffled by `seed`) and tokenize a labelled text file; balance only the train split.
    With `pair_field` each example is a sentence pair: text_field + PAIR_SEPARATOR + pair_field."""
    _check_split_settings(balance, val_fraction, test_fraction)
    rows = read_table(path, columns)
    for name, what in ((text_field, "--text-field"), (label_field, "--label-field"), (pair_field, "--pair-field")):
        if name and name not in rows[0]:
            raise ScratchlmError(
                f"column {name!r} ({what}) is not in {path}; its columns are {list(rows[0])[:8]} "
                "(for a file without a header row, name the columns with --columns, e.g. --columns label,text)"
            )
    labels = sorted({str(r[label_field]) for r in rows})
    if len(labels) < 2:
        raise ScratchlmError(
            f"column {label_field!r} of {path} has only one class ({labels[0]!r}); a classifier needs at least two"
        )
    index = {name: i for i, name in enumerate(labels)}
    texts = [str(r[text_field]) + (PAIR_SEPARATOR + str(r[pair_field]) if pair_field else "") for r in rows]
    examples = [(t, index[str(r[label_field])]) for t, r in zip(texts, rows)]
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_test, n_val = int(len(rows) * test_fraction), int(len(rows) * val_fraction)
    train, val, test = order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]
    return _encode_splits(labels, [examples[i] for i in train], [examples[i] for i in val],
                          [examples[i] for i in test], tokenizer, max_length, balance)


def classification_from_splits(
    labels: Sequence[str],
    train: Sequence[tuple[str, int]],
    test: Sequence[tuple[str, int]],
    tokenizer: Any,
    max_length: int = 256,
    val_fraction: float = 0.1,
    balance: str = "none",
    seed: int = 0,
) -> ClassificationData:
    """Examples (text, label index) already split by their publisher (GLUE: train, and dev as the test split);
    `val_fraction` of train (shuffled by `seed`) is held out for validation."""
    _check_split_settings(balance, val_fraction, 0.0)
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    n_val = int(len(train) * val_fraction)
    return _encode_splits(list(labels), [train[i] for i in order[n_val:]], [train[i] for i in order[:n_val]],
                          list(test), tokenizer, max_length, balance)


def _check_split_settings(balance: str, val_fraction: float, test_fraction: float) -> None:
    if balance not in BALANCE:
        raise ScratchlmError(f"--balance {balance!r} is unknown; use one of {', '.join(BALANCE)}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ScratchlmError("--val-fraction and --test-fraction must be >= 0 and sum to less than 1")


def _encode_splits(
    labels: list[str],
    train: list[tuple[str, int]],
    val: list[tuple[str, int]],
    test: list[tuple[str, int]],
    tokenizer: Any,
    max_length: int,
    balance: str,
) -> ClassificationData:
    """Balance the train split (undersample or loss weights), then tokenize every split (truncated)."""

    def encode(examples: list[tuple[str, int]]) -> list[tuple[list[int], int]]:
        return [(tokenizer.encode_ordinary(text)[:max_length] or [0], y) for text, y in examples]

    counts = Counter(y for _, y in train)
    weights = None
    if balance == "undersample":
        least = min(counts.get(c, 0) for c in range(len(labels)))
        if least == 0:
            raise ScratchlmError("--balance undersample: a class has no training example; use more data or none")
        kept: Counter[int] = Counter()
        balanced = []
        for ex in train:
            if kept[ex[1]] < least:
                kept[ex[1]] += 1
                balanced.append(ex)
        train = balanced
    elif balance == "weight":
        total = sum(counts.values())
        weights = [total / (len(labels) * max(counts.get(c, 0), 1)) for c in range(len(labels))]
    return ClassificationData(labels, encode(train), encode(val), encode(test), weights)


def collate_classification(examples: Sequence[tuple[list[int], int]], pad_id: int, pad_to: int | None = None) -> Batch:
    """Right-pad to the longest example (or `pad_to`); `last` indexes each row's last real token."""
    T = max(len(ids) for ids, _ in examples)
    T = max(T, pad_to or 0)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)  # (B, T)
    for row, (toks, _) in enumerate(examples):
        ids[row, : len(toks)] = torch.tensor(toks, dtype=torch.long)
    last = torch.tensor([len(t) - 1 for t, _ in examples], dtype=torch.long)  # (B,)
    labels = torch.tensor([y for _, y in examples], dtype=torch.long)  # (B,)
    return {"ids": ids, "last": last, "labels": labels}


# ------------------------------------------------------------------------------------------------ instructions


def record_messages(record: Mapping[str, Any], template: ChatTemplate, where: str) -> list[dict[str, str]]:
    """One instruction record as messages: Alpaca (instruction, input, output) or chat ({"messages": [...]})."""
    if "messages" in record:
        messages = validate_messages(record["messages"]) if record["messages"] else []
        if not any(m["role"] == "assistant" for m in messages):
            raise ScratchlmError(f"{where}: the conversation has no assistant message to learn; add one")
        return messages
    for key in ("instruction", "output"):
        if key not in record or not isinstance(record[key], str):
            raise ScratchlmError(
                f"{where} has no {key!r} field; Alpaca records need instruction, output (and optional input), "
                "chat records a 'messages' list"
            )
    return template.alpaca_messages(record)


def encode_example(
    messages: Sequence[Mapping[str, str]], tokenizer: Any, template: ChatTemplate, max_length: int, mask_prompt: bool
) -> dict[str, list[int]] | None:
    """ids (at most max_length + 1, so inputs and targets are max_length) and the per-token loss mask."""
    ids, mask = template.encode_messages(tokenizer, messages)
    if not mask_prompt:
        mask = [1] * len(ids)
    ids, mask = ids[: max_length + 1], mask[: max_length + 1]
    if not any(mask[1:]):
        return None  # truncation removed every trained token
    return {"ids": ids, "mask": mask}


def load_instructions(
    path: str | Path, tokenizer: Any, template: ChatTemplate, max_length: int, mask_prompt: bool = True
) -> list[dict[str, list[int]]]:
    """Every record of an Alpaca JSON / chat JSONL file, encoded; too-long records are truncated."""
    examples = []
    for i, rec in enumerate(read_records(path)):
        ex = encode_example(record_messages(rec, template, f"{path}: record {i}"), tokenizer, template, max_length,
                            mask_prompt)
        if ex is not None:
            examples.append(ex)
    if not examples:
        raise ScratchlmError(f"no record of {path} has a response within {max_length} tokens; raise --max-length")
    return examples


def _shift(ids: list[int], mask: list[int]) -> tuple[list[int], list[int]]:
    """Inputs ids[:-1] and targets ids[1:], a target IGNOREd where its token carries no loss."""
    return ids[:-1], [t if m else IGNORE for t, m in zip(ids[1:], mask[1:])]


def collate_sft(examples: Sequence[Mapping[str, list[int]]], pad_id: int, pad_to: int | None = None) -> Batch:
    """Right-padded {"ids", "targets"} (B, T), plus "positions" for packed rows; padding's targets are IGNORE."""
    pairs = [_shift(ex["ids"], ex["mask"]) for ex in examples]
    T = max(max(len(x) for x, _ in pairs), pad_to or 0)
    ids = torch.full((len(pairs), T), pad_id, dtype=torch.long)  # (B, T)
    targets = torch.full((len(pairs), T), IGNORE, dtype=torch.long)  # (B, T)
    for row, (x, y) in enumerate(pairs):
        ids[row, : len(x)] = torch.tensor(x)
        targets[row, : len(y)] = torch.tensor(y)
    batch = {"ids": ids, "targets": targets}
    if "positions" in examples[0]:  # packed rows: padding continues the last example's positions
        positions = torch.arange(T).repeat(len(pairs), 1)  # (B, T)
        for row, ex in enumerate(examples):
            n = len(ex["positions"]) - 1
            positions[row, :n] = torch.tensor(ex["positions"][:-1])
            positions[row, n:] = torch.arange(T - n) + (ex["positions"][n - 1] + 1 if n else 0)
        batch["positions"] = positions
    return batch


def pack_examples(examples: Sequence[Mapping[str, list[int]]], context_length: int) -> list[dict[str, list[int]]]:
    """Greedily concatenate examples (in the given order) into rows of at most context_length + 1 tokens.

    Each row also gets `positions`, restarting at 0 for every example.

    The first token of each example gets mask 0, so nothing is learned across a boundary (the loss mask
    shifts by one: see `_shift`).
    """
    rows: list[dict[str, list[int]]] = []
    cur: dict[str, list[int]] = {"ids": [], "mask": [], "positions": []}
    for ex in examples:
        if cur["ids"] and len(cur["ids"]) + len(ex["ids"]) > context_length + 1:
            rows.append(cur)
            cur = {"ids": [], "mask": [], "positions": []}
        cur["ids"] += ex["ids"]
        cur["mask"] += [0] + list(ex["mask"][1:])  # never predict an example's first token from the previous one
        cur["positions"] += range(len(ex["ids"]))  # a reset marks the boundary for the model's attention mask
    if cur["ids"]:
        rows.append(cur)
    return rows


# ------------------------------------------------------------------------------------------------ preferences


def load_preferences(
    path: str | Path, tokenizer: Any, template: ChatTemplate, max_length: int, drop_equal: bool = False
) -> list[dict[str, list[int]]]:
    """Pairs as {"chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask"}; prompt tokens carry no loss.

    Record formats: the project's preference JSON (instruction, input, chosen, rejected; `output` ignored) or
    chat style ({"prompt": [messages] or "text", "chosen": "text" or message, "rejected": ...}).
    """
    pairs = []
    records = read_records(path)
    for i, rec in enumerate(records):
        where = f"{path}: record {i}"
        for key in ("chosen", "rejected"):
            if key not in rec:
                raise ScratchlmError(f"{where} has no {key!r} field; preference records need chosen and rejected")
    ties = [i for i, rec in enumerate(records)
            if _response_text(rec["chosen"], "") == _response_text(rec["rejected"], "")]
    if ties and not drop_equal:
        raise ScratchlmError(
            f"{path}: record {ties[0]} (and {len(ties) - 1} more) has chosen equal to rejected, so there is no "
            "preference to learn; fix those records or pass --drop-equal-pairs to skip them"
        )
    for i, rec in enumerate(records):
        if i in ties:
            continue
        where = f"{path}: record {i}"
        chosen, rejected = (_response_text(rec[k], where) for k in ("chosen", "rejected"))
        if "prompt" in rec:
            prompt = rec["prompt"]
            prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else validate_messages(prompt)
        elif "instruction" in rec:
            prompt = template.alpaca_messages(rec, with_output=False)
        else:
            raise ScratchlmError(f"{where} has no prompt: give 'instruction' (and 'input') or 'prompt'")
        pair = {}
        for key, text in (("chosen", chosen), ("rejected", rejected)):
            ex = encode_example([*prompt, {"role": "assistant", "content": text}], tokenizer, template, max_length, True)
            if ex is None:
                break
            pair[f"{key}_ids"], pair[f"{key}_mask"] = ex["ids"], ex["mask"]
        else:
            pairs.append(pair)
    if not pairs:
        raise ScratchlmError(f"no pair of {path} fits in {max_length} tokens; raise --max-length")
    return pairs


def _response_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    if isinstance(value, list) and value and isinstance(value[-1], Mapping):
        return str(value[-1].get("content", ""))
    raise ScratchlmError(f"{where}: chosen/rejected must be a string or an assistant message; got {value!r:.60}")


def collate_preferences(examples: Sequence[Mapping[str, Any]], pad_id: int) -> Batch:
    """Chosen and rejected sides padded to ONE length T, so the policy can run them as one (2B, T) batch."""
    sides = {}
    T = max(len(ex[f"{k}_ids"]) - 1 for ex in examples for k in ("chosen", "rejected"))
    for k in ("chosen", "rejected"):
        b = collate_sft([{"ids": ex[f"{k}_ids"], "mask": ex[f"{k}_mask"]} for ex in examples], pad_id, pad_to=T)
        sides[f"{k}_ids"], sides[f"{k}_targets"] = b["ids"], b["targets"]
    for key in ("ref_chosen_logps", "ref_rejected_logps"):
        if key in examples[0]:
            sides[key] = torch.tensor([float(ex[key]) for ex in examples], dtype=torch.float32)  # (B,)
    return sides


# ------------------------------------------------------------------------------------------------ batch streams


@dataclass
class EpochBatches:
    """Endless, resumable stream of micro-batches over `examples`, reshuffled each epoch (see module docstring)."""

    examples: Sequence[Any]
    micro_batch_size: int
    collate: Callable[[list[Any]], Batch]
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    lengths: Sequence[int] | None = None
    """Example lengths: when given, batches are grouped by length."""
    epoch: int = 0
    position: int = 0
    """Index of this rank's next micro-batch within the epoch."""
    _plan: list[list[int]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if len(self.examples) < self.micro_batch_size * self.world_size:
            raise ScratchlmError(
                f"only {len(self.examples)} training examples for micro-batches of {self.micro_batch_size} on "
                f"{self.world_size} process(es); lower --micro-batch-size or add data"
            )
        self._plan = self._epoch_plan(self.epoch)

    def _epoch_plan(self, epoch: int) -> list[list[int]]:
        """This rank's micro-batches (lists of example indices) for one epoch; a function of (seed, epoch)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.examples), generator=g).tolist()
        B = self.micro_batch_size
        if self.lengths is not None:
            window = 64 * B
            order = [i for s in range(0, len(order), window)
                     for i in sorted(order[s : s + window], key=lambda i: self.lengths[i])]  # type: ignore[index]
        batches = [order[s : s + B] for s in range(0, len(order) - B + 1, B)]  # drop the ragged tail
        if self.lengths is not None:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in perm]
        usable = len(batches) - len(batches) % self.world_size
        return batches[self.rank : usable : self.world_size]

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.position >= len(self._plan):
            self.epoch, self.position = self.epoch + 1, 0
            self._plan = self._epoch_plan(self.epoch)
        idx = self._plan[self.position]
        self.position += 1
        return self.collate([self.examples[i] for i in idx])

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed:
            raise ScratchlmError(
                f"the run started with --seed {state['seed']}, not {self.seed}; resume with the seed it started with"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._plan = self._epoch_plan(self.epoch)

    @property
    def batches_per_epoch(self) -> int:
        return len(self._plan)


def fixed_batches(examples: Sequence[Any], micro_batch_size: int, collate: Callable[[list[Any]], Batch]) -> list[Batch]:
    """Validation/test batches in file order (the last one may be smaller)."""
    return [collate(list(examples[s : s + micro_batch_size])) for s in range(0, len(examples), micro_batch_size)]


def steps_per_epoch(n_examples: int, micro_batch_size: int) -> int:
    return max(1, math.floor(n_examples / micro_batch_size))
