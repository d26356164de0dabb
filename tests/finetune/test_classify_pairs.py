"""Sentence-pair classification: `--pair-field` on any table, `--task glue:mrpc` on GLUE's own MRPC layout with
the official metric (F1) in the report, checked against the report's own confusion matrix."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from scratchlm.cli.main import main
from scratchlm.data.finetune import PAIR_SEPARATOR, load_classification
from scratchlm.tokenizer import CharTokenizer

HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"


def mrpc_tsv(n: int, seed: int) -> str:
    """MRPC's train.tsv/dev.tsv layout; a pair is a paraphrase (1) iff its second sentence ends with '!' (a
    pattern the last token carries, so a tiny model learns it in a few steps)."""
    rng = random.Random(seed)
    words = ["the", "cat", "dog", "sat", "ran", "on", "mat", "log", "red", "big"]
    rows = []
    for i in range(n):
        label = i % 2
        s1 = " ".join(rng.choice(words) for _ in range(5)) + " ."
        s2 = " ".join(rng.choice(words) for _ in range(5)) + (" !" if label else " ?")
        rows.append(f"{label}\t{1000 + i}\t{2000 + i}\t{s1}\t{s2}\n")
    return HEADER + "".join(rows)


def test_pair_field_joins_the_two_texts(tmp_path: Path) -> None:
    data = tmp_path / "pairs.tsv"
    data.write_text("a\tb\ty\nhello there\tgeneral\tyes\nfoo\tbar\tno\n")
    tok = CharTokenizer.train(["hello there general foo bar\n"])
    d = load_classification(data, tok, "a", "y", val_fraction=0, test_fraction=0, pair_field="b")
    texts = sorted(tok.decode(ids) for ids, _ in d.train)
    assert texts == ["foo" + PAIR_SEPARATOR + "bar", "hello there" + PAIR_SEPARATOR + "general"]


def test_glue_mrpc_task_reports_the_official_metric(char_ckpt: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "glue"
    (folder / "MRPC").mkdir(parents=True)
    (folder / "MRPC" / "train.tsv").write_text(mrpc_tsv(64, seed=0))
    (folder / "MRPC" / "dev.tsv").write_text(mrpc_tsv(20, seed=1))
    out = tmp_path / "mrpc"
    argv = ["finetune", "classify", "--checkpoint", str(char_ckpt), "--task", "glue:mrpc", "--data", str(folder),
            "--train", "all", "--max-length", "128", "--micro-batch-size", "16", "--max-steps", "15", "--lr", "3e-3",
            "--warmup-steps", "5", "--eval-every", "0", "--save-every", "0", "--out", str(out), "--progress", "false"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())["test"]
    assert report["n"] == 20 and report["labels"] == ["not_equivalent", "equivalent"]  # the dev split
    (tn, fp), (fn, tp) = report["confusion"]
    official = report["official"]
    assert official["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert official["acc"] == pytest.approx(report["accuracy"]) and official["acc"] >= 0.9
    assert "glue:mrpc dev, official metric: acc" in capsys.readouterr().out


def test_bad_task_is_one_line(base_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["finetune", "classify", "--checkpoint", str(base_ckpt), "--out", str(tmp_path / "o")]
    assert main([*base, "--task", "glue:stsb"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --task glue:stsb is not a text classification task; use one of glue:cola,")
    assert main([*base, "--task", "glue:mrpd"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown glue task 'mrpd'")
    assert main([*base, "--task", "glue:mrpc", "--data", str(tmp_path / "none.zip")]) == 2
    assert "does not exist; pass the official MRPC.zip" in capsys.readouterr().err
