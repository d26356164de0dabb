"""DPO: the loss equals the formula on hand-made log-probabilities; on a toy preference set the reward margin
and the preference accuracy rise."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from scratchlm.cli.main import main
from scratchlm.data.finetune import IGNORE
from scratchlm.train.modes.dpo import dpo_loss, sequence_logps


def test_loss_equals_the_formula_on_hand_made_logps() -> None:
    pc = torch.tensor([-5.0, -3.0, -10.0])  # log pi(chosen)
    pr = torch.tensor([-6.0, -2.5, -9.0])  # log pi(rejected)
    rc = torch.tensor([-5.5, -3.0, -9.0])  # log pi_ref(chosen)
    rr = torch.tensor([-5.5, -3.0, -9.5])  # log pi_ref(rejected)
    beta = 0.5
    loss, r_w, r_l = dpo_loss(pc, pr, rc, rr, beta)
    # by hand: margins beta * ((pc - rc) - (pr - rr)) = 0.5 * (0.5 - -0.5), 0.5 * (0 - 0.5), 0.5 * (-1 - 0.5)
    margins = [0.5, -0.25, -0.75]
    expected = sum(-math.log(1 / (1 + math.exp(-m))) for m in margins) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert r_w.tolist() == pytest.approx([0.25, 0.0, -0.5]) and r_l.tolist() == pytest.approx([-0.25, 0.25, 0.25])


def test_sequence_logps_sums_the_answer_tokens_only() -> None:
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]]))  # (1, 3, 3)
    targets = torch.tensor([[IGNORE, 1, 2]])
    assert sequence_logps(logits, targets).item() == pytest.approx(math.log(0.8) + math.log(0.6), rel=1e-6)


PREFS = [
    {"instruction": "Greet the user.", "input": "", "chosen": "Hello, nice to meet you!", "rejected": "Go away."},
    {"instruction": "Describe the sky.", "input": "", "chosen": "The sky is blue and calm.", "rejected": "Ugly."},
    {"instruction": "Say thanks.", "input": "for the gift", "chosen": "Thank you for the gift!", "rejected": "Meh."},
    {"instruction": "Answer politely.", "input": "Can you help?", "chosen": "Of course, happy to help.",
     "rejected": "No."},
]


def test_margin_and_accuracy_rise_on_a_toy_set(char_ckpt: Path, tmp_path: Path, metrics) -> None:
    data = tmp_path / "prefs.json"
    data.write_text(json.dumps(PREFS))
    out = tmp_path / "dpo"
    argv = ["finetune", "dpo", "--checkpoint", str(char_ckpt), "--data", str(data), "--beta", "0.5",
            "--template", "chatml", "--val-fraction", "0", "--max-length", "128", "--micro-batch-size", "4",
            "--max-steps", "20", "--lr", "2e-4", "--min-lr", "2e-5", "--warmup-steps", "2", "--log-every", "1",
            "--eval-every", "0", "--save-every", "0", "--out", str(out), "--progress", "false",
            "--precision", "fp32"]  # the reference is fp32: step 1's rewards are exactly 0 only in fp32 training
    assert main(argv) == 0
    records = metrics(out)
    first, last = records[0], records[-1]
    # at step 1 the policy IS the reference: rewards are 0 and the loss is log 2
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-4)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert last["reward_margin"] > 1.0 and last["reward_accuracy"] == 1.0 and last["loss"] < 0.4
    assert first["reward_accuracy"] < last["reward_accuracy"]
    assert all(b["reward_margin"] > a["reward_margin"] for a, b in zip(records, records[1:]))  # rises every step
    assert last["chosen_reward"] > last["rejected_reward"]
