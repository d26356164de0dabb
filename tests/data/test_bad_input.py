"""Acceptance 6 (and issue 17's 5): each bad input is one clear line on stderr, exit status 2, and no output folder
left behind; invalid UTF-8 is replaced and counted, never a crash; a bad WARC record is one warning line and
counted, and the run goes on."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
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


# ---------------------------------------------------------------------------------------------------- web inputs


def _warc_response(url: str, body: bytes, content_type: bytes = b"text/html; charset=utf-8",
                   status: bytes = b"HTTP/1.1 200 OK") -> bytes:
    """One gzipped WARC response record, written by hand so that its HTTP header can be broken."""
    http = status + b"\r\nContent-Type: " + content_type + b"\r\n\r\n" + body
    head = (b"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: " + url.encode() + b"\r\n"
            b"WARC-Date: 2024-03-01T12:00:00Z\r\nWARC-Record-ID: <urn:uuid:" + url.encode()[-12:] + b">\r\n"
            b"Content-Type: application/http; msgtype=response\r\nContent-Length: " + str(len(http)).encode()
            + b"\r\n\r\n")
    return gzip.compress(head + http + b"\r\n\r\n")


def _html(text: str) -> bytes:
    return f"<html><body><article><p>{text}</p><p>Written for the tests of the WARC reader.</p></article></body></html>".encode()


def test_bad_warc_records_are_counted_and_named_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A broken HTTP header, an unknown charset and a truncated last record: each one warning line naming the
    record, counted under its reason; the good pages (one in cp1252, declared) are kept."""
    topics = ["Rivers carry silt down from the hills and build wide plains where farmers settle.",
              "The lighthouse keeper climbed the stairs every evening to trim the wick and wind the clock.",
              "Bees return to the hive and dance to tell the others where the flowers are blooming."]
    good = [_warc_response(f"http://a.example/{i}", _html(f"{t} {GOOD}")) for i, t in enumerate(topics)]
    latin = _warc_response("http://a.example/latin", _html("Café crème, déjà vu: " + GOOD).decode().encode("cp1252"),
                           b"text/html; charset=windows-1252")
    broken = _warc_response("http://a.example/broken", _html(GOOD), status=b"GARBAGE 200 NOT-HTTP")
    unknown = _warc_response("http://a.example/klingon", _html("x " + GOOD), b"text/html; charset=x-klingon-9")
    last = _warc_response("http://a.example/last", _html("last " + GOOD))
    src = tmp_path / "crawl.warc.gz"
    src.write_bytes(good[0] + broken + latin + good[1] + unknown + good[2] + last[: len(last) // 2])
    out = tmp_path / "out"
    code, err = _prepare(capsys, out, "--input", str(src), "--val-fraction", "0", "--min-chars", "50")
    assert code == 0, err
    lines = err.strip().split("\n")
    assert len(lines) == 3 and all(line.startswith("warning: skipped a bad record (") for line in lines), err
    assert "(broken http header): " in lines[0] and "crawl.warc.gz record 2" in lines[0]
    assert "(unknown encoding): " in lines[1] and "declares charset 'x-klingon-9'" in lines[1]
    assert "(truncated): " in lines[2] and "record 7" in lines[2]
    report = read_manifest(out)["report"]
    assert report["bad_records"] == 3 and report["documents_kept"] == 4, report
    assert report["bad_record_reasons"] == {"broken_http_header": 1, "truncated": 1, "unknown_encoding": 1,
                                            "too_large": 0}
    text = shard_tokenizer(out).decode(read_split(out, "train").tolist())
    assert "Café crème, déjà vu" in text and "\ufffd" not in text


def test_truncated_warc_anywhere_never_crashes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Cut at every 97th byte, gzipped and plain: the records before the cut are read, the rest is one bad
    record (or nothing, when the cut falls between records)."""
    from scratchlm.data.web import warc_records

    records = [_warc_response(f"http://a.example/{i}", _html(f"{i} {GOOD}")) for i in range(3)]
    for data in (b"".join(records), b"".join(gzip.decompress(r) for r in records)):
        for cut in range(0, len(data), 97):
            got = list(warc_records(io.BytesIO(data[:cut])))
            assert [k for k, *_ in got[:-1]] == ["html"] * (len(got) - 1) and len(got) <= 3
            assert not got or got[-1][0] == "html" or got[-1][4] == "truncated", (cut, got[-1])


def test_parquet_without_the_text_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"content": [GOOD], "url": ["http://a.example/"]}), src)
    out = tmp_path / "out"
    code, err = _prepare(capsys, out, "--input", str(src))
    assert code == 2
    assert re.search(r"rows.parquet has no column 'text' \(columns: content, url\); pass the column that holds the "
                     r"text with --text-field", _one_error_line(err)), err
    assert not out.exists()
    pq.write_table(pa.table({"text": [1, 2]}), src)
    code, err = _prepare(capsys, out, "--input", str(src))
    assert code == 2 and "column 'text' holds int64, not strings" in _one_error_line(err)
    assert not out.exists()


def test_ray_asked_for_but_not_installed(tmp_path: Path) -> None:
    """`sys.modules['ray'] = None` makes `import ray` fail as if it were not installed."""
    src = tmp_path / "a.txt"
    src.write_text(GOOD)
    out = tmp_path / "out"
    code = ("import sys; sys.modules['ray'] = None; from scratchlm.cli.main import main; "
            f"sys.exit(main(['data', 'prepare', '--input', {str(src)!r}, '--out', {str(out)!r}, '--executor', 'ray']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 2
    assert proc.stderr == ("error: --executor ray needs the ray package, which is not installed; "
                           "pip install -e \".[ray]\" (or pip install ray)\n")
    assert not out.exists()
