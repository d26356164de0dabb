"""Classification metrics: accuracy, per-class precision/recall/F1 and the confusion matrix, plus a text report.

Pure functions on label indices (no sklearn needed for four formulas); `predict_batches` runs a classifier
module over padded batches; `classify_texts` classifies raw texts as `scratchlm classify` does. A class never predicted has precision 0 (sklearn's zero_division=0 convention).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from scratchlm.data.finetune import collate_classification


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> list[list[int]]:
    """m[t][p] = number of examples of true class t predicted as p."""
    m = [[0] * n_classes for _ in range(n_classes)]
    for t, p in zip(y_true, y_pred):
        m[t][p] += 1
    return m


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """{"accuracy", "n", "majority_accuracy", "per_class": {label: {precision, recall, f1, support}},
    "confusion": [[...]], "labels"}."""
    assert len(y_true) == len(y_pred) and len(y_true) > 0
    k = len(labels)
    m = confusion_matrix(y_true, y_pred, k)
    n = len(y_true)
    per_class = {}
    for c, name in enumerate(labels):
        tp = m[c][c]
        predicted = sum(m[t][c] for t in range(k))
        support = sum(m[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return {
        "accuracy": sum(m[c][c] for c in range(k)) / n,
        "majority_accuracy": max(sum(row) for row in m) / n,
        "n": n,
        "labels": list(labels),
        "per_class": per_class,
        "confusion": m,
    }


def format_report(report: dict[str, Any], title: str = "test") -> str:
    """A plain-text table: accuracy vs the majority class, per-class metrics, confusion matrix."""
    labels = report["labels"]
    w = max(9, *(len(x) for x in labels))
    lines = [
        f"{title}: accuracy {report['accuracy']:.4f} on {report['n']} examples "
        f"(majority class: {report['majority_accuracy']:.4f})",
        f"{'class'.ljust(w)}  precision  recall     f1  support",
    ]
    for name in labels:
        c = report["per_class"][name]
        lines.append(f"{name.ljust(w)}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:5.3f}  {c['support']:7d}")
    lines.append("confusion (rows: true, columns: predicted)")
    lines.append(" " * w + "  " + "  ".join(x.rjust(7) for x in labels))
    for name, row in zip(labels, report["confusion"]):
        lines.append(name.ljust(w) + "  " + "  ".join(str(v).rjust(7) for v in row))
    return "\n".join(lines)


@torch.no_grad()
def predict_batches(module: nn.Module, batches: Iterable[dict[str, torch.Tensor]], device: str | torch.device = "cpu"
                    ) -> tuple[list[int], list[int], list[float]]:
    """(true labels, predicted labels, probability of the prediction) over batches of {"ids", "last", "labels"}.

    `module(ids, last)` must return class logits (B, K) — the classifier wrapper of `train/modes/classify.py`.
    """
    was_training = module.training
    module.eval()
    y_true: list[int] = []
    y_pred: list[int] = []
    probs: list[float] = []
    for batch in batches:
        logits = module(batch["ids"].to(device), batch["last"].to(device)).float()  # (B, K)
        p = logits.softmax(-1)
        best = p.argmax(-1)
        y_true += batch["labels"].tolist()
        y_pred += best.tolist()
        probs += p.gather(-1, best[:, None]).squeeze(-1).tolist()
    module.train(was_training)
    return y_true, y_pred, probs


@torch.no_grad()
def classify_texts(
    module: nn.Module, tokenizer: Any, texts: list[str], spec: dict[str, Any], device: str = "cpu"
) -> list[tuple[str, float]]:
    """(label, probability) for each text, with the truncation and padding the classifier was trained with."""
    examples = [(tokenizer.encode_ordinary(t)[: spec["max_length"]] or [spec["pad_id"]], 0) for t in texts]
    batch = collate_classification(examples, spec["pad_id"])
    probs = module(batch["ids"].to(device), batch["last"].to(device)).float().softmax(-1)  # (B, K)
    p, idx = probs.max(-1)
    return [(spec["labels"][i], float(q)) for i, q in zip(idx.tolist(), p.tolist())]
