"""Classification: padding never changes a prediction; the SMS spam example beats the majority class."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scratchlm.cli.main import main
from scratchlm.data.finetune import collate_classification
from scratchlm.eval.classify import classification_report, format_report
from scratchlm.model.classifier import ClassifierModel
from scratchlm.train.modes.classify import set_trainable


def test_predictions_identical_padded_to_20_or_200(tiny_model) -> None:
    clf = ClassifierModel(tiny_model, 3).eval()
    with torch.no_grad():
        clf.head.weight.normal_()  # a head with real weight behind every class
    g = torch.Generator().manual_seed(1)
    examples = [(torch.randint(0, 50000, (n,), generator=g).tolist(), 0) for n in (1, 7, 13, 20)]
    short = collate_classification(examples, pad_id=50256, pad_to=20)
    long = collate_classification(examples, pad_id=11, pad_to=200)  # another pad id, too
    assert short["ids"].shape == (4, 20) and long["ids"].shape == (4, 200)
    with torch.no_grad():
        a = clf(short["ids"], short["last"])
        b = clf(long["ids"], long["last"])
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # and equal to each text run alone, unpadded
    with torch.no_grad():
        alone = torch.cat([clf(torch.tensor([ids]), torch.tensor([len(ids) - 1])) for ids, _ in examples])
    torch.testing.assert_close(a, alone, rtol=0, atol=1e-5)


def test_what_trains(tiny_model) -> None:
    clf = ClassifierModel(tiny_model, 2)
    set_trainable(clf, "head")
    assert {n for n, p in clf.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    set_trainable(clf, "last", last_k=1)
    names = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert any(n.startswith("model.blocks.1.") for n in names) and not any(n.startswith("model.blocks.0.") for n in names)
    assert {"model.norm.weight", "head.weight"} <= names and "model.tok_emb.weight" not in names
    set_trainable(clf, "all")
    assert all(p.requires_grad for p in clf.parameters())


def test_report_counts_match_a_hand_count() -> None:
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 1, 0, 1, 0, 2]
    r = classification_report(y_true, y_pred, ["a", "b", "c"])
    assert r["confusion"] == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert r["accuracy"] == pytest.approx(4 / 6) and r["majority_accuracy"] == pytest.approx(3 / 6)
    assert r["per_class"]["a"]["precision"] == pytest.approx(2 / 3) and r["per_class"]["a"]["recall"] == pytest.approx(2 / 3)
    assert r["per_class"]["b"]["precision"] == pytest.approx(1 / 2) and r["per_class"]["b"]["recall"] == pytest.approx(1 / 2)
    assert "accuracy 0.6667" in format_report(r)


MARGIN = 0.05
"""Test accuracy must beat always answering the majority class (ham, ~0.86) by at least this much."""


def test_sms_spam_beats_the_majority_class(pretrained_ckpt: Path, mirror: Path, tmp_path: Path, capsys) -> None:
    """The README's worked example at toy scale: a model pretrained in this session becomes a spam classifier."""
    out = tmp_path / "spam"
    argv = ["finetune", "classify", "--checkpoint", str(pretrained_ckpt), "--data", str(mirror / "SMSSpamCollection.tsv"),
            "--columns", "label,text", "--train", "all", "--max-length", "48", "--micro-batch-size", "16",
            "--max-steps", "200", "--lr", "2e-3", "--warmup-steps", "10", "--eval-every", "0", "--save-every", "0",
            "--out", str(out), "--progress", "false"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())["test"]
    assert report["n"] == 1114 and report["labels"] == ["ham", "spam"]
    assert report["accuracy"] >= report["majority_accuracy"] + MARGIN, report
    assert report["per_class"]["spam"]["recall"] > 0.5
    assert "confusion (rows: true, columns: predicted)" in capsys.readouterr().out
    # `scratchlm classify` prints label and probability per text
    assert main(["classify", "--checkpoint", str(out), "hello", "WINNER!! Claim your FREE prize, call now"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.split("\t")[0] in ("ham", "spam") for line in lines)
    assert all(0.5 <= float(line.split("\t")[1]) <= 1.0 for line in lines)
