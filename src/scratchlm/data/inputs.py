"""Input files -> a deterministic stream of raw documents (bytes), read lazily: the corpus never sits in memory.

What is a document:
- a `.jsonl` line (its `--text-field`, a string);
- a `.txt` file (or any other named file, e.g. WikiText's `.tokens`) as a whole, or with `split_docs` each block
  of lines separated by blank (whitespace-only) lines, short blocks joined with the next ones until the
  document has `min_chars` characters (the quality filter's minimum);
- the same for their `.gz` forms, decompressed on the fly.

Folders are searched recursively for `*.txt`, `*.jsonl`, `*.txt.gz`, `*.jsonl.gz` (hidden files skipped) and
read in sorted path order, so the stream (and so the shards) are the same on every run: resuming after a crash
relies on it.

Checks made before anything is written (`resolve_inputs`): every path exists; no file looks binary (a NUL byte
in its first 8 KiB); a `.gz` file really is gzip; the first record of a JSONL file is an object with the text
field; and the inputs hold at least one byte. Decoding (with invalid UTF-8 replaced and counted) and JSON parsing
happen in the worker processes (`prepare.py`).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from scratchlm.errors import ScratchlmError

SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")
_SNIFF = 8192

TEXT, JSON = 0, 1
"""Kinds of raw document: text bytes, or one JSONL line."""


@dataclass(frozen=True)
class InputFile:
    path: Path
    size: int
    """Bytes on disk (recorded in the manifest; a changed size refuses a resume)."""

    @property
    def is_jsonl(self) -> bool:
        return self.path.name.endswith((".jsonl", ".jsonl.gz"))

    @property
    def is_gzip(self) -> bool:
        return self.path.name.endswith(".gz")

    def open(self) -> BinaryIO:
        return gzip.open(self.path, "rb") if self.is_gzip else open(self.path, "rb")  # type: ignore[return-value]


class RawDoc(NamedTuple):  # a tuple: pickles to the worker processes faster than a dataclass
    data: bytes
    kind: int
    """TEXT or JSON."""
    where: str
    """Where it came from, for error messages: `file` or `file line N`."""


def _find(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [
            p
            for p in path.rglob("*")
            if p.is_file() and p.name.endswith(SUFFIXES) and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
        if not found:
            raise ScratchlmError(
                f"input folder {path} holds no {', '.join('*' + s for s in SUFFIXES)} files; point --input at "
                "text or JSONL files"
            )
        return sorted(found)
    raise ScratchlmError(f"input {path} does not exist; pass existing files or folders to --input")


def _sniff(f: InputFile, text_field: str) -> None:
    try:
        with f.open() as stream:
            head = stream.read(_SNIFF)
            if f.is_jsonl:
                head += stream.readline()  # complete the line the sniff cut
    except (OSError, EOFError, zlib.error) as e:
        kind = "gzip " if f.is_gzip else ""
        raise ScratchlmError(f"cannot read {kind}input {f.path}: {e}; pass a valid file") from None
    if b"\0" in head[:_SNIFF]:
        raise ScratchlmError(
            f"input {f.path} looks binary (a NUL byte in its first {_SNIFF} bytes); pass text or JSONL files only"
        )
    if f.is_jsonl:
        for i, line in enumerate(head.split(b"\n"), start=1):  # the first non-blank record
            if line.strip():
                json_text(line.decode("utf-8", errors="replace"), text_field, f"{f.path} line {i}")
                break


def json_text(line: bytes | str, text_field: str, where: str) -> str:
    """The text field of one JSONL record; a one-line error naming the file, line and fix otherwise."""
    try:
        record = json.loads(line)
    except ValueError as e:
        raise ScratchlmError(f"{where} is not valid JSON ({e}); fix the file or remove the line") from None
    if not isinstance(record, dict):
        raise ScratchlmError(f"{where} is a JSON {type(record).__name__}, not an object; each line must be an object")
    if text_field not in record:
        keys = ", ".join(sorted(map(str, record))) or "none"
        raise ScratchlmError(
            f"{where} has no field {text_field!r} (fields: {keys}); pass the field that holds the text with "
            "--text-field"
        )
    value = record[text_field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ScratchlmError(
            f"{where}: field {text_field!r} is a {type(value).__name__}, not a string; pick a text field with --text-field"
        )
    return value


def resolve_inputs(paths: list[Path], text_field: str) -> list[InputFile]:
    """The input files in reading order, each checked (see the module docstring)."""
    if not paths:
        raise ScratchlmError("no input: pass --input FILE_OR_FOLDER... or --dataset NAME")
    files: list[InputFile] = []
    for path in paths:
        for p in _find(Path(path)):
            f = InputFile(p.resolve(), p.stat().st_size)
            _sniff(f, text_field)
            files.append(f)
    if all(f.size == 0 for f in files):
        names = ", ".join(str(f.path) for f in files[:3]) + (" ..." if len(files) > 3 else "")
        raise ScratchlmError(f"the input is empty (no bytes in {names}); pass files that contain text")
    return files


def _text_blocks(stream: BinaryIO) -> Iterator[bytes]:
    """Blocks of lines separated by whitespace-only lines."""
    block: list[bytes] = []
    for line in stream:
        if line.strip():
            block.append(line)
        elif block:
            yield b"".join(block)
            block = []
    if block:
        yield b"".join(block)


def _documents_of_blocks(blocks: Iterator[bytes], min_chars: int) -> Iterator[bytes]:
    """Consecutive blocks joined (blank line kept) until the document has at least `min_chars` characters.

    Why: a blank line separates paragraphs, speeches or verses as often as documents. Cut at every blank line,
    Tiny Shakespeare becomes 7,222 speeches whose median is 83 characters, and the min-length quality filter
    (meant for whole documents) then drops 58% of them. A short block belongs with its neighbours instead; only
    a file's last group can stay short (and is then filtered as too short).
    """
    group: list[bytes] = []
    chars = 0
    for block in blocks:
        if group and not group[-1].endswith(b"\n"):
            group[-1] += b"\n"
        group.append(block)
        chars += len(block.decode("utf-8", errors="replace").strip()) + (2 if len(group) > 1 else 0)
        if chars >= min_chars:
            yield b"\n".join(group)
            group, chars = [], 0
    if group:
        yield b"\n".join(group)


def read_documents(
    files: list[InputFile], split_docs: bool, max_document_bytes: int, min_chars: int = 0
) -> Iterator[RawDoc]:
    """Every raw document of the inputs, in order (see the module docstring). With `split_docs`, blocks shorter
    than `min_chars` characters are joined with the following ones (`_documents_of_blocks`)."""
    for f in files:
        with f.open() as stream:
            if f.is_jsonl:
                for i, line in enumerate(stream, start=1):
                    if line.strip():
                        _check_size(len(line), max_document_bytes, f"{f.path} line {i}")
                        yield RawDoc(line, JSON, f"{f.path} line {i}")
            elif split_docs:
                for block in _documents_of_blocks(_text_blocks(stream), min_chars):
                    _check_size(len(block), max_document_bytes, str(f.path))
                    yield RawDoc(block, TEXT, str(f.path))
            else:
                data = stream.read(max_document_bytes + 1)
                _check_size(len(data), max_document_bytes, str(f.path), whole_file=True)
                if data:
                    yield RawDoc(data, TEXT, str(f.path))


def _check_size(n: int, limit: int, where: str, whole_file: bool = False) -> None:
    if n > limit:
        hint = "pass --split-docs to cut it at blank lines, use JSONL, or " if whole_file else ""
        raise ScratchlmError(
            f"a document in {where} is larger than --max-document-mb ({limit / 2**20:g} MiB); {hint}raise "
            "--max-document-mb"
        )
