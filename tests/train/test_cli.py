"""`scratchlm pretrain` through `scratchlm.cli.main.main`: a tiny run, its files, and every bad input of the
issue (one line, exit status 2, nothing overwritten)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from scratchlm.cli.main import main
from scratchlm.data import prepare_text

TINY = ["--model.n-layer", "1", "--model.n-head", "2", "--model.d-model", "32", "--model.d-ff", "64",
        "--model.context-length", "32", "--micro-batch-size", "4", "--warmup-steps", "2", "--no-progress",
        "--sample-at-end", "0", "--eval-batches", "2"]


@pytest.fixture
def text(mirror: Path) -> str:
    return (mirror / "tinyshakespeare.txt").read_text()[:60_000]


@pytest.fixture
def shards(tmp_path: Path, text: str) -> Path:
    prepare_text(text, tmp_path / "shards", tokenizer="char")
    return tmp_path / "shards"


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["pretrain", "--preset", "shakespeare-char", *TINY, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_tiny_pretrain_writes_run_folder(tmp_path: Path, shards: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code, stdout, _ = run(["--data", str(shards), "--out", str(out), "--max-steps", "6", "--eval-every", "3"], capsys)
    assert code == 0
    assert (out / "latest").read_text().strip() == "step_000006"
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((out / "step_000006" / "config.json").read_text())
    assert config["model"]["n_layer"] == 1 and config["train"]["max_steps"] == 6
    assert config["train_mode"] == "pretrain" and config["data"]["shards"] == str(shards)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [3, 6]
    import yaml

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["preset"] == "shakespeare-char" and resolved["model"]["d_model"] == 32


def test_bad_micro_batch(tmp_path: Path, shards: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["--data", str(shards), "--out", str(tmp_path / "r"), "--micro-batch-size", "3",
                        "--global-batch-tokens", "1000"], capsys)
    assert code == 2
    assert err.strip() == (
        "error: --micro-batch-size 3 x context 32 x 1 process(es) = 96 tokens does not divide "
        "--global-batch-tokens 1000; choose a global batch that is a multiple of 96"
    )
    assert not (tmp_path / "r").exists()


def test_shards_from_another_tokenizer(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    prepare_text(text[:5000], tmp_path / "gpt2", tokenizer="gpt2")
    code, _, err = run(["--data", str(tmp_path / "gpt2"), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "tokenizer of 50257 tokens, more than the model's vocab_size 65" in err
    assert not (tmp_path / "r").exists()


def test_resume_on_shards_from_another_tokenizer(tmp_path: Path, shards: Path, text: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    assert run(["--data", str(shards), "--out", str(out), "--max-steps", "2"], capsys)[0] == 0
    before = snapshot(out)
    prepare_text(text.lower(), tmp_path / "lower", tokenizer="char")  # fewer characters: another char tokenizer
    code, _, err = run(["--data", str(tmp_path / "lower"), "--out", str(out), "--max-steps", "4",
                        "--resume", "auto"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "trained with another tokenizer than this run's data" in err
    assert snapshot(out) == before


def test_context_longer_than_the_data(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    prepare_text(text[:3000], tmp_path / "small", tokenizer="char")
    code, _, err = run(["--data", str(tmp_path / "small"), "--out", str(tmp_path / "r"),
                        "--model.context-length", "512"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "fewer than context_length + 1 = 513" in err
    assert not (tmp_path / "r").exists()


def test_resume_from_another_model_config(tmp_path: Path, shards: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    assert run(["--data", str(shards), "--out", str(out), "--max-steps", "2"], capsys)[0] == 0
    before = snapshot(out)
    code, _, err = run(["--data", str(shards), "--out", str(out), "--max-steps", "4", "--resume", str(out),
                        "--model.n-layer", "2"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "the checkpoint is for another model config (n_layer=1 there vs 2 here)" in err
    assert snapshot(out) == before


def test_embedded_corpus_is_only_for_char_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["pretrain", "--preset", "gpt2", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "needs --data" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
