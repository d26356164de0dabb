"""Common Crawl archives -> raw documents, and HTML -> main text.

Reading (parent process, `warc_documents`): a WARC file (`.warc`, `.warc.gz`, `.wet`, `.wet.gz`; gzip per record
as Common Crawl writes them, or plain) is read record by record with `warcio`. A document is

- a `response` record whose HTTP `Content-Type` is HTML (`text/html`, `application/xhtml+xml`): its payload, with
  the charset the header declares;
- a `conversion` record (what WET files hold: the text Common Crawl extracted): its payload as UTF-8 text.

Each keeps its `WARC-Target-URI` and `WARC-Date`. Other records (`warcinfo`, `request`, `metadata`, non-HTML
responses) are not documents and are counted in `records_skipped`. A record that is present but cannot be used is
a *bad record*: it is counted under its reason in the report, one line names the first few, and the run goes on:

- `broken_http_header`: a response whose HTTP status line does not start with `HTTP/`;
- `truncated`: the file ends (an interrupted download) or breaks inside the record, so its payload is shorter
  than its `Content-Length`, its header cannot be read, or its gzip member ends early; the records before it are
  used, the rest of the file is not read;
- `unknown_encoding`: the HTML declares a charset Python does not know (decided in the worker, `decode_html`).

Extraction (worker processes, `extract_text`): trafilatura (Barbaresi 2021), the extractor FineWeb uses on Common
Crawl's WARC files. Why trafilatura rather than resiliparse: it scored best among open extractors in the
published comparisons (ScrapingHub's article-extraction benchmark, Barbaresi 2021), it is what FineWeb chose after
comparing extractors on model quality, it is pure Python over lxml (wheels for every platform) and actively
maintained; resiliparse is several times faster (a C++ DOM) and is the choice when extraction dominates the cost. `benchmarks/data.py`
reports the share of time spent here. Options as FineWeb's: `favor_precision=True, include_comments=False`;
`deduplicate=False` so that the result does not depend on which pages a worker saw before.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from typing import Any, BinaryIO

from scratchlm.errors import ScratchlmError

WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz")
WARC_MAGIC = b"WARC/"
BAD_REASONS = ("broken_http_header", "truncated", "unknown_encoding", "too_large")
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


_Iterator: Any = None


def _warcio() -> Any:
    """warcio's ArchiveIterator, remembering at the end whether the last gzip member was complete (warcio takes a
    gzip member cut inside a record header for the end of the file, silently)."""
    global _Iterator
    if _Iterator is None:
        try:
            from warcio.archiveiterator import ArchiveIterator
        except ImportError:
            raise ScratchlmError("reading WARC/WET files needs the warcio package; pip install -e \".[web]\"") from None

        class _Checked(ArchiveIterator):
            cut_member = False

            def close(self) -> None:
                d = self.reader.decompressor if self.reader is not None else None
                self.cut_member = d is not None and hasattr(d, "eof") and not d.eof
                super().close()

        _Iterator = _Checked
    return _Iterator


def charset_of(content_type: str | None) -> str:
    """The `charset=` parameter of a Content-Type header, lower-cased ("" if none)."""
    if not content_type:
        return ""
    m = re.search(r"charset\s*=\s*[\"']?([^\"';\s]+)", content_type, re.IGNORECASE)
    return m.group(1).lower() if m else ""


def warc_records(stream: BinaryIO) -> Iterator[tuple[str, bytes, str, str, str]]:
    """(kind, payload, url, date, info) for each record: kind "html", "text", "skip" or "bad" (info: the charset,
    or the bad reason). A file that ends or breaks inside a record gives one "truncated" record and ends there."""
    iterator = _warcio()(stream, arc2warc=True)
    records = iter(iterator)
    while True:
        try:
            record = next(records)
        except StopIteration:
            if iterator.cut_member:  # the file ends inside a gzip member: a record (or its trailer) is cut
                yield "bad", b"", "", "", "truncated"
            return
        except Exception:  # warcio raises several kinds on a cut or corrupt header: the file is unusable from here
            yield "bad", b"", "", "", "truncated"
            return
        url = record.rec_headers.get_header("WARC-Target-URI") or ""
        date = record.rec_headers.get_header("WARC-Date") or ""
        try:
            kind, payload, info = _payload(record)
            while record.raw_stream.read(1 << 16):  # the rest (skipped records too): reveals a cut record
                pass
        except Exception:
            yield "bad", b"", url, date, "truncated"
            return
        if getattr(record.raw_stream, "limit", 1):
            # fewer bytes than Content-Length promised (or no Content-Length): the file ends inside this record
            yield "bad", b"", url, date, "truncated"
            return
        yield kind, payload, url, date, info


def _payload(record: Any) -> tuple[str, bytes, str]:
    if record.rec_type == "response":
        http = record.http_headers
        if http is None or not str(http.protocol).upper().startswith("HTTP/"):
            return "bad", b"", "broken_http_header"
        content_type = (http.get_header("Content-Type") or "").lower()
        if content_type.split(";")[0].strip() not in _HTML_TYPES:
            return "skip", b"", ""
        return "html", record.content_stream().read(), charset_of(content_type)
    if record.rec_type == "conversion":
        return "text", record.content_stream().read(), ""
    return "skip", b"", ""


def is_warc(head: bytes) -> bool:
    return head.startswith(WARC_MAGIC)


# ---------------------------------------------------------------------------------------------------- decoding


def decode_html(data: bytes, declared: str) -> tuple[str | None, bool, str]:
    """(text, invalid UTF-8 replaced, declared charset) of an HTML payload; text None when the charset is unknown.

    The charset is the HTTP header's, else a `<meta charset>` in the first 4 KiB, else UTF-8 (with invalid bytes
    replaced and counted, as for text files)."""
    charset = declared
    if not charset:
        m = _META_CHARSET.search(data[:4096])
        charset = m.group(1).decode("ascii").lower() if m else ""
    if charset:
        try:
            codec = codecs.lookup(charset).name
        except LookupError:
            return None, False, charset
        if codec != "utf-8":
            return data.decode(codec, errors="replace"), False, charset
    try:
        return data.decode("utf-8"), False, charset
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), True, charset


_extract: Any = None


def extract_text(html: str) -> str:
    """The main text of an HTML page (paragraphs one per line), "" when trafilatura finds none."""
    global _extract
    if _extract is None:
        try:
            from trafilatura import extract
        except ImportError:
            raise ScratchlmError(
                "HTML input needs the trafilatura package; pip install -e \".[web]\""
            ) from None
        _extract = extract
    if not html.strip():
        return ""
    text = _extract(html, favor_precision=True, include_comments=False, deduplicate=False)
    return text or ""
