"""Input files -> a deterministic stream of raw documents (bytes), read lazily: the corpus never sits in memory.

What is a document:
- a `.jsonl` line (its `--text-field`, a string);
- an HTML response or a WET conversion record of a WARC file (`.warc`, `.warc.gz`, `.wet`, `.wet.gz`; `web.py`),
  with its URL and date;
- a row of a parquet file (its `--text-field` column, a string; `url` and `date` columns travel with it when
  present, as in FineWeb's files), read one row group at a time with pyarrow;
- a row of a Hugging Face dataset (`--hf-dataset NAME --hf-split S`), streamed through `datasets`;
- a `.txt` file (or any other named file, e.g. WikiText's `.tokens`) as a whole, or with `split_docs` each block
  of lines separated by blank (whitespace-only) lines, short blocks joined with the next ones until the
  document has `min_chars` characters (the quality filter's minimum);
- the same for their `.gz` forms, decompressed on the fly.

The format comes from the extension (`.jsonl`, `.txt`, the WARC ones, `.parquet`) and, for any other name, from the
content: `PAR1` is parquet, `WARC/` (plain or gzipped) is WARC, anything else text.

Folders are searched recursively for `*.txt`, `*.jsonl`, their `.gz` forms, the WARC suffixes and `*.parquet`
(hidden files skipped) and
read in sorted path order, so the stream (and so the shards) are the same on every run: resuming after a crash
relies on it.

Checks made before anything is written (`resolve_inputs`): every path exists; no text file looks binary (a NUL
byte in its first 8 KiB); a `.gz` file really is gzip; the first record of a JSONL file is an object with the text
field; a WARC file starts with a WARC record; a parquet file has the text column (as strings); a Hugging Face
dataset loads and has the text field; and the inputs hold at least one byte. Decoding (with invalid UTF-8 replaced and counted) and JSON parsing
happen in the worker processes (`prepare.py`).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from scratchlm.data.web import WARC_SUFFIXES, is_warc, warc_records
from scratchlm.errors import ScratchlmError

SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz", *WARC_SUFFIXES, ".parquet")
_SNIFF = 8192
_GZIP_MAGIC = b"\x1f\x8b"

TEXT, JSON, HTML, SKIP, BAD = 0, 1, 2, 3, 4
"""Kinds of raw document: text bytes, one JSONL line, an HTML page, a WARC record that is no document (counted in
`records_skipped`), a bad record (`info` says why; counted, see `web.py`)."""
FORMATS = ("text", "jsonl", "warc", "parquet", "hf")


@dataclass(frozen=True)
class InputFile:
    path: Path
    size: int
    """Bytes on disk (recorded in the manifest; a changed size refuses a resume); -1 for a Hugging Face dataset."""
    format: str = "text"
    """One of FORMATS."""
    split: str = ""
    """The split of a Hugging Face dataset (`path` is then its name)."""

    @property
    def is_jsonl(self) -> bool:
        return self.format == "jsonl"

    @property
    def is_gzip(self) -> bool:
        return self.path.name.endswith(".gz")

    def open(self) -> BinaryIO:
        if self.format == "warc":  # warcio decompresses per record itself (Common Crawl gzips each record)
            return open(self.path, "rb")
        return gzip.open(self.path, "rb") if self.is_gzip else open(self.path, "rb")  # type: ignore[return-value]

    def record(self) -> dict[str, Any]:
        """How the manifest's settings name this input (text and JSONL as before: path and bytes)."""
        if self.format == "hf":
            return {"hf_dataset": str(self.path), "split": self.split}
        entry: dict[str, Any] = {"path": str(self.path), "bytes": self.size}
        if self.format not in ("text", "jsonl"):
            entry["format"] = self.format
        return entry


class RawDoc(NamedTuple):  # a tuple: pickles to the worker processes faster than a dataclass
    data: bytes
    kind: int
    """TEXT, JSON, HTML, SKIP or BAD."""
    where: str
    """Where it came from, for error messages: `file`, `file line N`, `file record N` or `file row N`."""
    url: str = ""
    date: str = ""
    info: str = ""
    """HTML: the charset its HTTP header declares; BAD: the reason (`web.BAD_REASONS`)."""


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
                "text, JSONL, WARC or parquet files"
            )
        return sorted(found)
    raise ScratchlmError(f"input {path} does not exist; pass existing files or folders to --input")


def detect_format(path: Path) -> str:
    """The format of a file: from its extension, else from its first bytes (see the module docstring)."""
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "jsonl"
    if name.endswith(WARC_SUFFIXES):
        return "warc"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".txt", ".txt.gz")):
        return "text"
    try:
        with open(path, "rb") as raw:
            head = raw.read(64)
        if head.startswith(_GZIP_MAGIC):
            with gzip.open(path, "rb") as z:
                head = z.read(64)
    except (OSError, EOFError, zlib.error):
        return "text"  # the text sniff below reports the unreadable file
    if head.startswith(b"PAR1"):
        return "parquet"
    return "warc" if is_warc(head) else "text"


def _sniff_warc(f: InputFile) -> None:
    try:
        with open(f.path, "rb") as raw:
            head = raw.read(64)
            if head.startswith(_GZIP_MAGIC):
                raw.seek(0)
                with gzip.open(raw, "rb") as z:
                    head = z.read(64)
    except (OSError, EOFError, zlib.error) as e:
        raise ScratchlmError(f"cannot read WARC input {f.path}: {e}; pass a valid .warc(.gz) file") from None
    if f.size and not is_warc(head):
        raise ScratchlmError(
            f"input {f.path} is not a WARC file (it does not start with a WARC/1.x record); pass WARC or WET files "
            "from Common Crawl, or rename it if it is text"
        )


def _parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ScratchlmError("reading parquet files needs the pyarrow package; pip install -e \".[web]\"") from None
    return pq


def _sniff_parquet(f: InputFile, text_field: str) -> None:
    pq = _parquet()
    try:
        schema = pq.ParquetFile(f.path).schema_arrow
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...: all mean the file is not usable parquet
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ScratchlmError(f"cannot read parquet input {f.path}: {first}; pass a valid parquet file") from None
    names = schema.names
    _check_column(str(f.path), names, text_field, str(schema.field(text_field).type) if text_field in names else "")


def _check_column(where: str, names: list[str], text_field: str, type_name: str) -> None:
    if text_field not in names:
        raise ScratchlmError(
            f"{where} has no column {text_field!r} (columns: {', '.join(names) or 'none'}); pass the column that "
            "holds the text with --text-field"
        )
    if type_name not in ("string", "large_string", "string_view"):
        raise ScratchlmError(
            f"{where}: column {text_field!r} holds {type_name}, not strings; pick a text column with --text-field"
        )


def _sniff(f: InputFile, text_field: str) -> None:
    if f.format == "warc":
        return _sniff_warc(f)
    if f.format == "parquet":
        return _sniff_parquet(f, text_field)
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


def _hf_stream(name: str, split: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise ScratchlmError("--hf-dataset needs the datasets package; pip install -e \".[web]\"") from None
    try:
        return datasets.load_dataset(name, split=split, streaming=True)
    except Exception as e:  # network, unknown name, unknown split: all one line for the user
        first = str(e).strip().split("\n")[0][:300]
        raise ScratchlmError(
            f"cannot open Hugging Face dataset {name!r} split {split!r} ({type(e).__name__}: {first}); check the "
            "name and split, and that this machine is online (or pass a local parquet folder)"
        ) from None


def _sniff_hf(f: InputFile, text_field: str) -> None:
    features = _hf_stream(str(f.path), f.split).features
    if features is not None:
        names = list(features)
        feature = features.get(text_field)
        _check_column(f"Hugging Face dataset {f.path}", names, text_field, str(getattr(feature, "dtype", feature)))


def resolve_inputs(
    paths: list[Path], text_field: str, hf_datasets: tuple[str, ...] = (), hf_split: str = "train"
) -> list[InputFile]:
    """The inputs in reading order, each checked (see the module docstring); Hugging Face datasets last."""
    if not paths and not hf_datasets:
        raise ScratchlmError("no input: pass --input FILE_OR_FOLDER... or --dataset NAME")
    files: list[InputFile] = []
    for path in paths:
        for p in _find(Path(path)):
            f = InputFile(p.resolve(), p.stat().st_size, detect_format(p))
            _sniff(f, text_field)
            files.append(f)
    for name in hf_datasets:
        f = InputFile(Path(name), -1, "hf", hf_split)
        _sniff_hf(f, text_field)
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


_WARC_KINDS = {"html": HTML, "text": TEXT, "skip": SKIP, "bad": BAD}


def _warc_documents(stream: BinaryIO, where: str, max_document_bytes: int) -> Iterator[RawDoc]:
    """A web page larger than --max-document-mb is a bad record (`too_large`), not an error: crawls have some."""
    for i, (kind, payload, url, date, info) in enumerate(warc_records(stream), start=1):
        if len(payload) > max_document_bytes:
            kind, payload, info = "bad", b"", "too_large"
        yield RawDoc(payload, _WARC_KINDS[kind], f"{where} record {i}", url, date, info)


def _row_document(text: Any, url: Any, date: Any, where: str, max_document_bytes: int) -> RawDoc:
    data = text.encode("utf-8", errors="surrogatepass") if isinstance(text, str) else b""
    url, date = str(url or ""), str(date or "")
    if len(data) > max_document_bytes:
        return RawDoc(b"", BAD, where, url, date, "too_large")
    return RawDoc(data, TEXT, where, url, date)


def _parquet_documents(f: InputFile, text_field: str, max_document_bytes: int) -> Iterator[RawDoc]:
    pq = _parquet()
    pf = pq.ParquetFile(f.path)
    names = pf.schema_arrow.names
    columns = [text_field, *(c for c in ("url", "date") if c in names and c != text_field)]
    row = 0
    for g in range(pf.num_row_groups):  # one row group in memory at a time
        table = pf.read_row_group(g, columns=columns)
        texts = table.column(text_field).to_pylist()
        urls = table.column("url").to_pylist() if "url" in columns else [None] * len(texts)
        dates = table.column("date").to_pylist() if "date" in columns else [None] * len(texts)
        del table
        for text, url, date in zip(texts, urls, dates):
            row += 1
            yield _row_document(text, url, date, f"{f.path} row {row}", max_document_bytes)


def _hf_documents(f: InputFile, text_field: str, max_document_bytes: int) -> Iterator[RawDoc]:
    for row, record in enumerate(_hf_stream(str(f.path), f.split), start=1):
        if text_field not in record:
            raise ScratchlmError(
                f"Hugging Face dataset {f.path} row {row} has no field {text_field!r}; pass it with --text-field"
            )
        where = f"hf:{f.path}[{f.split}] row {row}"
        yield _row_document(record[text_field], record.get("url"), record.get("date"), where, max_document_bytes)


def read_documents(
    files: list[InputFile], split_docs: bool, max_document_bytes: int, min_chars: int = 0, text_field: str = "text"
) -> Iterator[RawDoc]:
    """Every raw document of the inputs, in order (see the module docstring). With `split_docs`, blocks shorter
    than `min_chars` characters are joined with the following ones (`_documents_of_blocks`)."""
    for f in files:
        if f.format == "parquet":
            yield from _parquet_documents(f, text_field, max_document_bytes)
            continue
        if f.format == "hf":
            yield from _hf_documents(f, text_field, max_document_bytes)
            continue
        with f.open() as stream:
            if f.format == "warc":
                yield from _warc_documents(stream, str(f.path), max_document_bytes)
                continue
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
