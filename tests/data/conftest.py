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


# ---------------------------------------------------------------------------------------------------- web corpus

FRENCH = (
    "Le vieux moulin au bord de la rivière existe depuis trois siècles, et les habitants du village parlent encore "
    "du meunier qui l'a construit. Chaque printemps, l'eau monte et fait tourner la grande roue plus vite que "
    "jamais, et la farine nourrit toute la vallée. Les visiteurs viennent de loin pour le voir travailler."
)
GERMAN = (
    "Die alte Mühle am Fluss steht seit dreihundert Jahren, und die Leute im Dorf erzählen noch immer von dem "
    "Müller, der sie gebaut hat. Jedes Frühjahr steigt das Wasser und treibt das große Rad schneller an, als "
    "sich irgendjemand erinnern kann. Besucher kommen von weit her, um sie arbeiten zu sehen."
)
CHINESE = (
    "河边的老磨坊已经矗立了三百年，村里的人们至今仍在谈论建造它的磨坊主。每年春天，河水上涨，推动巨大的水轮比任何人记忆中"
    "都转得更快，为整个山谷磨出面粉。远方的游客专程赶来观看它工作，村里的孩子们向他们出售用这里的面粉烤制的面包。"
)


@dataclass
class WebCorpus:
    folder: Path
    bodies: list[str]
    """The English article bodies that must survive, in input order (paragraphs one per line)."""
    counts: dict[str, int]
    languages: dict[str, int]
    blocked: dict[str, int]
    emails: list[str]
    blocklist: Path


def page(title: str, paragraphs: list[str], noise: int = 0, lang: str = "en") -> str:
    """An HTML page: navigation, a menu, the article, in-article notices (removed by C4's line rules) and a
    footer. `noise` varies the boilerplate, so that copies differ in everything but the article."""
    nav = "".join(f'<li><a href="/s{i}">Section {i + noise}</a></li>' for i in range(6))
    body = "\n".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8"><title>{title}</title></head><body>'
        f'<header><nav><ul><li><a href="/">Home</a></li>{nav}<li><a href="/login">Log in</a></li></ul></nav>'
        f'<div class="menu">Menu | News | Sport | Weather | Subscribe {noise}</div></header>'
        f"<main><article><h1>{title}</h1>\n{body}\n"
        "<p>Please enable JavaScript in your browser to see the comments for this article.</p>"
        "<p>Share this story</p></article></main>"
        '<aside class="sidebar"><h3>Most read</h3><ul><li><a href="/x">Ten ways to cook potatoes</a></li>'
        '<li><a href="/y">The best gardens of the year</a></li></ul></aside>'
        f"<footer><p>Copyright 2024 The Valley Gazette {noise}. All rights reserved.</p>"
        '<p><a href="/privacy">Privacy policy</a> | <a href="/terms">Terms of use</a></p></footer>'
        "</body></html>"
    )


def write_warc(path: Path, records: list[tuple[str, str]], date: str = "2024-03-01T12:00:00Z") -> None:
    """A gzipped WARC of (url, html) response records, with a warcinfo record, a request record and an image
    response in front (not documents: counted as skipped)."""
    import io

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        w.write_record(w.create_warcinfo_record(path.name, {"software": "scratchlm tests"}))
        req = StatusAndHeaders("GET / HTTP/1.1", [("Host", "example.com")], is_http_request=True)
        w.write_record(w.create_warc_record("http://example.com/", "request", http_headers=req,
                                            warc_headers_dict={"WARC-Date": date}))
        img = StatusAndHeaders("200 OK", [("Content-Type", "image/png")], protocol="HTTP/1.1")
        w.write_record(w.create_warc_record("http://example.com/logo.png", "response", payload=io.BytesIO(b"\x89PNG"),
                                            http_headers=img, warc_headers_dict={"WARC-Date": date}))
        for url, html in records:
            data = html.encode("utf-8") if isinstance(html, str) else html
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(data), http_headers=headers,
                                                warc_headers_dict={"WARC-Date": date}))


def _articles(mirror: Path, n: int, words: int) -> list[list[str]]:
    """`n` articles of at least `words` words from The Verdict, paragraphs that pass C4's line rules as they are."""
    paras = [p.strip() for p in (mirror / "the-verdict.txt").read_text(encoding="utf-8").split("\n\n")]
    paras = [p for p in paras if p.endswith((".", "!", "?", '"')) and len(p.split()) >= 8 and "@" not in p]
    out, cur = [], []
    for p in paras:
        cur.append(p)
        if sum(len(q.split()) for q in cur) >= words:
            out.append(cur)
            cur = []
        if len(out) == n:
            break
    assert len(out) == n
    return out


@pytest.fixture
def web_corpus(tmp_path: Path, mirror: Path) -> WebCorpus:
    arts = _articles(mirror, 6, 350)
    emails = ["jane.doe@valley-gazette.example", "news+tips@mail.example.org"]
    arts[2] = [*arts[2][:-1], f"Readers can write to {emails[0]} or to {emails[1]}; the server at 203.0.113.7 "
               "answers them all." ]
    near = [p.replace(" the ", " a ", 1) if i == 1 else p for i, p in enumerate(arts[1])]  # one word changed
    lorem = ["Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt.", *arts[5][:2]]
    folder = tmp_path / "crawl"
    folder.mkdir()
    a = [
        ("https://www.valley-gazette.example/mill", page("The mill", arts[0])),
        ("https://www.valley-gazette.example/painter", page("The painter", arts[1])),
        ("https://fr.valley-gazette.example/moulin", page("Le moulin", [FRENCH], lang="fr")),
        ("https://news.content-farm.example/story", page("Story", arts[4])),
        ("https://www.valley-gazette.example/letters", page("Letters", arts[2])),
        ("https://www.pornhub.com/view", page("Video", arts[4][:1])),
    ]
    b = [
        ("https://de.valley-gazette.example/muehle", page("Die Mühle", [GERMAN], lang="de")),
        ("https://mirror.example/mill-copy", page("The mill", arts[0], noise=7)),  # exact (after extraction)
        ("https://zh.valley-gazette.example/mofang", page("磨坊", [CHINESE], lang="zh")),
        ("https://www.valley-gazette.example/studio", page("The studio", arts[3])),
        ("https://mirror.example/painter-copy", page("The painter", near, noise=3)),  # near
        ("https://www.valley-gazette.example/placeholder", page("Placeholder", lorem)),
    ]
    write_warc(folder / "CC-MAIN-a.warc.gz", a, date="2024-03-01T12:00:00Z")
    write_warc(folder / "CC-MAIN-b.warc.gz", b, date="2024-03-02T08:30:00Z")
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text("# test list\ncontent-farm.example\n")
    masked = [*arts[2][:-1], "Readers can write to [email] or to [email]; the server at [ip] answers them all."]
    return WebCorpus(
        folder=folder,
        bodies=["\n".join(x) for x in (arts[0], arts[1], masked, arts[3])],
        counts={
            "documents_read": 12, "documents_kept": 4, "records_skipped": 6, "filtered_url": 2,
            "filtered_language": 3, "filtered_quality": 1, "exact_duplicates": 1, "near_duplicates": 1,
            "bad_records": 0, "pii_emails": 2, "pii_ips": 1, "contaminated": 0,
        },
        languages={"en": 7, "fr": 1, "de": 1, "zh": 1},
        blocked={"content-farm.example": 1, "pornhub.com": 1},
        emails=emails,
        blocklist=blocklist,
    )
