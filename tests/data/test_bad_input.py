"""Acceptance 6: each bad input is one clear line on stderr, exit status 2, and no output folder left behind;
invalid UTF-8 is replaced and counted, never a crash."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from scratchlm.cli.main import main
from scratchlm.data import read_manifest, read_split, shard_tokenizer

GOOD = (
    "A perfectly ordinary paragraph of English prose, long enough to pass the default quality filters easily; "
    "it repeats nothing and mentions no evaluation set."
)


def _prepare(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> tuple[int, str]:
    code = main(["data", "prepare", "--out", str(out), "--decontaminate", "--workers", "1", *args])
    err = capsys.readouterr().err
    return code, err


def _one_error_line(err: str) -> str:
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", b"", r"the input is empty \(no bytes in .*empty.txt\); pass files that contain text"),
        ("image.txt", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)),
         r"input .*image.txt looks binary \(a NUL byte in its first 8192 bytes\); pass text or JSONL files only"),
        ("blank.txt", b"\n\n   \n", r"all 1 documents were dropped \(filtered quality 1\); check the input"),
        ("bad.txt.gz", b"not gzip at all", r"cannot read gzip input .*bad.txt.gz: .*; pass a valid file"),
        ("rows.jsonl", b'{"content": "hello"}\n',
         r"rows.jsonl line 1 has no field 'text' \(fields: content\); pass the field that holds the text with "
         r"--text-field"),
        ("rows2.jsonl", b"[1, 2]\n", r"rows2.jsonl line 1 is a JSON list, not an object"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes, message: str
) -> None:
    src = tmp_path / name
    src.write_bytes(content)
    out = tmp_path / "out"
    code, err = _prepare(capsys, out, "--input", str(src))
    assert code == 2
    assert _one_error_line(err) and re.search(message, err), err
    assert not out.exists()


def test_missing_text_field_in_a_later_line_removes_the_partial_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "rows.jsonl.gz"
    with gzip.open(src, "wt") as f:
        for i in range(30):
            f.write(json.dumps({"text": f"{i} {GOOD}"} if i != 25 else {"body": "x"}) + "\n")
    out = tmp_path / "out"
    code, err = _prepare(capsys, out, "--input", str(src), "--shard-tokens", "50")
    assert code == 2
    assert "rows.jsonl.gz line 26 has no field 'text' (fields: body)" in _one_error_line(err)
    assert not out.exists()


def test_empty_folder_missing_input_unknown_dataset_and_no_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    cases = [
        (["--input", str(tmp_path / "empty")], "holds no *.txt, *.jsonl, *.txt.gz, *.jsonl.gz, *.warc, *.warc.gz, *.wet, *.wet.gz, *.parquet files"),
        (["--input", str(tmp_path / "nope.txt")], "nope.txt does not exist; pass existing files or folders"),
        (["--dataset", "no-such-set"], "unknown asset 'no-such-set'"),
        ([], "no input: pass --input FILE_OR_FOLDER... or --dataset NAME"),
    ]
    for args, message in cases:
        code, err = _prepare(capsys, out, *args)
        assert code == 2 and message in _one_error_line(err)
        assert not out.exists()


def test_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "a.txt"
    src.write_text(GOOD)
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    code, err = _prepare(capsys, blocker / "out", "--input", str(src))
    assert code == 2
    assert "cannot create output folder" in _one_error_line(err) and "choose a writable location" in err
    code, err = _prepare(capsys, blocker, "--input", str(src))
    assert code == 2 and "is a file; pass a folder" in _one_error_line(err)
    assert blocker.read_text() == "a file, not a folder"


def test_not_empty_output_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "a.txt"
    src.write_text(GOOD)
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, err = _prepare(capsys, out, "--input", str(src))
    assert code == 2 and "is not empty and holds no scratchlm shards" in _one_error_line(err)
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]


def test_invalid_utf8_is_replaced_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "docs.jsonl"
    other = "Another document altogether, about rivers and the mills that were built along them long ago."
    third = "A third text: lone surrogates can be spelled in JSON escapes, though no UTF-8 text may hold them."
    lines = [json.dumps({"text": GOOD}).encode(), json.dumps({"text": other}).encode()]
    lines[1] = lines[1][:30] + b"\xc3\x28\xff" + lines[1][30:]  # invalid UTF-8 bytes inside the string
    lines.append(json.dumps({"text": "Lone \ud800 here. " + third}).encode())
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    code = main(["data", "prepare", "--out", str(out), "--input", str(src), "--decontaminate", "--val-fraction", "0",
                 "--workers", "1", "--min-chars", "50"])
    assert code == 0
    report = read_manifest(out)["report"]
    assert report["invalid_utf8"] == 2 and report["documents_kept"] == 3
    text = shard_tokenizer(out).decode(read_split(out, "train").tolist())
    bad = json.loads(lines[1].decode("utf-8", errors="replace"))["text"]  # "\xc3(" -> U+FFFD "(", "\xff" -> U+FFFD
    surrogate = "Lone \ud800 here. ".encode("utf-8", "surrogatepass").decode("utf-8", "replace") + third
    assert bad.count("\ufffd") == 2 and surrogate.count("\ufffd") == 3
    assert text == "<|endoftext|>".join([GOOD, bad, surrogate]) + "<|endoftext|>"
    assert "documents read" in capsys.readouterr().out


def test_tokenizer_training_on_empty_or_too_little_text_is_refused(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """300 tokens asked of an empty file gave 257 silently; now one line, exit 2, no tokenizer file."""
    empty, tiny = tmp_path / "empty.txt", tmp_path / "tiny.txt"
    empty.write_text("")
    tiny.write_text("abab abab")
    out = tmp_path / "tok.json"
    args = ["tokenizer", "train", "--vocab-size", "300", "--out", str(out), "--input"]
    assert main([*args, str(empty)]) == 2
    assert capsys.readouterr().err == "error: the text to train the tokenizer on is empty; pass files that contain text\n"
    assert main([*args, str(tiny)]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"error: the training text allows only (\d+) tokens \(no pair is left to merge\), not "
                        r"vocab_size 300; give more text or ask for --vocab-size \1 or less\n", err), err
    assert not out.exists()
