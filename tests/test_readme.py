"""The README's "Using it" section is a contract: its commands, run in order as written in a fresh folder.

The default suite runs the short version (step counts lowered, the context of `eval perplexity` fitted to the
tiny model); lines that need downloaded weights (`convert from-hf ~/hf/gpt2`, `eval mc` on HellaSwag) or a judge
server are left out, and the commands that start from `checkpoints/gpt2` start from the pretrained `runs/tiny`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from scratchlm.cli.main import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert rc == 0, f"scratchlm {' '.join(argv)} -> {rc}: {err.strip()[-500:]}"
    return out


def _sequence(tmp_path: Path, capsys: pytest.CaptureFixture[str], short: bool) -> None:
    os.chdir(tmp_path)
    steps = (lambda n: ["--max-steps", "3"]) if short else (lambda n: ["--max-steps", str(n)])
    assert "tinyshakespeare" in _run(capsys, "fetch", "--list")
    assert json.loads(_run(capsys, "tokenizer", "encode", "Hello world")) == [15496, 995]
    shakespeare = _run(capsys, "fetch", "tinyshakespeare").strip()
    _run(capsys, "tokenizer", "train", "--input", shakespeare, "--vocab-size", "300" if short else "4096",
         "--out", "tok.json")
    assert Path("tok.json").is_file()
    _run(capsys, "data", "prepare", "--dataset", "tinyshakespeare", "--split-docs", "--tokenizer", "gpt2",
         "--out", "data/shakespeare")
    assert "124,439,808" in _run(capsys, "model", "info", "--preset", "gpt2")
    _run(capsys, "pretrain", "--model-preset", "gpt2-tiny", "--data", "data/shakespeare", *steps(200),
         "--out", "runs/tiny")
    assert (Path("runs/tiny") / "latest").is_file()
    _run(capsys, "convert", "to-hf", "runs/tiny", "hf/tiny")
    assert Path("hf/tiny/model.safetensors").is_file()
    text = _run(capsys, "generate", "--checkpoint", "runs/tiny", "--prompt", "Hello, I'm a language model,",
                "--temperature", "0.8", "--top-p", "0.95", "--max-new-tokens", "16")
    assert text.strip()
    _run(capsys, "finetune", "classify", "--checkpoint", "runs/tiny", "--data", _run(capsys, "fetch", "sms-spam").strip(),
         "--columns", "label,text", "--out", "runs/spam", *steps(300))
    label = _run(capsys, "classify", "--checkpoint", "runs/spam", "WINNER!! Claim your free prize now")
    assert label.split("\t")[0] in ("ham", "spam")
    _run(capsys, "finetune", "sft", "--checkpoint", "runs/tiny", "--data",
         _run(capsys, "fetch", "instruction-data").strip(), "--lora.rank", "8", "--out", "runs/sft", *steps(300))
    _run(capsys, "lora", "merge", "--checkpoint", "runs/sft", "--out", "runs/sft-merged")
    _run(capsys, "finetune", "dpo", "--checkpoint", "runs/sft-merged", "--data",
         _run(capsys, "fetch", "instruction-data-with-preference").strip(), "--drop-equal-pairs", "--out", "runs/dpo",
         *steps(300))
    assert (Path("runs/dpo") / "latest").is_file()
    ppl = json.loads(_run(capsys, "eval", "perplexity", "--checkpoint", "runs/sft", "--input", _run(capsys, "fetch", "the-verdict").strip(),
                          "--context", "256", "--stride", "256", "--json").strip().splitlines()[-1])
    assert 1 < ppl["token_perplexity"] < 50257


def test_readme_sequence_short(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _sequence(tmp_path, capsys, short=True)


@pytest.mark.slow
def test_readme_sequence_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _sequence(tmp_path, capsys, short=False)
