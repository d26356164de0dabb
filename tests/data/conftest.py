"""A planted corpus: distinct documents plus known numbers of exact and near duplicates, low-quality documents,
WikiText-2 test passages and invalid UTF-8, spread over .txt, .txt.gz and .jsonl.gz files."""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scratchlm.data.clean import normalize


@dataclass
class Planted:
    folder: Path
    kept: list[str] = field(default_factory=list)
    """The cleaned documents that must survive, in input order."""
    counts: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    contamination: list[str] = field(default_factory=list)
    """The copied WikiText passages (raw form)."""
    near_pairs: list[tuple[str, str]] = field(default_factory=list)


def _vocab(rng: random.Random, n: int = 3000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return sorted({"".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(n)})


def _doc(rng: random.Random, vocab: list[str], n_words: int) -> list[str]:
    return [rng.choice(vocab) for _ in range(n_words)]


def _render(words: list[str]) -> str:
    """Words -> prose with sentences and lines (no blank lines, so --split-docs keeps it whole)."""
    out, line = [], []
    for i, w in enumerate(words):
        line.append(w.capitalize() if i % 12 == 0 else w)
        if i % 12 == 11:
            line[-1] += "."
        if len(line) == 24:
            out.append(" ".join(line))
            line = []
    if line:
        out.append(" ".join(line) + ".")
    return "\n".join(out)


def _wikitext_passages(mirror: Path, n: int) -> list[str]:
    lines = [ln for ln in (mirror / "wikitext-2-test.tokens").read_text(encoding="utf-8").splitlines()
             if len(ln.split()) > 60 and "=" not in ln]
    return [" ".join(lines[i * 7].split()[10:40]) for i in range(n)]


@pytest.fixture
def planted(tmp_path: Path, mirror: Path) -> Planted:
    rng = random.Random(1234)
    vocab = _vocab(rng)
    folder = tmp_path / "corpus"
    folder.mkdir()
    p = Planted(folder)
    txt_docs: list[str] = []  # -> a.txt, blank-line separated
    json_docs: list[str] = []  # -> b.jsonl.gz
    gz_docs: list[str] = []  # -> c.txt.gz

    originals = [_render(_doc(rng, vocab, rng.randint(250, 400))) for _ in range(40)]
    for i, text in enumerate(originals):
        (txt_docs if i % 3 == 0 else json_docs if i % 3 == 1 else gz_docs).append(text)
    # Input order is a.txt, b.jsonl.gz, c.txt.gz (sorted paths); later copies must come after their originals.
    seq = [*txt_docs, *json_docs, *gz_docs]

    exact = [seq[3], seq[17], seq[25], seq[30]]
    gz_docs.append(exact[0].replace("\n", "  \r\n"))  # trailing spaces and CRLF: equal after cleaning
    gz_docs.append("\ufeff" + exact[1])  # a byte-order mark: removed by cleaning
    gz_docs.extend(exact[2:])

    near = []
    for src in (seq[1], seq[5], seq[20], seq[27], seq[33]):
        words = src.split(" ")
        for k in (40, 120, 200):  # three words changed, far apart
            words[k] = "zzq" + words[k]
        near.append(" ".join(words))
        p.near_pairs.append((src, near[-1]))
    gz_docs.extend(near)

    passages = _wikitext_passages(mirror, 3)
    for passage in passages:
        words = _doc(rng, vocab, 200)
        gz_docs.append(_render(words[:100]) + "\n" + passage + "\n" + _render(words[100:]))
    p.contamination = passages

    low = {
        "too_short": ["A short note."],
        "low_alpha": ["\n".join(" ".join(str(rng.randint(0, 10**6)) for _ in range(8)) for _ in range(10))],
        "repeated_lines": ["\n".join(["Home | About us | Contact | Privacy policy"] * 6 + [_render(_doc(rng, vocab, 12))
                                                                                             for _ in range(4)])],
        "repeated_ngrams": [" ".join(["buy cheap watches online today"] * 40)],
    }
    # the too-short note is a JSONL record: in a text file, --split-docs would join it with the next block
    for reason, docs in low.items():
        if reason != "too_short":
            txt_docs.extend(docs)

    bad_utf8 = _render(_doc(rng, vocab, 300))
    txt_docs.append(bad_utf8)  # written below with an invalid byte in the middle

    with open(folder / "a.txt", "wb") as f:
        blocks = [d.encode() for d in txt_docs]
        blocks[-1] = blocks[-1][:200] + b"\xff\xfe" + blocks[-1][200:]
        f.write(b"\n\n".join(blocks) + b"\n")
    with gzip.open(folder / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        for d in [*json_docs, *low["too_short"]]:
            f.write(json.dumps({"id": rng.random(), "text": d}) + "\n")
    with gzip.open(folder / "c.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n\n".join(gz_docs) + "\n")
    (folder / "notes.md").write_text("not picked up: folders are searched for .txt/.jsonl only\n")

    bad_clean = normalize(bad_utf8.encode()[:200].decode() + "\ufffd\ufffd" + bad_utf8.encode()[200:].decode())
    p.kept = [normalize(d) for d in txt_docs[: len(txt_docs) - 4]] + [bad_clean]
    p.kept += [normalize(d) for d in json_docs] + [normalize(d) for d in originals[2::3]]
    p.counts = {
        "documents_read": len(txt_docs) + len(json_docs) + len(gz_docs) + 1,
        "documents_kept": len(originals) + 1,
        "exact_duplicates": len(exact),
        "near_duplicates": len(near),
        "contaminated": len(passages),
        "filtered_quality": sum(len(v) for v in low.values()),
        "invalid_utf8": 1,
    }
    p.reasons = {k: len(v) for k, v in low.items()}
    return p
