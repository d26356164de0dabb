"""The official metrics of GLUE and SuperGLUE, as pure functions on labels, scores and answer strings.

| metric                         | tasks                    | definition                                              |
|--------------------------------|--------------------------|---------------------------------------------------------|
| `accuracy`                     | most                     | fraction right                                          |
| `f1` (positive class 1)        | MRPC, QQP, MultiRC's f1a | 2 TP / (2 TP + FP + FN)                                 |
| `macro_f1`                     | CB                       | unweighted mean of the per-class F1                     |
| `matthews`                     | CoLA                     | (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))    |
| `pearson`, `spearman`          | STS-B                    | scipy.stats (Spearman: Pearson of the ranks)            |
| `exact_match`, `token_f1`      | ReCoRD                   | SQuAD's normalisation, max over the gold answers        |
| `group_exact_match`            | MultiRC's em             | fraction of questions with every answer option right    |

Conventions follow sklearn (the reference GLUE's and SuperGLUE's scripts use): an F1 or Matthews correlation
whose denominator is 0 is 0.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    assert len(y_true) == len(y_pred) and y_true
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def f1(y_true: Sequence[int], y_pred: Sequence[int], positive: int = 1) -> float:
    tp = sum(t == positive and p == positive for t, p in zip(y_true, y_pred))
    fp = sum(t != positive and p == positive for t, p in zip(y_true, y_pred))
    fn = sum(t == positive and p != positive for t, p in zip(y_true, y_pred))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> float:
    return sum(f1(y_true, y_pred, c) for c in range(n_classes)) / n_classes


def matthews(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Binary Matthews correlation (labels 0/1)."""
    tp = sum(t == 1 and p == 1 for t, p in zip(y_true, y_pred))
    tn = sum(t == 0 and p == 0 for t, p in zip(y_true, y_pred))
    fp = sum(t == 0 and p == 1 for t, p in zip(y_true, y_pred))
    fn = sum(t == 1 and p == 0 for t, p in zip(y_true, y_pred))
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom else 0.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r; nan when either side is constant (the correlation is undefined)."""
    from scipy.stats import pearsonr

    if len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return float(pearsonr(x, y)[0])


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return float(spearmanr(x, y)[0])


def normalize_answer(text: str) -> str:
    """SQuAD's (and ReCoRD's official script's) normalisation: lower case, no punctuation, no articles, single
    spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def max_over_answers(metric: object, prediction: str, answers: Sequence[str]) -> float:
    """ReCoRD: the best score against any of the gold surface forms."""
    return max(metric(prediction, a) for a in answers)  # type: ignore[operator]


def group_exact_match(groups: Sequence[str], y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """MultiRC's em: a question counts when all its answer options are labelled right."""
    ok: dict[str, bool] = {}
    for g, t, p in zip(groups, y_true, y_pred):
        ok[g] = ok.get(g, True) and t == p
    return sum(ok.values()) / len(ok)
