"""`scratchlm eval verify` and the sampling choices (--n, --vote majority, --best-of with logprob or a reward
model) on tiny real checkpoints, checked against independent computations: `scratchlm generate`'s text, the
model's own log-probabilities by teacher forcing, the reward model's scores, the votes counted by hand."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from scratchlm import checkpoint
from scratchlm.cli.main import main
from scratchlm.generate import SampleConfig, complete
from scratchlm.generate.select import majority_vote
from scratchlm.rl.mathanswer import extract_answer, normalize_answer
from scratchlm.rl.reward import RewardScorer
from scratchlm.rl.verifiers import get_verifier

RECORDS = [
    {"question": "What is 2 + 3?", "answer": "Two and three.\n#### 5"},  # GSM8K
    {"problem": "Compute $1/2$.", "solution": "It is $\\boxed{\\frac{1}{2}}$."},  # MATH
    {"prompt": "Name a digit.", "answer": "7"},  # plain
]


def _data(tmp_path: Path, records: list[dict] = RECORDS) -> Path:
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _verify(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    capsys.readouterr()
    assert main(["eval", "verify", "--device", "cpu", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_greedy_rows_match_generate_and_the_verifier(lm_ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "v.jsonl"
    summary = _verify(capsys, "--checkpoint", str(lm_ckpt), "--data", str(_data(tmp_path)), "--raw",
                      "--max-new-tokens", "12", "--out", str(out))
    rows = _rows(out)
    assert [r["record"]["answer"] for r in rows] == ["5", "\\frac{1}{2}", "7"]  # converted
    math_v = get_verifier("math")
    for row in rows:
        assert len(row["completions"]) == 1 and row["chosen"] == 0
        assert row["rewards"] == [math_v(row["record"], row["completion"])]
        capsys.readouterr()  # greedy, raw: exactly what `scratchlm generate` prints for the same prompt
        assert main(["generate", "--checkpoint", str(lm_ckpt), "--prompt", row["record"]["prompt"],
                     "--temperature", "0", "--max-new-tokens", "12", "--device", "cpu"]) == 0
        assert capsys.readouterr().out == row["completion"] + "\n"
    assert summary["records"] == 3 and summary["errors"] == 0
    assert summary["accuracy"] == pytest.approx(sum(r["reward"] for r in rows) / 3)


def test_majority_vote_picks_the_most_common_answer(lm_ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "v.jsonl"
    summary = _verify(capsys, "--checkpoint", str(lm_ckpt), "--data", str(_data(tmp_path)), "--n", "6",
                      "--vote", "majority", "--temperature", "1.0", "--max-new-tokens", "10", "--out", str(out))
    for row in _rows(out):
        answers = [extract_answer(t) for t in row["completions"]]
        counts = Counter(normalize_answer(a) for a in answers if a is not None)
        chosen = answers[row["chosen"]]
        if counts:  # the chosen sample carries an answer that no other answer outnumbers
            assert chosen is not None and counts[normalize_answer(chosen)] == max(counts.values())
            assert row["selection_scores"][row["chosen"]] == max(counts.values())
    rows = _rows(out)
    assert summary["samples_per_record"] == 6
    assert summary["pass@n"] == pytest.approx(sum(max(r["rewards"]) for r in rows) / 3)
    assert summary["pass@n"] >= summary["accuracy"] - 1e-9


def test_majority_vote_by_hand() -> None:
    texts = ["so \\boxed{\\frac{1}{2}}", "it is 3", "0.5 I think", "no idea", "\\boxed{3}", "1/2"]
    index, votes = majority_vote(texts)
    assert index == 0 and votes == [3, 2, 3, 0, 2, 3]
    assert majority_vote(["a", "b"]) == (0, [0, 0])  # no answers: the first sample
    assert majority_vote(["3", "4", "4", "3"])[0] == 0  # a tie goes to the answer seen first


def _teacher_forced_mean_logprob(model, tok, prompt: str, completion: str) -> float:
    p, c = tok.encode(prompt), tok.encode(completion)
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logp = model(ids).float().log_softmax(-1)[0]  # (T, V)
    return sum(logp[len(p) - 1 + i, t].item() for i, t in enumerate(c)) / len(c)


def test_best_of_logprob_picks_the_likeliest_sample(lm_ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "v.jsonl"
    _verify(capsys, "--checkpoint", str(lm_ckpt), "--data", str(_data(tmp_path, RECORDS[:2])), "--raw",
            "--best-of", "4", "--scorer", "logprob", "--temperature", "1.0", "--max-new-tokens", "8",
            "--out", str(out))
    model, tok = checkpoint.load(lm_ckpt)
    for row in _rows(out):
        assert len(row["completions"]) == 4
        ref = [_teacher_forced_mean_logprob(model, tok, row["record"]["prompt"], t) if t else -math.inf
               for t in row["completions"]]
        got = [-math.inf if s is None else s for s in row["selection_scores"]]
        assert got == pytest.approx(ref, abs=1e-4)
        assert row["chosen"] == max(range(4), key=lambda i: ref[i])


def test_best_of_reward_model_and_rescore(lm_ckpt: Path, rm_ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "v.jsonl"
    summary = _verify(capsys, "--checkpoint", str(lm_ckpt), "--data", str(_data(tmp_path)), "--best-of", "3",
                      "--scorer", f"reward:{rm_ckpt}", "--temperature", "1.0", "--max-new-tokens", "8",
                      "--verifier", f"reward:{rm_ckpt}", "--out", str(out))
    scorer = RewardScorer(rm_ckpt, "cpu")
    rows = _rows(out)
    for row in rows:
        prompt = [{"role": "user", "content": row["record"]["prompt"]}]
        ref = scorer.score_completions([(prompt, t) for t in row["completions"]])
        assert row["selection_scores"] == pytest.approx(ref, abs=1e-5)
        assert row["chosen"] == max(range(3), key=lambda i: ref[i])
        assert row["rewards"] == pytest.approx([1 / (1 + math.exp(-s)) for s in ref], abs=1e-5)
    assert summary["accuracy"] == pytest.approx(sum(r["reward"] for r in rows) / 3)

    # re-scored offline with another verifier: same completions and choices, new rewards, no model needed
    again = tmp_path / "again.jsonl"
    summary = _verify(capsys, "--rescore", str(out), "--verifier", "regex:[0-9]", "--out", str(again))
    for old, new in zip(rows, _rows(again)):
        assert new["completions"] == old["completions"] and new["chosen"] == old["chosen"]
        assert new["rewards"] == [float(any(ch.isdigit() for ch in t)) for t in old["completions"]]


def test_a_raising_verifier_is_counted_and_the_run_goes_on(lm_ckpt: Path, tmp_path: Path, capsys) -> None:
    checks = tmp_path / "checks.py"
    checks.write_text("def picky(record, completion):\n"
                      "    if record['answer'] == '7':\n        raise ValueError('cannot judge digits')\n"
                      "    return 1.0\n")
    out = tmp_path / "v.jsonl"
    capsys.readouterr()
    assert main(["eval", "verify", "--checkpoint", str(lm_ckpt), "--data", str(_data(tmp_path)), "--device", "cpu",
                 "--verifier", f"python:{checks}:picky", "--max-new-tokens", "4", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "the verifier raised on 1 sample(s), scored 0 (record 2: ValueError: cannot judge digits)" in err
    rows = _rows(out)
    assert [r["reward"] for r in rows] == [1.0, 1.0, 0.0]
    assert rows[2]["errors"] == ["ValueError: cannot judge digits"] and rows[0]["errors"] == [None]


@pytest.mark.parametrize(("extra", "message"), [
    (["--n", "4"], "pass --temperature"),
    (["--vote", "majority", "--best-of", "2", "--temperature", "1"], "pass one of them"),
    (["--scorer", "bleu", "--best-of", "2", "--temperature", "1"], "--scorer 'bleu' is unknown"),
    (["--verifier", "nope"], "--verifier 'nope' is unknown"),
])
def test_bad_flags_are_one_line_errors(lm_ckpt: Path, tmp_path: Path, capsys, extra: list[str],
                                       message: str) -> None:
    capsys.readouterr()
    assert main(["eval", "verify", "--checkpoint", str(lm_ckpt), "--data", str(_data(tmp_path)),
                 "--out", str(tmp_path / "v.jsonl"), "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_reward_model_with_another_tokenizer_is_refused(lm_ckpt: Path, tmp_path: Path, capsys) -> None:
    from scratchlm.model import GPT, ModelConfig
    from scratchlm.model.classifier import RewardModel
    from scratchlm.tokenizer import CharTokenizer

    tok = CharTokenizer.train(["0123456789 abc"], special_tokens=["<|endoftext|>"])
    rm = tmp_path / "other-rm"
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=64, n_layer=1, n_head=1, d_model=8))
    checkpoint.save_finetuned(rm, RewardModel(model), tok, {"reward": {"max_length": 64, "pad_id": 0}})
    for flags in (["--best-of", "2", "--temperature", "1", "--scorer", f"reward:{rm}"], ["--verifier", f"reward:{rm}"]):
        capsys.readouterr()
        assert main(["eval", "verify", "--checkpoint", str(lm_ckpt), "--data", str(_data(tmp_path)),
                     "--out", str(tmp_path / "v.jsonl"), "--device", "cpu", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert "was trained with another tokenizer than the model" in err and "\n" not in err


def test_generate_vote_and_best_of_print_the_chosen_sample(lm_ckpt: Path, capsys) -> None:
    base = ["generate", "--checkpoint", str(lm_ckpt), "--prompt", "2+2=", "--temperature", "1", "--seed", "3",
            "--max-new-tokens", "8", "--device", "cpu"]
    model, tok = checkpoint.load(lm_ckpt)
    config = SampleConfig(temperature=1.0, seed=3, max_new_tokens=8, n=4)
    samples = [c.text for c in complete(model, tok, ["2+2="], config)[0]]  # what the 4 samples are
    capsys.readouterr()
    assert main([*base, "--n", "4", "--vote", "majority"]) == 0
    assert capsys.readouterr().out == samples[majority_vote(samples)[0]] + "\n"
    assert main([*base, "--best-of", "4"]) == 0
    lps = [_teacher_forced_mean_logprob(model, tok, "2+2=", s) if s else -math.inf for s in samples]
    assert capsys.readouterr().out == samples[max(range(4), key=lambda i: lps[i])] + "\n"
