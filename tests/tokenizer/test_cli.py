"""`scratchlm tokenizer ...` end to end, and every bad input of the issue: exit 2, one line, no partial file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from scratchlm.cli.main import main
from scratchlm.errors import ScratchlmError
from scratchlm.tokenizer import load
from scratchlm.tokenizer.train import TokenizerTrainConfig, train

MIRROR = Path(
    os.environ.get("SCRATCHLM_MIRROR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
)
VERDICT = MIRROR / "the-verdict.txt"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_train_encode_decode_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tok.json"
    code, stdout, _ = run(
        capsys, "tokenizer", "train", "--input", str(VERDICT), "--vocab-size", "300", "--out", str(out)
    )
    assert code == 0 and str(out) in stdout
    expected = train(TokenizerTrainConfig(vocab_size=300), [VERDICT.read_text(encoding="utf-8")])
    assert load(out).identity() == expected.identity()

    text = "I had always thought Jack Gisburn rather a cheap genius"
    code, stdout, _ = run(capsys, "tokenizer", "encode", "--tokenizer", str(out), text)
    ids = json.loads(stdout)
    assert code == 0 and ids == expected.encode(text)
    code, stdout, _ = run(capsys, "tokenizer", "decode", "--tokenizer", str(out), json.dumps(ids))
    assert code == 0 and stdout == text

    ids_file = tmp_path / "ids.json"
    code, stdout, _ = run(capsys, "tokenizer", "encode", "--input", str(VERDICT))  # gpt2 by default
    ids_file.write_text(stdout)
    assert json.loads(stdout) == load("gpt2").encode(VERDICT.read_text(encoding="utf-8"))
    code, stdout, _ = run(capsys, "tokenizer", "decode", "--input", str(ids_file))
    assert stdout == VERDICT.read_text(encoding="utf-8")

    code, stdout, _ = run(capsys, "tokenizer", "info", str(out), "--input", str(VERDICT))
    n = len(expected.encode_ordinary(VERDICT.read_text(encoding="utf-8")))
    assert "vocab size:     300" in stdout and '{"<|endoftext|>": 299}' in stdout
    assert (
        f"{VERDICT.stat().st_size} bytes, {n} tokens, {VERDICT.stat().st_size / n:.2f} bytes/token" in stdout
    )


def test_encode_specials_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert json.loads(run(capsys, "tokenizer", "encode", "--special", "allow", "a<|endoftext|>")[1]) == [
        64,
        50256,
    ]
    assert 50256 not in json.loads(
        run(capsys, "tokenizer", "encode", "--special", "text", "a<|endoftext|>")[1]
    )


def test_train_char_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "char.json"
    code, _, _ = run(
        capsys,
        "tokenizer",
        "train",
        "--kind",
        "char",
        "--special",
        "--input",
        str(VERDICT),
        "--out",
        str(out),
    )
    tok = load(out)
    assert code == 0 and tok.kind == "char" and tok.special_tokens == {}
    assert tok.vocab_size == len(set(VERDICT.read_text(encoding="utf-8")))


# ---- bad input: one line, exit 2, nothing half-written ---------------------------------------------------------
def test_unknown_tokenizer_name(capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(capsys, "tokenizer", "encode", "--tokenizer", "gpt5", "hi")
    assert "unknown tokenizer 'gpt5'; use one of gpt2 or the path of a tokenizer JSON file" in err


def test_missing_tokenizer_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(capsys, "tokenizer", "decode", "--tokenizer", str(tmp_path / "nope.json"), "[1]")
    assert f"tokenizer file {tmp_path / 'nope.json'} does not exist" in err


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        ('{"hello": 1}', "is not a scratchlm tokenizer"),
        (
            '{"format": "scratchlm-tokenizer", "format_version": 99}',
            "format version 99, this scratchlm reads version 1",
        ),
        ("TRUNCATED", "is corrupt: a byte-level BPE vocabulary must contain all 256 single bytes"),
        ("BADCHAR", "is corrupt: token with character"),
        ("BADSPECIAL", "is corrupt: special token '<|endoftext|>' has id 3"),
    ],
)
def test_corrupt_tokenizer_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "tok.json"
    good = train(TokenizerTrainConfig(vocab_size=260), ["hello hello world"]).to_dict()
    if content == "TRUNCATED":
        good["vocab"] = good["vocab"][10:]
        content = json.dumps(good)
    elif content == "BADCHAR":
        good["vocab"][-1] = "hello world"  # a space is not a character of GPT-2's byte map
        content = json.dumps(good)
    elif content == "BADSPECIAL":
        good["special_tokens"] = {"<|endoftext|>": 3}
        content = json.dumps(good)
    path.write_text(content)
    err = one_line_error(capsys, "tokenizer", "encode", "--tokenizer", str(path), "hi")
    assert f"tokenizer file {path}" in err and message in err


def test_id_out_of_range_on_decode(capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(capsys, "tokenizer", "decode", "[15496, 50257]")
    assert "token id 50257 is out of range for this tokenizer (ids are 0..50256)" in err
    err = one_line_error(capsys, "tokenizer", "decode", "[15496, oops]")
    assert "is not a JSON list of token ids" in err


def test_disallowed_special_token(capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(capsys, "tokenizer", "encode", "hi<|endoftext|>")
    assert "contains the special token '<|endoftext|>'; pass --special allow" in err
    with pytest.raises(ScratchlmError, match="allowed_special="):  # the library names its own arguments
        load("gpt2").encode("hi<|endoftext|>")


def test_unwritable_output_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    out = blocker / "tok.json"
    err = one_line_error(
        capsys, "tokenizer", "train", "--input", str(VERDICT), "--vocab-size", "300", "--out", str(out)
    )
    assert f"cannot create --out folder {blocker}" in err
    folder = tmp_path / "folder"
    folder.mkdir()
    err = one_line_error(capsys, "tokenizer", "train", "--input", str(VERDICT), "--out", str(folder))
    assert "is a folder; give a file name" in err
    with pytest.raises(
        ScratchlmError, match=f"cannot write tokenizer file {folder}"
    ):  # the library's own check
        load("gpt2").save(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder"] and not list(folder.iterdir())


def test_failed_train_keeps_the_old_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tok.json"
    out.write_text("old")
    err = one_line_error(
        capsys,
        "tokenizer",
        "train",
        "--input",
        str(VERDICT),
        str(tmp_path / "missing.txt"),
        "--out",
        str(out),
    )
    assert f"input file {tmp_path / 'missing.txt'} does not exist" in err
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["tok.json"]
