"""The eval commands end to end on a tiny checkpoint, the bad inputs of the issue (one line, exit 2), run
series with a plot, and the training loop's periodic tasks."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch

from scratchlm import checkpoint
from scratchlm.cli.main import main
from scratchlm.errors import ScratchlmError
from scratchlm.eval.periodic import evaluate_tasks, parse_task
from scratchlm.eval.perplexity import perplexity_of_text
from scratchlm.model import GPT, ModelConfig
from scratchlm.tokenizer import CharTokenizer

TEXT = "the cat sat on the mat. the dog sat on the log.\n" * 6


@pytest.fixture
def tok() -> CharTokenizer:
    return CharTokenizer(sorted(set(string.printable) - set("\x0b\x0c")))


@pytest.fixture
def run_dir(tmp_path: Path, tok: CharTokenizer) -> Path:
    """A run folder with two step checkpoints of a tiny GPT (context 32)."""
    run = tmp_path / "run"
    torch.manual_seed(0)
    for step in (10, 20):
        model = GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=32, n_layer=1, n_head=2, d_model=16))
        checkpoint.save_step(run, step, model, tok)
    return run


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err.strip()


def test_perplexity_table_json_and_report(run_dir: Path, tmp_path: Path, tok: CharTokenizer,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    text_file = tmp_path / "t.txt"
    text_file.write_text(TEXT)
    out = tmp_path / "ppl.json"
    assert main(["eval", "perplexity", "--checkpoint", str(run_dir), "--input", str(text_file), "--context", "32",
                 "--stride", "16", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ["token_perplexity", "word_perplexity", "bits_per_byte", "tokens"]
    model, _ = checkpoint.load(run_dir)
    ref = perplexity_of_text(model, tok, TEXT, 32, 16)
    saved = json.loads(out.read_text())["results"][0]
    assert saved["word_perplexity"] == pytest.approx(ref.word_perplexity, rel=1e-6)
    assert saved["tokens"] == len(TEXT) - 1 and saved["words"] == len(TEXT.split())
    # defaults: the model's context, stride = context / 2
    assert main(["eval", "perplexity", "--checkpoint", str(run_dir), "--input", str(text_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nll"] == pytest.approx(ref.nll, rel=1e-6)


def test_all_steps_series_and_plot(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text_file = tmp_path / "t.txt"
    text_file.write_text(TEXT)
    out = tmp_path / "series.json"
    assert main(["eval", "perplexity", "--checkpoint", str(run_dir), "--input", str(text_file), "--all-steps",
                 "--out", str(out), "--no-progress"]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["step"] for r in rows] == [10, 20]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_mc_command(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"context": f"q{i}:", "choices": ["a", "bb", "c"], "label": i % 3}) + "\n"
                            for i in range(6)))
    out = tmp_path / "mc.json"
    argv = ["eval", "mc", "--checkpoint", str(run_dir), "--task", str(task), "--shots", "2", "--limit", "4",
            "--json", "--out", str(out)]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["task"], first["n"], first["shots"]) == ("task", 4, 2) and 0 <= first["acc"] <= 1
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == first  # same seed, same prompts, same numbers
    assert len(json.loads(out.read_text())["results"][0]["items"]) == 4


def test_bad_label_is_one_line_exit_2(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task = tmp_path / "task.jsonl"
    task.write_text('{"context": "a", "choices": ["x", "y"], "label": 1}\n{"context": "b", "choices": ["x", "y"], "label": 5}\n')
    out = tmp_path / "mc.json"
    assert main(["eval", "mc", "--checkpoint", str(run_dir), "--task", str(task), "--out", str(out)]) == 2
    assert _one_line_error(capsys) == (
        f"error: {task}:2: label 5 is out of range for 2 choices; use an index 0..1")
    assert not out.exists()


def test_context_longer_than_the_model_is_one_line_exit_2(run_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    text_file = tmp_path / "t.txt"
    text_file.write_text(TEXT)
    out = tmp_path / "ppl.json"
    assert main(["eval", "perplexity", "--checkpoint", str(run_dir), "--input", str(text_file), "--context", "64",
                 "--out", str(out), "--no-progress"]) == 2
    assert _one_line_error(capsys) == (
        "error: --context 64 is longer than the model's context length 32; pass --context 32 or less")
    assert not out.exists()


def test_other_bad_inputs(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "perplexity", "--checkpoint", str(run_dir)]) == 2
    assert "give exactly one of --dataset" in _one_line_error(capsys)
    assert main(["eval", "perplexity", "--checkpoint", str(run_dir), "--input", str(tmp_path / "no.txt")]) == 2
    assert "does not exist" in _one_line_error(capsys)
    assert main(["eval", "mc", "--checkpoint", str(run_dir), "--task", "nope"]) == 2
    assert "unknown task 'nope'" in _one_line_error(capsys)


def test_periodic_tasks(run_dir: Path, tmp_path: Path, tok: CharTokenizer) -> None:
    task = tmp_path / "quiz.jsonl"
    task.write_text("".join(json.dumps({"context": f"q{i}:", "choices": ["a", "b"], "label": i % 2}) + "\n"
                            for i in range(5)))
    text_file = tmp_path / "t.txt"
    text_file.write_text(TEXT)
    model, _ = checkpoint.load(run_dir)
    model.train()
    got = evaluate_tasks(model, tok, [f"{task}@3", f"ppl:{text_file}@100"], "cpu")
    assert set(got) == {"quiz_acc", "quiz_acc_norm", "t_ppl", "t_word_ppl", "t_bpb"}
    ref = perplexity_of_text(model, tok, TEXT[:100], 32, 16)
    assert got["t_word_ppl"] == pytest.approx(ref.word_perplexity, rel=1e-6)
    assert model.training  # restored
    assert parse_task("hellaswag").size == 200 and parse_task("ppl:wikitext-2@0").size == 0
    with pytest.raises(ScratchlmError, match="unknown task"):
        parse_task("helaswag")
    with pytest.raises(ScratchlmError, match="neither a text file nor a named text asset"):
        parse_task("ppl:nothing")


def test_perplexity_limit_scores_the_first_lines(run_dir: Path, tmp_path: Path, tok: CharTokenizer,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    text = "".join(f"line {i}: {TEXT[:40]}\n" for i in range(30))
    path = tmp_path / "t.txt"
    path.write_text(text)
    assert main(["eval", "perplexity", "--checkpoint", str(run_dir), "--input", str(path), "--limit", "5",
                 "--context", "32", "--stride", "16", "--json", "--no-progress"]) == 0
    got = json.loads(capsys.readouterr().out)
    model, _ = checkpoint.load(run_dir)
    ref = perplexity_of_text(model, tok, "".join(text.splitlines(keepends=True)[:5]), 32, 16)
    assert got["tokens"] == ref.tokens and got["nll"] == pytest.approx(ref.nll, rel=1e-6)
    assert got["source"].endswith("(first 5 lines)")
    assert main(["eval", "perplexity", "--checkpoint", str(run_dir), "--input", str(path), "--limit", "-1"]) == 2
    assert _one_line_error(capsys).startswith("error: --limit must be 0")
