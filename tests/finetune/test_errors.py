"""Bad input (acceptance 6): one line on stderr, exit status 2, and no run folder left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scratchlm.cli.main import main


def _records(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records))
    return path


def _cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    csv = tmp / "texts.csv"
    csv.write_text("text,category\nwin money now,spam\nhello there,ham\n")
    one = tmp / "one.csv"
    one.write_text("text,label\nwin money now,spam\nfree prize,spam\n")
    good = {"instruction": "Say hi.", "input": "", "output": "Hi."}
    pref = {"instruction": "Say hi.", "input": "", "chosen": "Hi!", "rejected": "Go away."}
    return {
        "label column missing": (
            ["finetune", "classify", "--data", str(csv)],
            "error: column 'label' (--label-field) is not in",
        ),
        "one class": (
            ["finetune", "classify", "--data", str(one)],
            "error: column 'label' of " + str(one) + " has only one class ('spam'); a classifier needs at least two",
        ),
        "instruction missing a field": (
            ["finetune", "sft", "--data", str(_records(tmp / "sft.json", [good, {"instruction": "Add 2 and 2."}]))],
            "error: " + str(tmp / "sft.json") + ": record 1 has no 'output' field",
        ),
        "chosen equals rejected": (
            ["finetune", "dpo", "--data", str(_records(tmp / "dpo.json", [pref, {**pref, "rejected": "Hi!"}]))],
            "error: " + str(tmp / "dpo.json") + ": record 1 (and 0 more) has chosen equal to rejected",
        ),
        "LoRA target matches no layer": (
            ["finetune", "sft", "--data", str(_records(tmp / "ok.json", [good] * 4)), "--lora-rank", "4",
             "--lora-targets", "q,attn_qkv"],
            "error: LoRA target 'attn_qkv' matches no linear layer of this model; use q,k,v,o,mlp or one of:",
        ),
        "unknown template": (
            ["finetune", "sft", "--data", str(tmp / "ok.json"), "--template", "vicuna"],
            "error: unknown chat template 'vicuna'; choose one of plain, chatml, alpaca",
        ),
    }


@pytest.mark.parametrize("case", ["label column missing", "one class", "instruction missing a field",
                                  "chosen equals rejected", "LoRA target matches no layer", "unknown template"])
def test_bad_input_is_one_line_exit_2_no_run_folder(case: str, char_ckpt: Path, tmp_path: Path, capsys) -> None:
    argv, message = _cases(tmp_path)[case]
    out = tmp_path / "run"
    assert main([*argv, "--checkpoint", str(char_ckpt), "--out", str(out), "--progress", "false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not out.exists()
