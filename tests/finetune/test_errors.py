"""Bad input (acceptance 6): one line on stderr, exit status 2, and no run folder left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

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


# ---- issue #13: data files that are not text, config.yaml round trips, the one `lora` spelling --------------------


@pytest.mark.parametrize(("content", "message"), [
    (b"\x00\x01\x02\x03binary\x00", "looks binary (a NUL byte in its first 8192 bytes); pass a text file"),
    (b"text,label\nwin money now,spam\nhello th\xffere,ham\n",
     ":3 is not UTF-8 text (byte 0xff at offset 38); save the file as UTF-8 (or fix that byte)"),
])
def test_classify_data_that_is_not_utf8_text(content: bytes, message: str, char_ckpt: Path, tmp_path: Path,
                                             capsys) -> None:
    data = tmp_path / "texts.csv"
    data.write_bytes(content)
    out = tmp_path / "run"
    assert main(["finetune", "classify", "--data", str(data), "--checkpoint", str(char_ckpt), "--out", str(out),
                 "--progress", "false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(data) in err and err.rstrip("\n").endswith(message) and err.count("\n") == 1, err
    assert not out.exists()


def _finetune_data(kind: str, mirror: Path, tmp: Path) -> tuple[Path, list[str]]:
    if kind == "classify":
        path = tmp / "sms.tsv"
        path.write_text("".join((mirror / "SMSSpamCollection.tsv").read_text().splitlines(True)[:120]))
        return path, ["--columns", "label,text", "--max-length", "48"]
    name = "instruction-data.json" if kind == "sft" else "instruction-data-with-preference.json"
    path = tmp / name
    path.write_text(json.dumps(json.loads((mirror / name).read_text())[:24]))
    return path, ["--max-length", "128", "--template", "chatml"]


@pytest.mark.parametrize(("kind", "lora"), [("classify", []), ("sft", ["--lora-rank", "4", "--lora-targets", "q,v"]),
                                            ("dpo", ["--lora.rank", "2"])])
def test_config_yaml_is_a_valid_config_for_the_same_command(kind: str, lora: list[str], char_ckpt: Path,
                                                            mirror: Path, tmp_path: Path) -> None:
    import yaml
    from safetensors.torch import load_file

    data, extra = _finetune_data(kind, mirror, tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["finetune", kind, "--checkpoint", str(char_ckpt), "--data", str(data), *extra, *lora,
                 "--micro-batch-size", "4", "--max-steps", "3", "--warmup-steps", "1", "--eval-every", "0",
                 "--val-fraction", "0.2", "--progress", "false", "--out", str(a)]) == 0
    written = yaml.safe_load((a / "config.yaml").read_text())
    if lora:  # one spelling: the flag's section is config.json's `lora` section
        assert written["lora"]["rank"] == int(lora[1])
        config_json = json.loads((a / "step_000003" / "config.json").read_text())
        assert {k: config_json["lora"][k] for k in written["lora"]} == written["lora"]
    assert main(["finetune", kind, "--config", str(a / "config.yaml"), "--out", str(b)]) == 0
    assert yaml.safe_load((b / "config.yaml").read_text()) == {**written, "out": str(b)}
    files = sorted(p.name for p in (a / "step_000003").glob("*.safetensors"))
    assert files == sorted(p.name for p in (b / "step_000003").glob("*.safetensors"))
    for name in files:
        ta, tb = load_file(str(a / "step_000003" / name)), load_file(str(b / "step_000003" / name))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name


def test_old_lora_keys_in_a_config_file_still_work(tmp_path: Path) -> None:
    from scratchlm.cli.finetune import SFTConfig
    from scratchlm.cli.parsing import load_yaml_config

    config = tmp_path / "old.yaml"
    config.write_text("checkpoint: ckpt\ndata: d.json\nlora_rank: 4\nlora_targets: q,v\n")
    cfg = load_yaml_config(SFTConfig, config)
    assert (cfg.lora.rank, cfg.lora.targets, cfg.lora_config().rank) == (4, ("q", "v"), 4)
