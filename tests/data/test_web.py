"""Web data (issue 17): WARC pages through extraction, language, URL, C4-line and PII filters to shards with exact
counts (acceptance 1); WET, parquet and a Hugging Face dataset (a local parquet folder, offline) give the same kept
documents as JSONL (acceptance 2); the global de-duplication of the Ray executor, run here without Ray, decides
exactly as the local executor's sequential one (acceptance 3's argument); the filters against hand-made cases."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np

from scratchlm.cli.main import main
from scratchlm.data import read_manifest, read_split, shard_tokenizer
from scratchlm.data.dedup import MinHasher, NearDupIndex
from scratchlm.data.filters import blocked_domain, domain_of, filter_lines, mask_pii

WEB_FLAGS = ["--languages", "en", "--line-terminal-punct", "--min-line-words", "5", "--drop-notice-lines",
             "--drop-lorem-ipsum", "--mask-pii", "--decontaminate", "--val-fraction", "0", "--workers", "1"]
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


def _documents(out: Path) -> list[str]:
    tok = shard_tokenizer(out)
    text = tok.decode(read_split(out, "train").tolist())
    assert text.endswith("<|endoftext|>")
    return text.split("<|endoftext|>")[:-1]


def test_warc_pages_counts_bodies_and_no_email(web_corpus, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["data", "prepare", "--input", str(web_corpus.folder), "--url-blocklist", str(web_corpus.blocklist),
                 "--metadata", "--out", str(out), *WEB_FLAGS])
    assert code == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    manifest = read_manifest(out)
    rep = manifest["report"]
    for key, expected in web_corpus.counts.items():
        assert rep[key] == expected, key
    assert rep["quality_reasons"]["lorem_ipsum"] == 1
    assert rep["languages"] == web_corpus.languages
    assert rep["blocked_domains"] == web_corpus.blocked
    assert rep["domains"]["valley-gazette.example"] == 5 and rep["distinct_domains"] == 7
    # each kept page loses its title and "Share this story" (no terminal punctuation) and the JavaScript notice
    assert rep["lines_removed"] == {"no_terminal_punct": 2 * 7, "too_few_words": 0, "notice": 7}
    assert (rep["first_date"], rep["last_date"]) == ("2024-03-01T12:00:00Z", "2024-03-02T08:30:00Z")
    assert manifest["executor"] == "local"

    docs = _documents(out)
    assert docs == web_corpus.bodies  # the article bodies only: no navigation, menu, sidebar, footer, notice
    joined = "\n".join(docs)
    for boilerplate in ("Home", "Section", "Menu |", "Most read", "Copyright", "Privacy policy", "JavaScript"):
        assert boilerplate not in joined
    assert not EMAIL.search(joined) and "203.0.113.7" not in joined and joined.count("[email]") == 2
    assert "masked e-mails / IPs" in stdout and "dropped: language" in stdout

    sidecar = [json.loads(line) for line in (out / "train_000000.meta.jsonl").read_text().splitlines()]
    assert manifest["shards"]["train"][0]["metadata"] == "train_000000.meta.jsonl"
    assert [m["url"] for m in sidecar] == [
        "https://www.valley-gazette.example/mill", "https://www.valley-gazette.example/painter",
        "https://www.valley-gazette.example/letters", "https://www.valley-gazette.example/studio"]
    assert [m["start"] for m in sidecar] == list(np.cumsum([0] + [m["tokens"] for m in sidecar[:-1]]))
    assert sidecar[-1]["date"] == "2024-03-02T08:30:00Z"


def _texts(mirror: Path) -> list[str]:
    """Documents for the format comparison: prose, an exact and a near copy, a short one, one with an address."""
    paras = [p.strip() for p in (mirror / "the-verdict.txt").read_text(encoding="utf-8").split("\n\n") if p.strip()]
    docs = ["\n".join(paras[i : i + 4]) for i in range(0, 40, 4)]
    docs.append(docs[2])
    docs.append(docs[4].replace(" the ", " a ", 1))
    docs.append("Too short.")
    docs.append("\n".join(paras[40:44]) + "\nMail me at someone@example.org please.")
    return docs


def _write_formats(folder: Path, docs: list[str]) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from warcio.warcwriter import WARCWriter

    folder.mkdir()
    urls = [f"https://site{i % 3}.example/doc{i}" for i in range(len(docs))]
    paths = {"jsonl": folder / "docs.jsonl", "wet": folder / "docs.wet.gz", "parquet": folder / "pq" / "docs.parquet"}
    paths["jsonl"].write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    with open(paths["wet"], "wb") as f:
        w = WARCWriter(f, gzip=True)
        w.write_record(w.create_warcinfo_record("docs.wet.gz", {"software": "scratchlm tests"}))
        for url, d in zip(urls, docs):
            w.write_record(w.create_warc_record(url, "conversion", payload=io.BytesIO(d.encode()),
                                                warc_content_type="text/plain"))
    paths["parquet"].parent.mkdir()
    table = pa.table({"id": list(range(len(docs))), "text": docs, "url": urls})
    pq.write_table(table, paths["parquet"], row_group_size=4)  # several row groups
    return paths


def test_wet_parquet_and_hf_dataset_equal_jsonl(tmp_path: Path, mirror: Path, monkeypatch, capsys) -> None:
    docs = _texts(mirror)
    paths = _write_formats(tmp_path / "in", docs)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    flags = ["--mask-pii", "--decontaminate", "--val-fraction", "0", "--workers", "1", "--min-chars", "50"]
    runs = {
        "jsonl": ["--input", str(paths["jsonl"])],
        "wet": ["--input", str(paths["wet"])],
        "parquet": ["--input", str(paths["parquet"])],
        "hf": ["--hf-dataset", str(paths["parquet"].parent)],
    }
    results = {}
    for name, args in runs.items():
        out = tmp_path / name
        assert main(["data", "prepare", *args, "--out", str(out), *flags]) == 0, capsys.readouterr().err
        results[name] = (read_manifest(out), (out / "train_000000.bin").read_bytes())
    counts = ("documents_read", "documents_kept", "exact_duplicates", "near_duplicates", "filtered_quality",
              "pii_emails", "tokens_train", "bytes_kept")
    ref_manifest, ref_bytes = results["jsonl"]
    assert [ref_manifest["report"][k] for k in counts] == [14, 11, 1, 1, 1, 1, ref_manifest["report"]["tokens_train"],
                                                           ref_manifest["report"]["bytes_kept"]]
    for name in ("wet", "parquet", "hf"):
        manifest, data = results[name]
        assert data == ref_bytes, name  # the same kept documents, token for token
        assert [manifest["report"][k] for k in counts] == [ref_manifest["report"][k] for k in counts], name
    assert results["wet"][0]["report"]["distinct_domains"] == 3  # the URLs travel with WET and parquet rows
    assert results["parquet"][0]["report"]["domains"] == {"site0.example": 5, "site1.example": 5, "site2.example": 4}
    assert results["hf"][0]["settings"]["inputs"] == [{"hf_dataset": str(paths["parquet"].parent), "split": "train"}]


# ---------------------------------------------------------------------------------------------------- global dedup


def _chained_corpus(seed: int = 0) -> tuple[list[np.ndarray | None], list[int]]:
    """Signatures of documents in chains (each a mutation of the previous), exact copies and singletons, shuffled:
    chains make a near duplicate of a near duplicate, which connected components alone would over-merge."""
    rng = np.random.default_rng(seed)
    docs: list[np.ndarray] = []
    for _ in range(40):
        words = rng.integers(1, 2**63, size=int(rng.integers(60, 200)), dtype=np.uint64)
        docs.append(words)
        for _ in range(int(rng.integers(0, 5))):
            words = words.copy()
            words[rng.choice(words.size, size=int(rng.integers(1, 6)), replace=False)] = rng.integers(1, 2**63)
            docs.append(words)
    order = rng.permutation(len(docs))
    docs = [docs[i] for i in order]
    docs += [docs[i].copy() for i in rng.choice(len(docs), 10, replace=False)]  # exact copies, later
    exact = [int(hash(d.tobytes()) & 0x7FFFFFFF) + 1 for d in docs]
    return docs, exact


def test_global_dedup_decides_exactly_as_the_sequential_rule() -> None:
    from scratchlm.data.ray_exec import _band_reduce, _components, _exact_reduce, _resolve

    hasher = MinHasher(128, 16, 5)
    docs, exact = _chained_corpus()
    sigs = [hasher.signature(w) for w in docs]
    # the local executor's rule, one document after the other
    seen, index, want_exact, want_near = set(), NearDupIndex(128, 0.8), [], []
    for i, (key, sig) in enumerate(zip(exact, sigs)):
        if key in seen:
            want_exact.append(i)
            continue
        seen.add(key)
        bands, sig16 = hasher.band_keys(sig), sig.astype(np.uint16)
        if index.is_duplicate(bands, sig16):
            want_near.append(i)
        else:
            index.add(bands, sig16)
    # the Ray executor's stages as plain functions, over key tables of uneven chunks
    cuts = [0, 7, 8, 30, 55, len(docs)]
    tables = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        tables.append({
            "docs": np.arange(a, b), "exact": np.array(exact[a:b], np.uint64), "band_docs": np.arange(a, b),
            "bands": np.array([hasher.band_keys(s) for s in sigs[a:b]]),
            "sigs": np.array([s.astype(np.uint16) for s in sigs[a:b]]),
        })
    parts = 3
    got_exact = np.sort(np.concatenate([_exact_reduce(p, parts, *tables) for p in range(parts)]))
    edges = [_band_reduce(p, parts, got_exact, *tables) for p in range(parts)]
    components = _components(*edges)
    got_near = np.sort(_resolve(components, 128, 0.8, *tables))
    assert got_exact.tolist() == want_exact and len(want_exact) == 10
    assert got_near.tolist() == want_near and len(want_near) > 20
    # components are larger than what is dropped: a near duplicate of a dropped document may stay
    assert sum(len(c) - 1 for c in components) > len(want_near)


# ---------------------------------------------------------------------------------------------------- filters


def test_filters_against_hand_made_cases() -> None:
    assert domain_of("https://WWW.Example.COM:8080/a?b") == "example.com"
    assert domain_of("news.example.org/x") == "news.example.org" and domain_of("") == ""
    blocked = frozenset({"example.com"})
    assert blocked_domain("a.b.example.com", blocked) == "example.com"
    assert blocked_domain("notexample.com", blocked) is None and blocked_domain("example.com.evil", blocked) is None

    text = "Title\nA full sentence that ends well.\nShort one.\nPlease enable JavaScript to read on, thank you.\n\n" \
           "Another paragraph here, with five words at least!\nNo punctuation at the end here"
    kept, removed = filter_lines(text, True, 5, True)
    assert kept == "A full sentence that ends well.\n\nAnother paragraph here, with five words at least!"
    assert removed == (2, 1, 1)
    assert filter_lines(text, False, 0, False) == (text, (0, 0, 0))

    masked, n_email, n_ip = mask_pii("Write to a.b+c@mail.example.co.uk or x@y.org from 10.0.0.1 (not 1.2.3 or "
                                     "version 1.2.3.4.5, nor 300.1.1.1).")
    assert (n_email, n_ip) == (2, 1)
    assert masked == "Write to [email] or [email] from [ip] (not 1.2.3 or version 1.2.3.4.5, nor 300.1.1.1)."


def test_language_identification_known_answers() -> None:
    from scratchlm.data.filters import LanguageID

    ident = LanguageID()
    cases = {
        "en": "The old mill by the river has stood there for three hundred years, and people still talk about it.",
        "fr": "Le vieux moulin au bord de la rivière existe depuis trois siècles, et les habitants en parlent encore.",
        "de": "Die alte Mühle am Fluss steht seit dreihundert Jahren, und die Leute im Dorf sprechen noch davon.",
        "zh": "河边的老磨坊已经矗立了三百年，村里的人们至今仍在谈论建造它的磨坊主。",
    }
    for lang, text in cases.items():
        got, p = ident.classify(text)
        assert got == lang and 0.65 <= p <= 1.0, (lang, got, p)


def test_formats_are_detected_by_content_when_the_name_does_not_say(web_corpus, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scratchlm.data.inputs import detect_format

    warc = tmp_path / "crawl.data"
    warc.write_bytes((web_corpus.folder / "CC-MAIN-a.warc.gz").read_bytes())  # gzipped WARC
    table = tmp_path / "rows.bin"
    pq.write_table(pa.table({"text": ["a"]}), table)
    text = tmp_path / "notes"
    text.write_text("WARC is a file format; this is a note about it.")
    assert [detect_format(p) for p in (warc, table, text)] == ["warc", "parquet", "text"]
