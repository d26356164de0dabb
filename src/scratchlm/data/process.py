"""The per-document work of `prepare`: one raw document in, one result tuple out (no other document is looked at).

`DocProcessor` runs in the local executor's worker processes (`prepare.py`) and in the Ray executor's actors
(`ray_exec.py`); the order, per document: bad record / not a page, URL blocklist, decode (HTML: charset, then
trafilatura), normalise, language, C4 line rules, PII masking, quality filters, exact key, MinHash, 13-gram
check, tokenization. The parent consumes the results in input order (`prepare._Run`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from scratchlm import tokenizer as tokenizers
from scratchlm.data import inputs
from scratchlm.data.clean import REASONS, QualityConfig, normalize, quality_reason
from scratchlm.data.decontaminate import EvalNgrams
from scratchlm.data.dedup import MinHasher, exact_key
from scratchlm.data.filters import LanguageID, blocked_domain, domain_of, filter_lines, mask_pii
from scratchlm.data.inputs import HTML, JSON, RawDoc, json_text
from scratchlm.data.ngrams import ngram_hashes, word_hashes
from scratchlm.data.web import BAD_REASONS, decode_html, extract_text
from scratchlm.errors import ScratchlmError

CHUNK_BYTES = 256 << 10
CHUNK_DOCS = 512
"""Documents go to a worker in chunks of about CHUNK_BYTES of text or CHUNK_DOCS documents."""

KEEP, QUALITY, ERROR, URL, LANG, BAD_RECORD, NOT_PAGE, EXACT, NEAR = range(9)
"""Result statuses. A result is `(status, input bytes, invalid UTF-8, meta, *details)` (`ERROR`: `(status,
message)`); meta is None for a document without URL or web filters, else `(url, date, language or None if not
identified ("und" below the threshold), lines removed per rule or None, (e-mails, IPs) masked or None)`.
`EXACT`/`NEAR` are `KEEP` results that the global (Ray) de-duplication has already judged."""


class DocProcessor:
    """Everything that looks at one document alone; runs in the worker processes (in-process for 1 worker) or in
    the Ray actors."""

    STAGES = ("read", "extract", "language", "filter", "tokenize")
    """Stages timed when `timed` (benchmarks/data.py reports their shares)."""

    def __init__(
        self,
        settings: dict[str, Any],
        tokenizer_dict: dict[str, Any],
        eval_table: EvalNgrams,
        blocklist: list[str] | None = None,
        timed: bool = False,
    ) -> None:
        self.s = settings
        self.quality = QualityConfig(**{f.name: settings[f.name] for f in dataclasses.fields(QualityConfig)})
        self.tokenizer = tokenizers.from_dict(tokenizer_dict)
        self.separator = list(settings["separator"])
        self.dtype = np.dtype(settings["dtype"])
        self.eval_table = eval_table
        self.minhasher = (
            MinHasher(settings["minhash_perms"], settings["lsh_bands"], settings["shingle_size"])
            if settings["near_dedup"]
            else None
        )
        self.blocked = frozenset(blocklist or ())
        self.languages = frozenset(settings["languages"])
        self.langid = LanguageID() if self.languages else None
        self.line_rules = (settings["line_terminal_punct"], settings["min_line_words"], settings["drop_notice_lines"])
        self.web = bool(self.languages or any(self.line_rules) or settings["mask_pii"])
        self.timings: dict[str, float] | None = dict.fromkeys(self.STAGES, 0.0) if timed else None

    def process(self, chunk: list[RawDoc]) -> list[tuple]:
        return [self.process_one(doc) for doc in chunk]

    def _tick(self, stage: str, t0: float) -> float:
        t1 = time.perf_counter()
        self.timings[stage] += t1 - t0  # type: ignore[index]
        return t1

    def process_one(self, doc: RawDoc) -> tuple:
        timed = self.timings is not None
        t = time.perf_counter() if timed else 0.0
        n_bytes = len(doc.data)
        meta = [doc.url, doc.date, None, None, None] if (doc.url or self.web) else None
        if doc.kind == inputs.SKIP:
            return (NOT_PAGE, 0, 0, None)
        if doc.kind == inputs.BAD:
            return (BAD_RECORD, n_bytes, 0, _meta(meta), BAD_REASONS.index(doc.info), doc.where)
        if self.blocked and doc.url:
            hit = blocked_domain(domain_of(doc.url), self.blocked)
            if hit is not None:
                return (URL, n_bytes, 0, _meta(meta), hit)
        if doc.kind == HTML:
            html, invalid, charset = decode_html(doc.data, doc.info)
            if html is None:
                return (BAD_RECORD, n_bytes, 0, _meta(meta), BAD_REASONS.index("unknown_encoding"),
                        f"{doc.where} ({doc.url}) declares charset {charset!r}")
            t = self._tick("read", t) if timed else t
            text = extract_text(html)
            t = self._tick("extract", t) if timed else t
        else:
            try:
                text = doc.data.decode("utf-8")
                invalid = 0
            except UnicodeDecodeError:
                text = doc.data.decode("utf-8", errors="replace")
                invalid = 1
            if doc.kind == JSON:
                try:
                    text = json_text(text, self.s["text_field"], doc.where)
                except ScratchlmError as e:
                    return (ERROR, str(e))
                if _has_surrogates(text):  # JSON escapes can spell lone surrogates, which are not encodable text
                    text = text.encode("utf-8", errors="surrogatepass").decode("utf-8", errors="replace")
                    invalid = 1
        invalid = int(invalid)
        text = normalize(text)
        t = self._tick("read", t) if timed else t
        if self.langid is not None and meta is not None:
            lang, p = self.langid.classify(text) if text else ("", 0.0)
            meta[2] = lang if p >= self.s["language_threshold"] else "und"  # below the threshold: undetermined
            t = self._tick("language", t) if timed else t
            if meta[2] not in self.languages:
                return (LANG, n_bytes, invalid, _meta(meta))
        if any(self.line_rules) and meta is not None:
            text, meta[3] = filter_lines(text, *self.line_rules)
        if self.s["mask_pii"] and meta is not None:
            text, emails, ips = mask_pii(text)
            meta[4] = (emails, ips)
        words = word_hashes(text)  # (W,) uint64, shared by the filters below
        q = self.quality
        grams = ngram_hashes(words, q.repeated_ngram_size) if q.max_repeated_ngram_fraction < 1 and text else None
        reason = quality_reason(text, words, q, grams)
        if reason is not None:
            if timed:
                self._tick("filter", t)
            return (QUALITY, n_bytes, invalid, _meta(meta), REASONS.index(reason))
        bands = sig16 = None
        if self.minhasher is not None:
            same = grams is not None and grams.size and q.repeated_ngram_size == self.minhasher.shingle_size
            shingles = grams if same else ngram_hashes(words, self.minhasher.shingle_size, short=True)
            signature = self.minhasher.signature_of_shingles(shingles)
            if signature is not None:
                bands = self.minhasher.band_keys(signature)
                sig16 = signature.astype(np.uint16)  # low 16 bits (b-bit MinHash, see dedup.py)
        contaminated = self.eval_table.contains_any(words)
        t = self._tick("filter", t) if timed else t
        tokens = None
        if not contaminated:
            ids = self.tokenizer.encode_ordinary(text)
            ids.extend(self.separator)
            tokens = np.array(ids, dtype=self.dtype)
            if timed:
                self._tick("tokenize", t)
        clean_bytes = len(text.encode("utf-8"))
        return (KEEP, n_bytes, invalid, _meta(meta), exact_key(text), bands, sig16, contaminated, tokens,
                clean_bytes)


def _meta(meta: list | None) -> tuple | None:
    return None if meta is None else tuple(meta)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def chunks(docs: Iterator[RawDoc]) -> Iterator[list[RawDoc]]:
    chunk: list[RawDoc] = []
    size = 0
    for doc in docs:
        chunk.append(doc)
        size += len(doc.data)
        if size >= CHUNK_BYTES or len(chunk) >= CHUNK_DOCS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk
