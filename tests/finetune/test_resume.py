"""Every finetuning mode resumes exactly: 3 steps + resume + 3 steps == 6 straight steps (weights bitwise,
losses and mode metrics equal), LoRA, prefix (reparameterised) and prompt runs included; each run writes metrics.jsonl and loss.png."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scratchlm.cli.main import main


def _data(kind: str, mirror: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    if kind == "classify":
        path = tmp_path / "sms.tsv"
        path.write_text("".join((mirror / "SMSSpamCollection.tsv").read_text().splitlines(True)[:200]))
        return path, ["--columns", "label,text", "--train", "last", "--max-length", "64"]
    if kind == "sft":
        path = tmp_path / "instructions.json"
        path.write_text(json.dumps(json.loads((mirror / "instruction-data.json").read_text())[:40]))
        return path, ["--max-length", "128", "--template", "chatml"]
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps(json.loads((mirror / "instruction-data-with-preference.json").read_text())[:24]))
    if kind == "reward":
        return path, ["--max-length", "192", "--template", "chatml", "--drop-equal-pairs"]
    return path, ["--max-length", "192", "--beta", "0.5", "--template", "chatml"]


CASES = [("classify", []), ("sft", ["--lora-rank", "4", "--lora-dropout", "0.1", "--lora-targets", "q,v,mlp"]),
         ("dpo", ["--lora-rank", "2", "--lora-targets", "q,k,v,o"]), ("sft", []),
         ("sft", ["--peft", "prefix", "--prefix-length", "3", "--prefix.reparam", "8"]),
         ("classify", ["--peft", "prompt", "--prefix-length", "3"]),
         pytest.param("reward", ["--lora-rank", "2", "--lora-targets", "q,v"], marks=pytest.mark.slow)]


@pytest.mark.parametrize(("kind", "lora"), CASES, ids=["classify", "sft-lora", "dpo-lora", "sft-full", "sft-prefix-reparam",
                                                     "classify-prompt", "reward-lora"])
def test_resumed_run_equals_straight_run(kind: str, lora: list[str], char_ckpt: Path, mirror: Path,
                                         tmp_path: Path, metrics) -> None:
    data, extra = _data(kind, mirror, tmp_path)

    def run(out: Path, *more: str) -> None:
        argv = ["finetune", kind, "--checkpoint", str(char_ckpt), "--data", str(data), *extra, *lora,
                "--micro-batch-size", "4", "--val-fraction", "0.1", "--lr", "1e-3", "--schedule", "constant",
                "--warmup-steps", "2", "--eval-every", "0", "--eval-batches", "2", "--save-every", "3",
                "--log-every", "1", "--progress", "false", "--out", str(out), *more]
        assert main(argv) == 0

    run(tmp_path / "a", "--max-steps", "6")
    run(tmp_path / "b", "--max-steps", "3")
    run(tmp_path / "b", "--max-steps", "6", "--resume", "auto")
    a, b = tmp_path / "a" / "step_000006", tmp_path / "b" / "step_000006"
    weight_files = sorted(p.name for p in a.glob("*.safetensors"))
    assert weight_files == sorted(p.name for p in b.glob("*.safetensors"))
    if lora:  # adapter-only: no full weights saved
        assert "adapters.safetensors" in weight_files and "model.safetensors" not in weight_files
    for name in weight_files:
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (name, k)
    ra, rb = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [r["step"] for r in rb] == list(range(1, 7))
    skip = {"tokens_per_s", "elapsed_s", "mfu"}  # wall-clock figures differ
    assert [{k: v for k, v in r.items() if k not in skip} for r in ra] == [
        {k: v for k, v in r.items() if k not in skip} for r in rb]
    assert (tmp_path / "b" / "loss.png").stat().st_size > 1000
    assert metrics(tmp_path / "b", "eval")  # validation was logged
