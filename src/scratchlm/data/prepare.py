"""`prepare(cfg)`: raw text -> cleaned, de-duplicated, decontaminated token shards, resumably and in bounded memory.

The pipeline, per document, in input order:

    read (parent)  ->  decode, clean, quality filters, word hashes, MinHash, 13-gram check, tokenize (workers,
                       `process.py`; web pages: extraction, language, URL, line and PII filters too)
                   ->  exact dedup, near dedup, contamination verdict, train/val split, shard writing (parent)

With `--executor ray` the worker part runs as Ray actors and the two dedup steps as a distributed step over all
documents before the parent writes (`ray_exec.py`); the output is the same.

Decisions:
- Work that needs no other document (everything up to tokenization) runs in `workers` processes on chunks of
  about 256 KiB; the parent submits at most 2 chunks per worker ahead and consumes results in submission order,
  so the output does not depend on the number of workers and memory does not depend on the corpus size.
  Documents that later prove to be duplicates were tokenized for nothing; duplicates are the minority.
- Order-dependent work (which copy of a duplicate is first) stays in the one parent process. Each document is
  counted under the first rule that drops it: quality, exact duplicate, near duplicate, contamination.
- The train/validation split is by kept document, evenly spread and deterministic: kept document i goes to val
  when floor((i + 1) f) > floor(i f) for f = `val_fraction` (exactly floor(n f) of n documents).
- After every document an end-of-text token (`tokenizer.eot_id`). A tokenizer without one (the char-level
  tokenizer made without special tokens) gets the tokens of a blank line, `"\\n\\n"`, instead: the manifest records
  `separator`, and document-aligned loading is then unavailable.
- Shards are streamed to `.partial` files and renamed when full, so memory does not depend on `shard_tokens`.
- Resume: whenever a shard completes, the parent syncs the partial shards, writes the dedup index entries added
  since the last checkpoint as `.progress/dedup_NNNNNN.npz` and then `.progress/state.json` (atomically): how
  many input documents were consumed, the counters, the shards, the partial shards' lengths. A re-run after a
  crash truncates the partial shards to those lengths, replays the dedup files, skips the consumed documents and
  carries on; it ends with the same files and the same manifest as an uninterrupted run.

Peak memory (documented in docs/data.md): per worker the tokenizer plus the largest document (a few hundred MB
for an 8 MiB document with a char tokenizer, far less for typical documents); in the parent the in-flight chunks
(2 x workers x 256 KiB of text and their tokens) plus the dedup indexes, which grow by about 0.7 KB per kept
document (`dedup.py`). It does not depend on the corpus size otherwise, nor on the shard size.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from scratchlm import assets
from scratchlm import tokenizer as tokenizers
from scratchlm.data import shards
from scratchlm.data.clean import REASONS, QualityConfig
from scratchlm.data.decontaminate import EvalNgrams, resolve_eval_set
from scratchlm.data.dedup import HashIndex, NearDupIndex
from scratchlm.data.filters import LINE_RULES, check_languages, domain_of, load_blocklist
from scratchlm.data.inputs import InputFile, RawDoc, read_documents, resolve_inputs
from scratchlm.data.process import (
    BAD_RECORD,
    ERROR,
    EXACT,
    LANG,
    NEAR,
    NOT_PAGE,
    QUALITY,
    URL,
    DocProcessor,
    chunks,
)
from scratchlm.data.web import BAD_REASONS
from scratchlm.dataclass_io import to_dict
from scratchlm.errors import ConfigError, ScratchlmError
from scratchlm.fs import atomic_dir, atomic_path, atomic_write_text, ensure_writable_dir, fsync_dir

PROGRESS_DIR = ".progress"
META_SUFFIX = ".meta.jsonl"
TOKENIZER_FILE = "tokenizer.json"
STATE_VERSION = 1
AUTO_VAL_BYTES = 1 << 20
"""An unset --val-fraction aims at this much validation text (within 1% to 10% of the input)."""
_SMALL_INPUT = 2 << 20
"""With `workers=0` (all cores), inputs smaller than this run in-process: starting workers would cost more."""


@dataclass
class PrepareConfig:
    """Clean, de-duplicate, decontaminate and tokenize text into token shards with a report (docs/data.md)."""

    out: Path
    """Output folder for the shards and manifest.json; an interrupted run in it is resumed."""
    input: tuple[Path, ...] = ()
    """Input files or folders (.txt, .jsonl and their .gz forms, .warc/.warc.gz/.wet.gz, .parquet; folders are
    searched recursively)."""
    dataset: tuple[str, ...] = ()
    """Named datasets to use as input (e.g. tinyshakespeare, wikitext-2-valid; `scratchlm fetch --list`)."""
    hf_dataset: tuple[str, ...] = ()
    """Hugging Face datasets to stream as input (a hub name, needs the network, or a local folder of parquet files)."""
    hf_split: str = "train"
    """Split of --hf-dataset to read."""
    tokenizer: str = "gpt2"
    """Tokenizer: gpt2, a tokenizer JSON file or a checkpoint folder."""
    text_field: str = "text"
    """Field of each JSONL record (column of a parquet file or Hugging Face dataset) that holds the text."""
    split_docs: bool = False
    """Cut text files into documents at blank lines, joining blocks shorter than --min-chars with the next ones
    (default: one file, one document)."""
    val_fraction: float | None = None
    """Share of kept documents that go to the validation split (evenly spread, deterministic). Unset: about 1 MiB
    of the input, between 1% and 10% (10% of Tiny Shakespeare, 1% of 100 MiB or more). Input with fewer
    documents than that takes the last document's tail instead (a single text file: its last part)."""
    shard_tokens: int = 50_000_000
    """Tokens per shard file (the last shard of a split may be shorter)."""
    workers: int = 0
    """Worker processes (or Ray actors) for cleaning and tokenizing (0: all cores; with Ray: the cluster's CPUs)."""
    executor: Literal["local", "ray"] = "local"
    """Where the per-document work and the de-duplication run: local worker processes, or a Ray cluster (needs
    pip install -e ".[ray]"). Both write the same shards and manifest."""
    ray_address: str = ""
    """Ray cluster to join (e.g. ray://head:10001 or auto); empty starts a local Ray with --workers CPUs."""
    max_document_mb: float = 8.0
    """Largest document accepted, in MiB (a larger one is an error: use --split-docs or JSONL)."""
    min_chars: int = 100
    """Quality: drop documents shorter than this many characters after cleaning."""
    min_alpha_fraction: float = 0.5
    """Quality: drop documents where letters are less than this share of the non-whitespace characters."""
    max_repeated_line_fraction: float = 0.3
    """Quality: drop documents where more than this share of the lines repeat an earlier line (1 disables)."""
    max_repeated_ngram_fraction: float = 0.2
    """Quality: drop documents where more than this share of word n-grams repeat an earlier one (1 disables)."""
    repeated_ngram_size: int = 5
    """Words per n-gram for the repeated-n-gram filter."""
    drop_lorem_ipsum: bool = False
    """Quality (C4): drop documents that contain "lorem ipsum"."""
    languages: tuple[str, ...] = ()
    """Keep only documents identified (py3langid) as one of these ISO 639-1 languages, e.g. en fr (empty: no
    language identification)."""
    language_threshold: float = 0.65
    """Least probability of the identified language for a document to count as that language (FineWeb: 0.65)."""
    url_blocklist: tuple[Path, ...] = ()
    """Files of blocked domains (one a line, # comments), added to the shipped list; documents with a URL on a
    listed domain or its sub-domains are dropped."""
    builtin_url_blocklist: bool = True
    """Block the domains of the small list shipped with scratchlm (resources/url_blocklist.txt)."""
    line_terminal_punct: bool = False
    """Lines (C4): remove lines that do not end in terminal punctuation (. ! ? or a closing quote)."""
    min_line_words: int = 0
    """Lines (C4: 5): remove lines with fewer words than this (0 disables)."""
    drop_notice_lines: bool = False
    """Lines (C4): remove lines mentioning javascript or a cookie, privacy-policy or terms-of-use notice."""
    mask_pii: bool = False
    """Replace e-mail addresses with [email] and IPv4 addresses with [ip] (counted in the report)."""
    metadata: bool = False
    """Write a sidecar train_000000.meta.jsonl per shard: each document's start token, token count, URL and
    date."""
    exact_dedup: bool = True
    """Drop exact duplicates (same cleaned text)."""
    near_dedup: bool = True
    """Drop near duplicates (MinHash + LSH over word shingles)."""
    near_threshold: float = 0.8
    """Jaccard similarity of the shingle sets at or above which a document is a near duplicate."""
    shingle_size: int = 5
    """Words per shingle for near-dedup."""
    minhash_perms: int = 128
    """MinHash signature length (hash functions)."""
    lsh_bands: int = 16
    """LSH bands; rows per band = minhash_perms // lsh_bands."""
    decontaminate: tuple[str, ...] = ("wikitext-2-test",)
    """Evaluation sets (named assets or text files) whose n-grams must not appear in kept documents."""
    decontaminate_ngram: int = 13
    """Words per n-gram for decontamination."""

    def __post_init__(self) -> None:
        checks = [
            (self.val_fraction is None or 0 <= self.val_fraction < 1, "val_fraction must be in [0, 1), e.g. 0.01"),
            (self.shard_tokens >= 1, "shard_tokens must be at least 1"),
            (self.workers >= 0, "workers must be >= 0 (0 means all cores)"),
            (self.max_document_mb > 0, "max_document_mb must be positive"),
            (self.min_chars >= 0, "min_chars must be >= 0"),
            (0 <= self.min_alpha_fraction <= 1, "min_alpha_fraction must be in [0, 1]"),
            (0 <= self.max_repeated_line_fraction <= 1, "max_repeated_line_fraction must be in [0, 1]"),
            (0 <= self.max_repeated_ngram_fraction <= 1, "max_repeated_ngram_fraction must be in [0, 1]"),
            (self.repeated_ngram_size >= 1, "repeated_ngram_size must be >= 1"),
            (0 < self.near_threshold <= 1, "near_threshold must be in (0, 1]"),
            (self.shingle_size >= 1, "shingle_size must be >= 1"),
            (1 <= self.lsh_bands <= self.minhash_perms, "lsh_bands must be between 1 and minhash_perms"),
            (self.decontaminate_ngram >= 1, "decontaminate_ngram must be >= 1"),
            (0 <= self.language_threshold <= 1, "language_threshold must be in [0, 1]"),
            (self.min_line_words >= 0, "min_line_words must be >= 0"),
            (self.executor in ("local", "ray"), "executor must be local or ray"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.out = Path(self.out)
        self.input = tuple(Path(p) for p in self.input)
        self.dataset = tuple(self.dataset)
        self.hf_dataset = tuple(self.hf_dataset)
        self.languages = tuple(sorted({code.strip().lower() for item in self.languages for code in item.split(",")
                                       if code.strip()}))
        self.url_blocklist = tuple(Path(p) for p in self.url_blocklist)
        self.decontaminate = tuple(d for d in self.decontaminate if d.lower() != "none")

    @property
    def quality(self) -> QualityConfig:
        return QualityConfig(
            self.min_chars,
            self.min_alpha_fraction,
            self.max_repeated_line_fraction,
            self.max_repeated_ngram_fraction,
            self.repeated_ngram_size,
            self.drop_lorem_ipsum,
        )


# ------------------------------------------------------------------------------------------------ worker pool

_worker: DocProcessor | None = None


def _init_worker(
    settings: dict[str, Any], tokenizer_dict: dict[str, Any], eval_table: EvalNgrams, blocklist: list[str],
    main_pid: int,
) -> None:
    global _worker
    _worker = DocProcessor(settings, tokenizer_dict, eval_table, blocklist)
    threading.Thread(target=_exit_with, args=(main_pid,), daemon=True).start()


def _exit_with(pid: int) -> None:
    """Exit when the main process is gone (e.g. SIGKILLed): an idle pool worker would otherwise wait forever."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat", "rb") as f:  # a killed, not yet reaped process is a zombie
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    os._exit(1)
        except ProcessLookupError:
            os._exit(1)
        except OSError:
            pass  # no /proc (macOS): kill(pid, 0) alone


def _process_chunk(chunk: list[RawDoc]) -> list[tuple]:
    assert _worker is not None
    return _worker.process(chunk)


# ------------------------------------------------------------------------------------------------ shard writing


class SplitWriter:
    """Streams one split's tokens into shard files of `shard_tokens` tokens (see the module docstring)."""

    def __init__(
        self, out: Path, split: str, dtype: np.dtype, vocab_size: int, shard_tokens: int, metadata: bool = False
    ) -> None:
        self.out, self.split, self.dtype = out, split, np.dtype(dtype)
        self.vocab_size, self.shard_tokens = vocab_size, shard_tokens
        self.metadata = metadata
        self.shards: list[dict[str, Any]] = []
        self.index = self.tokens = self.documents = 0
        self._file: Any = None
        self._meta: Any = None

    @property
    def _partial(self) -> Path:
        return self.out / (shards.shard_name(self.split, self.index) + ".partial")

    @property
    def _meta_name(self) -> str:
        return shards.shard_name(self.split, self.index).removesuffix(".bin") + META_SUFFIX

    def _open(self) -> None:
        self._file = open(self._partial, "w+b")  # read too: `pop_tail` moves a tail to validation
        self._file.write(shards.pack_header(0, self.vocab_size, self.dtype))  # the count is filled in at the end
        if self.metadata:
            self._meta = open(self.out / (self._meta_name + ".partial"), "wb")

    def write(self, tokens: np.ndarray, meta: dict[str, Any] | None = None) -> bool:
        """Append one document's tokens (they may span shards); True if a shard was completed. With `metadata`,
        `meta` (url, date) goes to the sidecar of the shard where the document starts."""
        completed, pos = False, 0
        if self.metadata:
            if self._file is None:
                self._open()
            line = {"start": self.tokens, "tokens": int(tokens.size), **(meta or {})}
            self._meta.write((json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))
        while pos < tokens.size:
            if self._file is None:
                self._open()
            take = min(self.shard_tokens - self.tokens, tokens.size - pos)
            self._file.write(tokens[pos : pos + take].tobytes())
            self.tokens += take
            pos += take
            if pos == tokens.size:
                self.documents += 1  # the document ends in this shard
            if self.tokens == self.shard_tokens:
                self._finish()
                completed = True
        return completed

    def _finish(self) -> None:
        f = self._file
        f.seek(0)
        f.write(shards.pack_header(self.tokens, self.vocab_size, self.dtype))
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self._file = None
        final = self.out / shards.shard_name(self.split, self.index)
        sha = _sha256(self._partial)
        entry = {"file": final.name, "tokens": self.tokens, "documents": self.documents, "sha256": sha}
        if self._meta is not None:  # the sidecar first: a listed shard always has its sidecar
            self._meta.flush()
            os.fsync(self._meta.fileno())
            self._meta.close()
            self._meta = None
            os.replace(self.out / (self._meta_name + ".partial"), self.out / self._meta_name)
            entry["metadata"] = self._meta_name
        os.replace(self._partial, final)
        fsync_dir(self.out)
        self.shards.append(entry)
        self.index += 1
        self.tokens = self.documents = 0

    def close(self) -> None:
        """Complete the last, shorter shard (if any tokens are pending)."""
        if self.tokens:
            self._finish()

    def pop_tail(self, k: int, replace_with: np.ndarray) -> np.ndarray:
        """Remove the last `k` tokens (all in the open shard) and return them; `replace_with` takes their place."""
        assert self._file is not None and len(replace_with) <= k <= self.tokens
        f = self._file
        f.flush()
        start = shards.HEADER_SIZE + (self.tokens - k) * self.dtype.itemsize
        f.seek(start)
        tail = np.frombuffer(f.read(k * self.dtype.itemsize), dtype=self.dtype).copy()
        f.seek(start)
        f.truncate()
        f.write(replace_with.astype(self.dtype).tobytes())
        self.tokens += len(replace_with) - k
        return tail

    def sync(self) -> None:
        for f in (self._file, self._meta):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())

    def abort(self) -> None:
        for f in (self._file, self._meta):
            if f is not None:
                f.close()
        self._file = self._meta = None

    def state(self) -> dict[str, Any]:
        state = {"shards": self.shards, "index": self.index, "tokens": self.tokens, "documents": self.documents}
        if self.metadata:
            state["meta_bytes"] = self._meta.tell() if self._meta is not None else 0
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Back to a checkpoint: truncate the partial shard to its recorded length (see the module docstring)."""
        self.shards = state["shards"]
        self.index, self.tokens, self.documents = state["index"], state["tokens"], state["documents"]
        for s in self.shards:
            if not (self.out / s["file"]).is_file():
                raise ScratchlmError(
                    f"{self.out} is damaged: completed shard {s['file']} is missing; delete the folder and prepare again"
                )
        final = self.out / shards.shard_name(self.split, self.index)
        if self.tokens == 0:
            for p in (self._partial, final, self.out / self._meta_name, self.out / (self._meta_name + ".partial")):
                p.unlink(missing_ok=True)
            return
        if not self._partial.exists() and final.exists():
            os.replace(final, self._partial)  # crashed between completing this shard and recording it
        if not self._partial.exists():
            raise ScratchlmError(
                f"{self.out} is damaged: partial shard {self._partial.name} is missing; delete the folder and "
                "prepare again"
            )
        size = shards.HEADER_SIZE + self.tokens * self.dtype.itemsize
        if self._partial.stat().st_size < size:
            raise ScratchlmError(
                f"{self.out} is damaged: {self._partial.name} is shorter than recorded; delete the folder and "
                "prepare again"
            )
        self._file = open(self._partial, "r+b")
        self._file.truncate(size)
        self._file.seek(size)
        final.unlink(missing_ok=True)
        if self.metadata:
            meta_partial = self.out / (self._meta_name + ".partial")
            if not meta_partial.exists() and (self.out / self._meta_name).exists():
                os.replace(self.out / self._meta_name, meta_partial)
            self._meta = open(meta_partial, "r+b" if meta_partial.exists() else "w+b")
            self._meta.truncate(state.get("meta_bytes", 0))
            self._meta.seek(state.get("meta_bytes", 0))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ the run

_COUNTERS = (
    "documents_read",
    "documents_kept",
    "exact_duplicates",
    "near_duplicates",
    "contaminated",
    "filtered_quality",
    "invalid_utf8",
    "bytes_read",
    "bytes_kept",
    "documents_train",
    "documents_val",
    "tokens_train",
    "tokens_val",
    "val_tail",
    "records_skipped",
    "bad_records",
    "filtered_url",
    "filtered_language",
    "pii_emails",
    "pii_ips",
)
_TOP_DOMAINS = 50
"""The report lists this many domains by documents read (all are counted; `distinct_domains` says how many)."""
_SHOWN_BAD = 5
"""Bad records named on stderr per reason (all are counted)."""


class _Run:
    """The parent side of one `prepare` run: consumes per-document results in order, writes, checkpoints."""

    def __init__(self, cfg: PrepareConfig, out: Path, header: dict[str, Any], settings: dict[str, Any]) -> None:
        self.cfg, self.out, self.header, self.settings = cfg, out, header, settings
        self.progress_dir = out / PROGRESS_DIR
        dtype = np.dtype(settings["dtype"])
        vocab = header["tokenizer"]["vocab_size"]
        self.writers = {s: SplitWriter(out, s, dtype, vocab, cfg.shard_tokens, cfg.metadata) for s in shards.SPLITS}
        self.report: dict[str, Any] = dict.fromkeys(_COUNTERS, 0)
        self.reasons = dict.fromkeys(REASONS, 0)
        self.web: dict[str, Any] = _empty_web()
        self.executor = cfg.executor
        # the Ray executor de-duplicates globally before any document is written (`ray_exec.py`)
        self.global_dedup = cfg.executor == "ray"
        self.last_meta: dict[str, Any] | None = None
        self.docs_consumed = 0
        self.last_doc_tokens = 0  # the newest kept document's tokens: `hold_out_tail` may split it
        self.exact = HashIndex() if cfg.exact_dedup and not self.global_dedup else None
        self.near = NearDupIndex(cfg.minhash_perms, cfg.near_threshold) if cfg.near_dedup and not self.global_dedup else None
        self.deltas: list[str] = []
        self._pending_exact: list[int] = []
        self._pending_bands: list[np.ndarray] = []
        self._near_saved = 0  # signatures [0, _near_saved) are in dedup files already

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Make everything so far durable, then record it in state.json (the one atomic commit point)."""
        for w in self.writers.values():
            w.sync()
        if self._pending_exact or self._pending_bands:
            name = f"dedup_{len(self.deltas):06d}.npz"
            exact = np.array(self._pending_exact, dtype=np.uint64)
            near_count = self.near.count if self.near else 0
            bands = np.array(self._pending_bands, dtype=np.uint64).reshape(-1, self.cfg.lsh_bands)
            sigs = (
                self.near.signatures[self._near_saved : near_count]
                if self.near
                else np.zeros((0, self.cfg.minhash_perms), np.uint16)
            )
            with atomic_path(self.progress_dir / name, what="progress file") as tmp, open(tmp, "wb") as f:
                np.savez(f, exact=exact, bands=bands, signatures=sigs)
            self.deltas.append(name)
            self._pending_exact, self._pending_bands, self._near_saved = [], [], near_count
        state = {
            "state_version": STATE_VERSION,
            **self.header,
            "settings": self.settings,
            "docs_consumed": self.docs_consumed,
            "last_doc_tokens": self.last_doc_tokens,
            "report": self.report,
            "reasons": self.reasons,
            "web": self.web,
            "executor": self.executor,
            "writers": {s: w.state() for s, w in self.writers.items()},
            "deltas": self.deltas,
        }
        atomic_write_text(self.progress_dir / "state.json", json.dumps(state, indent=1) + "\n", what="progress file")

    def restore(self, state: dict[str, Any]) -> None:
        started = state.get("executor", "local")
        if started != self.executor and state["docs_consumed"]:
            raise ScratchlmError(
                f"{self.out} was started with --executor {started} (its de-duplication state is of that kind); "
                f"finish it with --executor {started}, or delete the folder to start over"
            )
        self.docs_consumed = state["docs_consumed"]
        self.web.update(state.get("web", {}))
        self.last_doc_tokens = state.get("last_doc_tokens", 0)
        self.report.update(state["report"])
        self.reasons.update(state["reasons"])
        for s, w in self.writers.items():
            w.restore(state["writers"][s])
        self.deltas = list(state["deltas"])
        for name in self.deltas:
            with np.load(self.progress_dir / name) as z:
                if self.exact is not None:
                    self.exact.insert(z["exact"])
                if self.near is not None and len(z["bands"]):
                    self.near.add(z["bands"], z["signatures"])
        self._near_saved = self.near.count if self.near else 0
        keep = {*self.deltas, "state.json"}
        for p in self.progress_dir.iterdir():  # files of a checkpoint that never committed
            if p.name not in keep:
                p.unlink()
        listed = {s.get(k) for w in self.writers.values() for s in w.shards for k in ("file", "metadata")}
        for s, w in self.writers.items():
            if w.tokens:
                listed |= {shards.shard_name(s, w.index) + ".partial", w._meta_name + ".partial"}
        for p in [*self.out.glob("*.bin*"), *self.out.glob(f"*{META_SUFFIX}*")]:
            if p.name not in listed:
                p.unlink()

    # ---- consuming results ----------------------------------------------------------------------------------
    def consume(self, result: tuple) -> None:
        status = result[0]
        if status == ERROR:
            raise ScratchlmError(result[1])
        self.docs_consumed += 1
        if status == NOT_PAGE:
            self.report["records_skipped"] += 1
            return
        rep = self.report
        rep["documents_read"] += 1
        rep["bytes_read"] += result[1]
        rep["invalid_utf8"] += result[2]
        meta = result[3]
        if meta is not None:
            self._count_meta(meta)
        completed = False
        if status == QUALITY:
            rep["filtered_quality"] += 1
            self.reasons[REASONS[result[4]]] += 1
        elif status == BAD_RECORD:
            self._bad_record(BAD_REASONS[result[4]], result[5])
        elif status == URL:
            rep["filtered_url"] += 1
            blocked = self.web["blocked_domains"]
            blocked[result[4]] = blocked.get(result[4], 0) + 1
        elif status == LANG:
            rep["filtered_language"] += 1
        else:
            completed = self._dedup_and_write(status, meta, *result[4:])
        if completed:
            self.checkpoint()

    def _count_meta(self, meta: tuple) -> None:
        url, date, lang, lines, _ = meta
        web = self.web
        if url:
            domain = domain_of(url) or "(none)"
            web["domains"][domain] = web["domains"].get(domain, 0) + 1
        if date:
            web["first_date"] = min(web["first_date"] or date, date)
            web["last_date"] = max(web["last_date"] or date, date)
        if lang is not None:  # identified (documents dropped before identification have none)
            web["languages"][lang] = web["languages"].get(lang, 0) + 1
        if lines is not None:
            for rule, n in zip(LINE_RULES, lines):
                web["lines_removed"][rule] += n

    def _bad_record(self, reason: str, where: str) -> None:
        self.report["bad_records"] += 1
        counts = self.web["bad_record_reasons"]
        counts[reason] += 1
        if counts[reason] <= _SHOWN_BAD:
            more = " (further ones are counted, not shown)" if counts[reason] == _SHOWN_BAD else ""
            print(f"warning: skipped a bad record ({reason.replace('_', ' ')}): {where}{more}", file=sys.stderr)

    def _dedup_and_write(
        self,
        status: int,
        meta: tuple | None,
        key: int,
        bands: np.ndarray | None,
        sig16: np.ndarray | None,
        contaminated: bool,
        tokens: np.ndarray | None,
        clean_bytes: int,
    ) -> bool:
        rep = self.report
        if status == EXACT:
            rep["exact_duplicates"] += 1
            return False
        if self.exact is not None:
            keys = np.array([key], dtype=np.uint64)
            if self.exact.lookup(keys)[0] >= 0:
                rep["exact_duplicates"] += 1
                return False
            self.exact.insert(keys)
            self._pending_exact.append(key)
        if status == NEAR:
            rep["near_duplicates"] += 1
            return False
        if self.near is not None and bands is not None:
            if self.near.is_duplicate(bands, sig16):
                rep["near_duplicates"] += 1
                return False
            self.near.add(bands, sig16)
            self._pending_bands.append(bands)
        if contaminated:
            rep["contaminated"] += 1
            return False
        assert tokens is not None
        i = rep["documents_kept"]
        f = self.cfg.val_fraction
        split = "val" if math.floor((i + 1) * f) > math.floor(i * f) else "train"
        rep["documents_kept"] += 1
        rep["bytes_kept"] += clean_bytes
        rep[f"documents_{split}"] += 1
        rep[f"tokens_{split}"] += int(tokens.size)
        if meta is not None and meta[4] is not None:  # addresses masked in the documents that are kept
            rep["pii_emails"] += meta[4][0]
            rep["pii_ips"] += meta[4][1]
        self.last_doc_tokens = int(tokens.size)
        doc_meta = None
        if self.cfg.metadata:
            doc_meta = {"url": meta[0], "date": meta[1]} if meta is not None else {}
            self.last_meta = doc_meta
        return self.writers[split].write(tokens, doc_meta)

    def hold_out_tail(self) -> None:
        """No kept document fell to validation (fewer than 1/f of them, e.g. one large text file): the last
        `val_fraction` of the tokens, taken from the end of the last document (at most half of it), become the
        validation split, as nanoGPT holds out the end of a single text. The document's head keeps a separator."""
        f, rep, train = self.cfg.val_fraction, self.report, self.writers["train"]
        if not f or rep["documents_val"] or not rep["documents_train"]:
            return
        sep = np.array(self.settings["separator"], dtype=train.dtype)
        k = min(math.ceil(f * rep["tokens_train"]), self.last_doc_tokens // 2, train.tokens)
        if k < max(2, len(sep) + 1):
            return  # nothing to split off (a tiny input): the report says there is no validation split
        tail = train.pop_tail(k, sep)
        self.writers["val"].write(tail, self.last_meta)
        rep["tokens_train"] += len(sep) - k
        rep["tokens_val"] += k
        rep["documents_val"] = 1
        rep["val_tail"] = 1

    # ---- the whole run --------------------------------------------------------------------------------------
    def run(
        self,
        files: list[InputFile],
        tokenizer_dict: dict[str, Any],
        eval_table: EvalNgrams,
        blocklist: list[str],
        progress: bool,
    ) -> None:
        cfg = self.cfg
        docs = read_documents(files, cfg.split_docs, int(cfg.max_document_mb * 2**20), cfg.min_chars, cfg.text_field)
        workers = cfg.workers or os.cpu_count() or 1
        if cfg.workers == 0 and 0 <= sum(f.size for f in files) < _SMALL_INPUT and all(f.size >= 0 for f in files):
            workers = 1
        t0, last = time.monotonic(), time.monotonic()
        start_bytes = self.report["bytes_read"]
        if self.global_dedup:
            from scratchlm.data import ray_exec  # Ray is an optional extra: imported only when asked for

            # the global de-duplication needs every document, also those consumed before a resume
            results = ray_exec.results(docs, self.docs_consumed, cfg, self.settings, tokenizer_dict, eval_table,
                                       blocklist)
        else:
            docs = itertools.islice(docs, self.docs_consumed, None)
            results = _results(docs, workers, self.settings, tokenizer_dict, eval_table, blocklist)
        try:
            with contextlib.closing(results):  # closing shuts the worker pool down even on an error
                for result in results:
                    self.consume(result)
                    if progress and time.monotonic() - last > 5:
                        last = time.monotonic()
                        self._print_progress(last - t0, start_bytes)
            self.hold_out_tail()
        except BaseException:
            for w in self.writers.values():
                w.abort()
            raise
        for w in self.writers.values():
            w.close()

    def _print_progress(self, seconds: float, start_bytes: int) -> None:
        rep = self.report
        mb = (rep["bytes_read"] - start_bytes) / 1e6
        print(
            f"prepare: {rep['documents_read']:,} documents, {mb:,.1f} MB read this run ({mb / seconds:.2f} MB/s), "
            f"{rep['documents_kept']:,} kept, {rep['tokens_train'] + rep['tokens_val']:,} tokens",
            file=sys.stderr,
            flush=True,
        )


def _empty_web() -> dict[str, Any]:
    """The web part of the report: counters by language, domain, rule; kept in the resume state too."""
    return {
        "languages": {},
        "domains": {},
        "blocked_domains": {},
        "bad_record_reasons": dict.fromkeys(BAD_REASONS, 0),
        "lines_removed": dict.fromkeys(LINE_RULES, 0),
        "first_date": "",
        "last_date": "",
    }


def _results(
    docs: Iterator[RawDoc],
    workers: int,
    settings: dict[str, Any],
    tokenizer_dict: dict[str, Any],
    eval_table: EvalNgrams,
    blocklist: list[str],
) -> Iterator[tuple]:
    """Per-document results in input order, from `workers` processes (in-process for 1)."""
    if workers <= 1:
        processor = DocProcessor(settings, tokenizer_dict, eval_table, blocklist)
        for chunk in chunks(docs):
            yield from processor.process(chunk)
        return
    # forkserver: workers start from a clean interpreter (no torch threads inherited from a training process)
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_init_worker,
        initargs=(settings, tokenizer_dict, eval_table, blocklist, os.getpid()),
    )
    try:
        pending: collections.deque[Future] = collections.deque()
        for chunk in chunks(docs):
            pending.append(pool.submit(_process_chunk, chunk))
            if len(pending) >= 2 * workers:  # bounded read-ahead: memory does not grow with the corpus
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------------ entry point


def auto_val_fraction(input_bytes: int) -> float:
    """The --val-fraction used when it is unset: about `AUTO_VAL_BYTES` of the input, clamped to [1%, 10%].

    A fixed 1% leaves small corpora a validation split too small to evaluate on (Tiny Shakespeare: 3,000 GPT-2
    tokens, one batch of 12 x 256); 10% of a large corpus would waste training data.
    """
    return round(min(0.1, max(0.01, AUTO_VAL_BYTES / max(input_bytes, 1))), 4)


def _settings(
    cfg: PrepareConfig, files: list[InputFile], tok: Any, separator: list[int], blocklist: list[str]
) -> dict[str, Any]:
    """Everything that determines the output (not `out`, not `workers`): compared on resume, kept in the manifest."""
    d = to_dict(cfg)
    for name in ("out", "workers", "executor", "ray_address", "tokenizer", "input", "dataset", "hf_dataset",
                 "hf_split", "decontaminate", "url_blocklist"):
        d.pop(name)
    d["inputs"] = [f.record() for f in files]
    # the domains themselves decide the output, not the file names: a digest of the sorted list
    d["url_blocklist"] = {"domains": len(blocklist), "sha256": hashlib.sha256("\n".join(blocklist).encode()).hexdigest()}
    d["decontaminate"] = [n if n in assets.REGISTRY else str(resolve_eval_set(n).resolve()) for n in cfg.decontaminate]
    d["separator"] = separator
    d["dtype"] = shards.dtype_for_vocab(tok.vocab_size).name
    return d


_ANY = object()
_ADDED_SETTINGS = {
    "drop_lorem_ipsum": False,
    "languages": [],
    "language_threshold": _ANY,  # moot without languages
    "url_blocklist": _ANY,  # moot: such folders were made from inputs without URLs
    "builtin_url_blocklist": _ANY,
    "line_terminal_punct": False,
    "min_line_words": 0,
    "drop_notice_lines": False,
    "mask_pii": False,
    "metadata": False,
}
"""Settings added with the web inputs, and what a folder prepared before them implies: such a folder is still
complete (or resumable) with the same command."""


def _refuse_mismatch(out: Path, saved: dict[str, Any], header: dict[str, Any], settings: dict[str, Any]) -> None:
    have, want = saved["tokenizer"]["identity"], header["tokenizer"]["identity"]
    if have != want:
        raise ScratchlmError(
            f"{out} was prepared with another tokenizer ({have[:19]}..., this one is {want[:19]}...); "
            "use a new --out folder, or delete it to start over"
        )
    before = saved["settings"]
    diff = sorted(
        k for k in set(settings) | set(before)
        if settings.get(k) != before.get(k)
        and not (k not in before and k in _ADDED_SETTINGS and _ADDED_SETTINGS[k] in (settings[k], _ANY))
    )
    if diff:
        raise ScratchlmError(
            f"{out} was prepared with different settings ({', '.join(diff)}); use a new --out folder or the same "
            "settings, or delete it to start over"
        )


def prepare(cfg: PrepareConfig, tokenizer: Any | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the pipeline into `cfg.out` (or finish an interrupted run there) and return the manifest.

    `tokenizer` overrides `cfg.tokenizer` with an object (e.g. a `CharTokenizer` built in memory). Raises
    `ScratchlmError` for bad input before anything is written; an error later in a run that created the folder
    removes it again.
    """
    tok = tokenizer if tokenizer is not None else tokenizers.load(cfg.tokenizer)
    if tok.eot_id is not None:
        separator = [tok.eot_id]
    else:
        try:
            separator = tok.encode_ordinary("\n\n")
        except ScratchlmError:
            raise ScratchlmError(
                "this tokenizer has neither <|endoftext|> nor a newline to separate documents; add the special "
                "token <|endoftext|> to it (e.g. train it with that special token)"
            ) from None
    if cfg.executor == "ray":
        from scratchlm.data import ray_exec

        ray_exec.require_ray()
    paths = [*cfg.input, *(assets.fetch(name) for name in cfg.dataset)]
    files = resolve_inputs(paths, cfg.text_field, cfg.hf_dataset, cfg.hf_split)
    if cfg.languages:
        check_languages(cfg.languages)
    blocklist = load_blocklist(cfg.builtin_url_blocklist, cfg.url_blocklist)
    if cfg.val_fraction is None:  # resolved once, from the input size, and recorded in the manifest's settings
        # a streamed Hugging Face dataset has no known size: treat it as large (1%)
        size = sum(f.size for f in files) if all(f.size >= 0 for f in files) else 1 << 40
        cfg = dataclasses.replace(cfg, val_fraction=auto_val_fraction(size))
    settings = _settings(cfg, files, tok, separator, blocklist)
    header = {
        "format": shards.MANIFEST_FORMAT,
        "format_version": shards.FORMAT_VERSION,
        "tokenizer": {
            "source": str(cfg.tokenizer) if tokenizer is None else getattr(tok, "name", None) or type(tok).__name__,
            "identity": tok.identity(),
            "kind": getattr(tok, "kind", type(tok).__name__),
            "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id,
        },
    }
    out = cfg.out
    state_path = out / PROGRESS_DIR / "state.json"
    state = None
    if out.exists() and not out.is_dir():
        raise ScratchlmError(f"--out {out} is a file; pass a folder")
    if (out / shards.MANIFEST).is_file():
        manifest = shards.read_manifest(out)
        _refuse_mismatch(out, manifest, header, settings)
        if progress:
            print(f"prepare: {out} is already complete with these settings", file=sys.stderr)
        return manifest
    if state_path.is_file():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        _refuse_mismatch(out, state, header, settings)
    elif out.is_dir() and any(p.name != PROGRESS_DIR for p in out.iterdir()):
        raise ScratchlmError(f"--out {out} is not empty and holds no scratchlm shards; choose a new or empty folder")
    eval_table = EvalNgrams.from_names(cfg.decontaminate, cfg.decontaminate_ngram)
    created = not out.exists()
    ensure_writable_dir(out)
    run = _Run(cfg, out, header, settings)
    try:
        (out / PROGRESS_DIR).mkdir(exist_ok=True)
        if state is not None:
            run.restore(state)
            if progress:
                print(f"prepare: resuming after {run.docs_consumed:,} documents", file=sys.stderr)
        else:
            run.checkpoint()  # records the tokenizer at once, so another tokenizer is refused even after a kill
        tok.save(out / TOKENIZER_FILE)  # readers rebuild the exact tokenizer from the folder (shard_tokenizer)
        run.run(files, tok.to_dict(), eval_table, blocklist, progress)
        if run.report["documents_read"] == 0:
            raise ScratchlmError("the input holds no documents (only blank lines); pass files that contain text")
        if run.report["documents_kept"] == 0:
            raise ScratchlmError(
                f"all {run.report['documents_read']:,} documents were dropped ({_drop_summary(run)}); "
                "check the input or loosen the filters (e.g. --min-chars 0)"
            )
        manifest = _manifest(run)
        atomic_write_text(out / shards.MANIFEST, json.dumps(manifest, indent=1) + "\n", what="manifest")
    except ScratchlmError:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    except OSError as e:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise ScratchlmError(f"cannot write to {out}: {e.strerror or e}; choose a writable --out with free space") from None
    shutil.rmtree(out / PROGRESS_DIR, ignore_errors=True)
    return manifest


def _drop_summary(run: _Run) -> str:
    rep = run.report
    kinds = ("bad_records", "filtered_url", "filtered_language", "filtered_quality", "exact_duplicates",
             "near_duplicates", "contaminated")
    parts = [f"{k.replace('_', ' ')} {rep[k]:,}" for k in kinds if rep[k]]
    return ", ".join(parts) or "none kept"


def _manifest(run: _Run) -> dict[str, Any]:
    rep = dict(run.report)
    sep = len(run.settings["separator"])
    # one separator per document in each split (a document split by `hold_out_tail` has one in each)
    content_tokens = rep["tokens_train"] + rep["tokens_val"] - sep * (rep["documents_train"] + rep["documents_val"])
    rep["quality_reasons"] = dict(run.reasons)
    rep["shards_train"] = len(run.writers["train"].shards)
    rep["shards_val"] = len(run.writers["val"].shards)
    rep["bytes_per_token"] = round(rep["bytes_kept"] / content_tokens, 4) if content_tokens else None
    web = run.web
    by_count = lambda d: dict(sorted(d.items(), key=lambda kv: (-kv[1], kv[0])))  # noqa: E731
    rep["bad_record_reasons"] = dict(web["bad_record_reasons"])
    rep["languages"] = by_count(web["languages"])
    rep["distinct_domains"] = len(web["domains"])
    rep["domains"] = dict(list(by_count(web["domains"]).items())[:_TOP_DOMAINS])
    rep["blocked_domains"] = by_count(web["blocked_domains"])
    rep["lines_removed"] = dict(web["lines_removed"])
    rep["first_date"], rep["last_date"] = web["first_date"], web["last_date"]
    return {
        **run.header,
        "executor": run.executor,
        "dtype": run.settings["dtype"],
        "separator": run.settings["separator"],
        "shards": {s: w.shards for s, w in run.writers.items()},
        "settings": run.settings,
        "report": rep,
    }


def _val_rule(manifest: dict[str, Any]) -> str:
    """How the validation split was chosen, in words (a row of the report)."""
    rep, f = manifest["report"], manifest["settings"].get("val_fraction") or 0
    if rep.get("val_tail"):
        return f"the last {rep['tokens_val']:,} tokens of the last document (fewer documents than 1/{f:g})"
    if not rep["tokens_val"]:
        return "none (--val-fraction 0)" if not f else "none: the input is too small; give more text"
    return f"{f:.2%} of the kept documents, evenly spread (--val-fraction {f:g})"


def _web_rows(rep: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Report rows of the web inputs and filters, only where they did something."""
    rows = []
    if rep.get("records_skipped"):
        rows.append(("WARC records skipped (not pages)", f"{rep['records_skipped']:,}", ""))
    if rep.get("languages"):
        top = ", ".join(f"{k} {v:,}" for k, v in list(rep["languages"].items())[:8])
        rows.append(("languages identified", f"{sum(rep['languages'].values()):,}", top))
    if rep.get("distinct_domains"):
        top = ", ".join(f"{k} {v:,}" for k, v in list(rep["domains"].items())[:3])
        rows.append(("domains", f"{rep['distinct_domains']:,}", top))
    if any(rep.get("lines_removed", {}).values()):
        rows.append(("lines removed", f"{sum(rep['lines_removed'].values()):,}",
                     ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in rep["lines_removed"].items())))
    if rep.get("pii_emails") or rep.get("pii_ips"):
        rows.append(("masked e-mails / IPs", f"{rep['pii_emails']:,} / {rep['pii_ips']:,}", ""))
    if rep.get("first_date"):
        rows.append(("crawl dates", "", f"{rep['first_date']} to {rep['last_date']}"))
    return rows


def format_report(manifest: dict[str, Any]) -> str:
    """The report as an aligned two-column table (what `scratchlm data prepare` prints)."""
    rep = manifest["report"]
    read = max(rep["documents_read"], 1)

    def pct(n: int) -> str:
        return f"{100 * n / read:5.1f}%"

    rows = [
        ("documents read", f"{rep['documents_read']:,}", ""),
        ("kept", f"{rep['documents_kept']:,}", pct(rep["documents_kept"])),
        *[
            (f"dropped: {label}", f"{rep[key]:,}", pct(rep[key]))
            for key, label in (("bad_records", "bad records"), ("filtered_url", "URL blocklist"),
                               ("filtered_language", "language"))
            if rep.get(key)
        ],
        *[
            (f"  {reason.replace('_', ' ')}", f"{n:,}", pct(n))
            for reason, n in rep.get("bad_record_reasons", {}).items()
            if n and rep.get("bad_records")
        ],
        ("dropped: quality", f"{rep['filtered_quality']:,}", pct(rep["filtered_quality"])),
        *[
            (f"  {reason.replace('_', ' ')}", f"{n:,}", pct(n))
            for reason, n in rep["quality_reasons"].items()
            if n
        ],
        ("dropped: exact duplicates", f"{rep['exact_duplicates']:,}", pct(rep["exact_duplicates"])),
        ("dropped: near duplicates", f"{rep['near_duplicates']:,}", pct(rep["near_duplicates"])),
        ("dropped: contaminated", f"{rep['contaminated']:,}", pct(rep["contaminated"])),
        ("invalid UTF-8 (replaced)", f"{rep['invalid_utf8']:,}", ""),
        *_web_rows(rep),
        ("MB read / kept", f"{rep['bytes_read'] / 1e6:,.2f} / {rep['bytes_kept'] / 1e6:,.2f}", ""),
        ("documents train / val", f"{rep['documents_train']:,} / {rep['documents_val']:,}", ""),
        ("validation split", "", _val_rule(manifest)),
        ("tokens train / val", f"{rep['tokens_train']:,} / {rep['tokens_val']:,}", ""),
        ("shards train / val", f"{rep['shards_train']} / {rep['shards_val']}", ""),
        ("bytes per token", f"{rep['bytes_per_token']}", ""),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a.ljust(w0)}  {b.rjust(w1)}  {c}".rstrip() for a, b, c in rows)


# ------------------------------------------------------------------------------------------------ one text


def prepare_text(
    text: str,
    out: str | Path,
    tokenizer: Any = "char",
    val_fraction: float = 0.1,
    shard_tokens: int = 50_000_000,
) -> dict[str, Any]:
    """One curated text in memory (the quickstart's Tiny Shakespeare) -> the same shard folder, nanoGPT-style.

    No cleaning, filtering or de-duplication: the text is known. The last `val_fraction` of its characters,
    from the next line start on, is the validation split. `tokenizer` is a Tokenizer, a name or path for
    `scratchlm.tokenizer.load`, or "char": a character-level tokenizer of this text's characters (no special
    tokens, so no separator is added). A tokenizer with an end-of-text token gets one after each split's text.
    The folder is written as `out.tmp/` and renamed when complete.
    """
    if not 0 <= val_fraction < 1:
        raise ConfigError("val_fraction must be in [0, 1), e.g. 0.1")
    if not text:
        raise ScratchlmError("the text to prepare is empty; pass a non-empty text")
    if isinstance(tokenizer, str | os.PathLike):
        source = str(tokenizer)
        tok = tokenizers.CharTokenizer.train([text]) if source == "char" else tokenizers.load(source)
    else:
        tok, source = tokenizer, getattr(tokenizer, "name", None) or type(tokenizer).__name__
    cut = len(text) - int(len(text) * val_fraction)
    if val_fraction > 0:
        newline = text.find("\n", cut - 1)
        cut = newline + 1 if 0 <= newline < len(text) - 1 else cut
    parts = {"train": text[:cut], "val": text[cut:]}
    separator = [tok.eot_id] if tok.eot_id is not None else []
    dtype = shards.dtype_for_vocab(tok.vocab_size)
    header = {
        "format": shards.MANIFEST_FORMAT,
        "format_version": shards.FORMAT_VERSION,
        "tokenizer": {
            "source": source,
            "identity": tok.identity(),
            "kind": getattr(tok, "kind", type(tok).__name__),
            "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id,
        },
    }
    report: dict[str, Any] = dict.fromkeys(_COUNTERS, 0)
    report["quality_reasons"] = dict.fromkeys(REASONS, 0)
    with atomic_dir(out, what="shard folder") as tmp:
        writers = {}
        for split, part in parts.items():
            writers[split] = w = SplitWriter(tmp, split, dtype, tok.vocab_size, shard_tokens)
            if not part:
                continue
            ids = np.array(tok.encode_ordinary(part) + separator, dtype=dtype)
            w.write(ids)
            w.close()
            n_bytes = len(part.encode("utf-8"))
            report.update({f"documents_{split}": 1, f"tokens_{split}": int(ids.size)})
            report["documents_read"] += 1
            report["documents_kept"] += 1
            report["bytes_read"] += n_bytes
            report["bytes_kept"] += n_bytes
        content = report["tokens_train"] + report["tokens_val"] - len(separator) * report["documents_kept"]
        report["shards_train"], report["shards_val"] = len(writers["train"].shards), len(writers["val"].shards)
        report["bytes_per_token"] = round(report["bytes_kept"] / content, 4) if content else None
        manifest = {
            **header,
            "dtype": dtype.name,
            "separator": separator,
            "shards": {s: w.shards for s, w in writers.items()},
            "settings": {
                "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                "val_fraction": val_fraction,
                "val_rule": "last characters, from a line start",
                "shard_tokens": shard_tokens,
            },
            "report": report,
        }
        tok.save(tmp / TOKENIZER_FILE)
        atomic_write_text(tmp / shards.MANIFEST, json.dumps(manifest, indent=1) + "\n", what="manifest")
    return manifest


def shard_tokenizer(shard_dir: str | Path) -> Any:
    """The tokenizer that made the shards in `shard_dir` (its `tokenizer.json`, checked against the manifest)."""
    manifest = shards.read_manifest(shard_dir)
    path = Path(shard_dir) / TOKENIZER_FILE
    if path.is_file():
        tok = tokenizers.load(path)
    elif manifest["tokenizer"]["source"] in tokenizers.NAMED:
        tok = tokenizers.load(manifest["tokenizer"]["source"])
    else:
        raise ScratchlmError(f"{shard_dir} has no {TOKENIZER_FILE}; prepare the folder again with this version")
    if tok.identity() != manifest["tokenizer"]["identity"]:
        raise ScratchlmError(
            f"{path} does not match the tokenizer identity in {shard_dir}/manifest.json; prepare the folder again"
        )
    return tok
