"""Reward model: the Bradley-Terry loss equals the formula on hand-made scores; a model trained on pairs that
differ by a planted feature ranks held-out pairs right; the checkpoint loads through the one loader and scores
from the command line."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from scratchlm import checkpoint
from scratchlm.cli.main import main
from scratchlm.errors import ScratchlmError
from scratchlm.model.classifier import RewardModel
from scratchlm.rl.verifiers import check_tokenizer, get_verifier
from scratchlm.tokenizer import CharTokenizer
from scratchlm.train.modes.reward import bradley_terry_loss, collate_pairs

WORDS = "the a sun moon river stone tree cloud bird field road house light rain wind hill".split()


def test_loss_equals_the_formula_on_hand_made_scores() -> None:
    chosen = torch.tensor([2.0, 0.5, -1.0, 3.0])
    rejected = torch.tensor([1.0, 1.5, -1.0, -2.0])
    # by hand: -log sigmoid(d) = log(1 + exp(-d)) for d = 1, -1, 0, 5
    expected = sum(math.log(1 + math.exp(-d)) for d in (1.0, -1.0, 0.0, 5.0)) / 4
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)
    # the loss only sees differences
    assert bradley_terry_loss(chosen + 7, rejected + 7).item() == pytest.approx(expected, rel=1e-6)


def test_collate_marks_each_texts_last_real_token() -> None:
    batch = collate_pairs([{"chosen_ids": [5, 6, 7], "rejected_ids": [8]},
                           {"chosen_ids": [1, 2], "rejected_ids": [3, 4, 5, 6]}], pad_id=0)
    assert batch["ids"].tolist() == [[5, 6, 7, 0], [1, 2, 0, 0], [8, 0, 0, 0], [3, 4, 5, 6]]
    assert batch["last"].tolist() == [2, 1, 0, 3]


def planted_pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Chosen and rejected share their filler words and differ only in one planted word, at a random place."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 8))]
        at = rng.randint(0, len(words))
        good, bad = words[:at] + ["kind"] + words[at:], words[:at] + ["cold"] + words[at:]
        pairs.append({"instruction": "Describe the scene.", "input": "", "chosen": " ".join(good),
                      "rejected": " ".join(bad)})
    return pairs


def test_planted_feature_is_learned_and_the_checkpoint_scores(
    char_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "prefs.json"
    data.write_text(json.dumps(planted_pairs(200)))
    out = tmp_path / "rm"
    argv = ["finetune", "reward", "--checkpoint", str(char_ckpt), "--data", str(data), "--template", "plain",
            "--val-fraction", "0.2", "--max-length", "96", "--micro-batch-size", "16", "--max-steps", "40",
            "--lr", "3e-3", "--min-lr", "3e-4", "--warmup-steps", "5", "--eval-every", "0", "--save-every", "0",
            "--out", str(out), "--progress", "false", "--precision", "fp32", "--device", "cpu"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["val"]["pairs"] == 40 and report["val"]["accuracy"] >= 0.9, report

    loaded = checkpoint.read(out)  # the one loader knows the kind
    assert loaded.kind == "reward" and isinstance(loaded.model, RewardModel)
    assert loaded.config["train_mode"] == "reward"

    # scratchlm score: the planted word decides, wherever it stands
    texts = ["the sun kind river stone", "the sun cold river stone", "kind moon hill", "cold moon hill"]
    capsys.readouterr()
    assert main(["score", "--checkpoint", str(out), "--prompt", "Describe the scene.", *texts,
                 "--device", "cpu"]) == 0
    scores = [float(line) for line in capsys.readouterr().out.split()]
    assert scores[0] > scores[1] and scores[2] > scores[3]

    # the same model as a verifier (RLHF and RLVR share one code path): sigmoid of the same scores
    verifier = get_verifier(f"reward:{out}", device="cpu")
    record = {"instruction": "Describe the scene.", "input": ""}
    rewards = [verifier(record, t) for t in texts]
    assert rewards == pytest.approx([1 / (1 + math.exp(-s)) for s in scores], abs=1e-4)
    check_tokenizer(verifier, loaded.tokenizer)  # the same vocabulary: fine
    other = CharTokenizer.train(["a different corpus"], special_tokens=["<|endoftext|>"])
    with pytest.raises(ScratchlmError, match="another tokenizer than the policy"):
        check_tokenizer(verifier, other)


def test_score_refuses_a_language_model(char_ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--checkpoint", str(char_ckpt), "some text", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not a reward-model checkpoint" in err and "finetune reward" in err


def test_a_prefix_tuned_reward_model_trains_only_its_prefix_and_head_and_scores(
    char_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--peft prefix` reaches the reward mode as it reaches classify and sft: the base stays bitwise, the folder
    holds the adapters and the head, and `score` loads it through the one loader."""
    data = tmp_path / "prefs.json"
    data.write_text(json.dumps(planted_pairs(40)))
    out = tmp_path / "rm-prefix"
    assert main(["finetune", "reward", "--checkpoint", str(char_ckpt), "--data", str(data), "--template", "plain",
                 "--peft", "prefix", "--prefix-length", "4", "--max-length", "96", "--micro-batch-size", "8",
                 "--max-steps", "3", "--eval-every", "0", "--save-every", "0", "--out", str(out), "--progress",
                 "false", "--precision", "fp32", "--device", "cpu"]) == 0
    base = checkpoint.read(char_ckpt).model.state_dict()
    loaded = checkpoint.read(out)
    assert isinstance(loaded.model, RewardModel) and loaded.model.model.blocks[0].attn.prefix is not None
    assert all(torch.equal(base[k], v) for k, v in loaded.model.model.state_dict().items() if k in base)
    capsys.readouterr()
    assert main(["score", "--checkpoint", str(out), "kind sun", "cold sun", "--device", "cpu"]) == 0
    assert len([float(s) for s in capsys.readouterr().out.split()]) == 2
